"""Fault injection for the crash-safety tests: `PREFRL_FAULT=<phase>:<n>[:<delay_ms>]`.

At the n-th time this process reaches `fault_point(phase)` it kills itself with SIGKILL, at once or
`delay_ms` later from a timer thread (so the kill lands inside the work that follows the point, e.g.
a PPO update or a reward refit). Unset, `fault_point` is one dict lookup. Standard library only: the
labeling app imports it through prefrl.labels.store. Phases: see PHASES.
"""

from __future__ import annotations

import os
import signal
import threading

PHASES = {
    "label_write": "inside a label's write transaction, after the INSERT, before COMMIT (store.add_labels: a "
                   "synthetic teacher's batch of answers is one transaction)",
    "gather": "after a batch of pairs is stored, before the teacher's labels (loop.Trainer._gather)",
    "refit": "at the start of a reward-model refit (with a delay: during the fit)",
    "ppo_update": "at a rollout end, before PPO's update (with a delay: during the update)",
    "checkpoint": "half-way through a checkpoint: PPO saved into the temp folder, nothing renamed yet",
    "checkpoint_pointer": "after the checkpoint folder is renamed into place, before `latest` points to it",
    "progress": "while progress.csv rows are appended (half the rows written)",
}


def _parse(spec: str) -> tuple[str, int, float] | None:
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in PHASES:
        raise ValueError(f"PREFRL_FAULT={spec!r}: use <phase>:<n>[:<delay_ms>] with a phase in {sorted(PHASES)}")
    return parts[0], int(parts[1]), float(parts[2]) / 1000 if len(parts) == 3 else 0.0


_SPEC = _parse(os.environ.get("PREFRL_FAULT", ""))
_seen: dict[str, int] = {}


def fault_point(phase: str) -> None:
    """Kill this process here (or shortly after) when PREFRL_FAULT names this phase and count."""
    if _SPEC is None or _SPEC[0] != phase:
        return
    _seen[phase] = _seen.get(phase, 0) + 1
    if _seen[phase] != _SPEC[1]:
        return
    if _SPEC[2] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
    timer = threading.Timer(_SPEC[2], os.kill, (os.getpid(), signal.SIGKILL))
    timer.daemon = True
    timer.start()
