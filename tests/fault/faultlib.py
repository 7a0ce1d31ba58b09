"""Kill -9 campaigns on real synthetic-oracle runs, and the checks that nothing was lost.

A campaign trains one run folder through a list of kills: each kill is a fresh process (`prefrl train`,
then `prefrl train --resume`) that dies by SIGKILL, either at a named phase (PREFRL_FAULT, see
prefrl/reliability.py) or at a random moment from outside. After every kill the run folder is checked
(SQLite integrity, every committed label still there exactly once, progress.csv without gaps or
duplicates); then one last resume must finish the run, and its final checkpoint must load.

Used by tests/fault/test_faults.py (a short campaign in CI, the long one marked slow) and by
benchmarks/reliability.py (the numbers in results/reliability.md).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

N_STEPS, N_ENVS, TOTAL_STEPS, TOTAL_LABELS = 256, 2, 6144, 40
ROLLOUT = N_STEPS * N_ENVS


def flags(total_steps: int = TOTAL_STEPS) -> list[str]:
    """Rollouts of 512 steps, a checkpoint and a refit at each, 40 oracle labels (10 before PPO starts)."""
    return ["--env", "Pendulum-v1", "--total-timesteps", str(total_steps), "--n-steps", str(N_STEPS),
            "--n-envs", str(N_ENVS), "--total-labels", str(TOTAL_LABELS), "--clip-length", "20",
            "--eval-episodes", "2", "--epochs", "5", "--pretrain-epochs", "10", "--refit-growth", "0",
            "--checkpoint-every", "1", "--no-progress-bar"]


FLAGS = flags()

HOOK_KILLS = ["label_write:3", "label_write:5", "gather:1", "gather:2", "refit:1:30", "refit:2:10",
              "ppo_update:1:80", "ppo_update:2:20", "checkpoint:1", "checkpoint:2", "checkpoint_pointer:1",
              "checkpoint_pointer:2", "progress:1", "progress:2"]
"""PREFRL_FAULT specs (<phase>:<n-th time in that process>[:<delay ms>]) the campaigns draw from; small n, so
the point comes before the process finishes the run."""
LABEL_PHASES = ("label_write", "gather", "refit")
"""Phases that only happen while labels are still being asked (the first 3/4 of a run)."""


@dataclass
class Kill:
    spec: str
    """A PREFRL_FAULT spec, or `random:<seconds>` for a SIGKILL from outside after that long."""
    killed: bool = False
    """The process died by SIGKILL (False: it finished before reaching the point)."""
    seconds: float = 0.0
    labels_before: int = 0
    labels_after: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Campaign:
    run: Path
    kills: list[Kill]
    finished: bool = False
    problems: list[str] = field(default_factory=list)
    final_labels: int = 0
    seconds: float = 0.0
    runs: list[Path] = field(default_factory=list)
    """The run folders used: a new one whenever a process missed its point and finished the run."""
    torn: bool = False
    """A torn progress.csv row was left for the next resume (tear_after)."""

    @property
    def n_killed(self) -> int:
        return sum(k.killed for k in self.kills)

    @property
    def all_problems(self) -> list[str]:
        return self.problems + [f"{k.spec}: {p}" for k in self.kills for p in k.problems]


def _prefrl(args: list[str], fault: Optional[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PREFRL_FAULT", None)
    if fault:
        env["PREFRL_FAULT"] = fault
    with open(log, "a") as fh:
        fh.write(f"\n$ PREFRL_FAULT={fault or ''} prefrl {' '.join(args)}\n")
        fh.flush()
        return subprocess.Popen([sys.executable, "-m", "prefrl", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)


def label_rows(db: Path) -> list[tuple]:
    """Every committed label: (id, pair_id, answer, labeler, created)."""
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id, pair_id, answer, labeler, created FROM labels ORDER BY id").fetchall()
    finally:
        con.close()


def check_folder(run: Path, committed: list[tuple]) -> list[str]:
    """What is wrong with a run folder after a kill (or at the end): [] when nothing."""
    problems = []
    db = run / "labels.sqlite"
    if db.exists():
        con = sqlite3.connect(db)
        try:
            ok = con.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                problems.append(f"integrity_check: {ok}")
            dup = con.execute("SELECT pair_id, labeler, COUNT(*) FROM labels GROUP BY pair_id, labeler "
                              "HAVING COUNT(*) > 1").fetchall()
            if dup:
                problems.append(f"duplicate labels {dup[:3]}")
            fk = con.execute("PRAGMA foreign_key_check").fetchall()
            if fk:
                problems.append(f"foreign keys broken: {fk[:3]}")
        finally:
            con.close()
    now = {r[0]: r for r in label_rows(db)}
    lost = [r for r in committed if now.get(r[0]) != r]
    if lost:
        problems.append(f"{len(lost)} committed labels lost or changed, e.g. {lost[0]}")
    steps = progress_steps(run)
    if steps != list(range(ROLLOUT, ROLLOUT * (len(steps) + 1), ROLLOUT)):
        problems.append(f"progress.csv steps have gaps or duplicates: {steps}")
    return problems


def progress_steps(run: Path) -> list[int]:
    path = run / "progress.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [int(r["env_steps"]) for r in csv.DictReader(fh)]


def run_campaign(run: Path, specs: list[str], log: Path, timeout: float = 300.0,
                 tear_after: Optional[int] = None, total_steps: int = TOTAL_STEPS) -> Campaign:
    """Start the run, kill it once per spec (each time resuming), then resume it to the end and check.

    When a process misses its point and runs the run to its end, that run is checked as finished and the
    campaign goes on with a new run folder (run_2, ...), so every spec gets its chance.
    tear_after=i: after the i-th kill, append half a row to progress.csv, as a kill in the middle of a write
    would leave it; the next process must drop it when it resumes (the next spec must be a phase kill, which
    comes after that)."""
    t0 = time.monotonic()
    campaign = Campaign(run, [Kill(s) for s in specs])
    campaign.runs.append(run)
    for i, kill in enumerate(campaign.kills):
        if (run / "summary.json").exists():  # the last process finished this run: check it, start another
            campaign.problems += check_finished(run, total_steps)
            run = campaign.run.with_name(f"{campaign.run.name}_{len(campaign.runs) + 1}")
            campaign.runs.append(run)
        committed = label_rows(run / "labels.sqlite")
        kill.labels_before = len(committed)
        args = (["train", "--resume", str(run), "--no-progress-bar"] if (run / "config.json").exists() else
                ["train", "--run-dir", str(run), *flags(total_steps)])  # (a kill before the folder existed)
        t = time.monotonic()
        if kill.spec.startswith("random:"):
            proc = _prefrl(args, None, log)
            try:
                proc.wait(float(kill.spec.split(":")[1]))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        else:
            proc = _prefrl(args, kill.spec, log)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kill.problems.append(f"no exit within {timeout:g} s")
            continue
        kill.seconds = time.monotonic() - t
        kill.killed = rc == -signal.SIGKILL
        if not kill.killed and rc != 0:
            kill.problems.append(f"exit code {rc} (see {log})")
        kill.labels_after = len(label_rows(run / "labels.sqlite"))
        if (run / "config.json").exists():
            kill.problems += check_folder(run, committed)
        if i == tear_after and (run / "progress.csv").exists():
            with open(run / "progress.csv", "a") as fh:
                fh.write(f"{ROLLOUT * 99},-12")  # two fields of a row and no newline
            campaign.torn = True
    committed = label_rows(run / "labels.sqlite")
    proc = _prefrl(["train", "--resume", str(run), "--no-progress-bar"], None, log)
    rc = proc.wait(timeout)
    campaign.finished = rc == 0
    if rc != 0:
        campaign.problems.append(f"the last resume exited with {rc} (see {log})")
    campaign.problems += check_folder(run, committed) + check_finished(run, total_steps)
    campaign.final_labels = len(label_rows(run / "labels.sqlite"))
    campaign.seconds = time.monotonic() - t0
    return campaign


def check_finished(run: Path, total_steps: int = TOTAL_STEPS) -> list[str]:
    """The finished run: every step logged once, every label asked and answered, a final checkpoint that loads
    (weights only) and that carries the label schedule's state."""
    problems = []
    steps = progress_steps(run)
    if steps != list(range(ROLLOUT, total_steps + 1, ROLLOUT)):
        problems.append(f"final progress.csv steps {steps}")
    con = sqlite3.connect(run / "labels.sqlite")
    try:
        pairs, pending = con.execute("SELECT COUNT(*), SUM(NOT EXISTS (SELECT 1 FROM labels l "
                                     "WHERE l.pair_id = p.id)) FROM pairs p").fetchone()
        labels = con.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    finally:
        con.close()
    if (pairs, pending, labels) != (TOTAL_LABELS, 0, TOTAL_LABELS):
        problems.append(f"pairs/pending/labels = {pairs}/{pending}/{labels}, expected {TOTAL_LABELS}/0/"
                        f"{TOTAL_LABELS}")
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((latest / "state.json").read_text())
    if not state.get("finished") or state.get("env_steps") != total_steps:
        problems.append(f"final state.json {state}")
    if (state.get("schedule") or {}).get("asked") != TOTAL_LABELS:
        problems.append(f"schedule state not saved with the checkpoint: {state.get('schedule')}")
    if sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")):
        problems.append("temporary checkpoint folders left behind")
    problems += load_checkpoint(latest)
    if not (run / "summary.json").exists():
        problems.append("no summary.json")
    return problems


def load_checkpoint(path: Path) -> list[str]:
    """Load a checkpoint as --resume does (weights only); [] when it loads."""
    import torch
    from stable_baselines3 import PPO

    try:
        for name in ("ensemble.pt", "reward_trainer.pt"):
            torch.load(path / name, weights_only=True)
        model = PPO("MlpPolicy", "Pendulum-v1", n_steps=N_STEPS, use_sde=True, device="cpu")
        model.set_parameters(str(path / "ppo.zip"), exact_match=True, device="cpu")
    except Exception as exc:  # noqa: BLE001 - report any failure as a problem
        return [f"checkpoint {path} does not load: {type(exc).__name__}: {exc}"]
    return []


def campaign_specs(n_hook: int, n_random: int, seed: int) -> list[str]:
    """Phase kills drawn at random (those of the labeling phases first, while labels are still asked), with
    random-time kills (2 to 9 s after the process starts) put in at random places."""
    rng = random.Random(seed)
    specs = sorted(rng.sample(HOOK_KILLS, n_hook), key=lambda s: s.split(":")[0] not in LABEL_PHASES)
    for _ in range(n_random):
        specs.insert(rng.randrange(len(specs) + 1), f"random:{rng.uniform(2.0, 9.0):.1f}")
    return specs
