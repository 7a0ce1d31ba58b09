"""What one env step costs under each run's final policy: is a slow run slow because of prefrl or because of
what its agent does?

    .venv/bin/python benchmarks/env_step_cost.py RUN_DIR [RUN_DIR ...] [--episodes 2] [--rounds 3]

RUN_DIRs are finished run folders of one env (e.g. a `prefrl bench mujoco` invocation's `runs/*/Hopper-v5__*`);
nothing is trained. Each run's final deterministic policy drives its own env (built as in training) for
--episodes episodes (reset seeds 10000...); only `env.step` is timed, not the policy, so the figure is the
simulator's and the env wrappers' cost of the states that policy visits. The runs take turns for --rounds
rounds, so a change in the machine's load falls on all of them alike, and each is reported as a ratio to the
first RUN_DIR. MuJoCo runs also report contacts and constraint-solver iterations per step, the usual reasons a
MuJoCo step gets dearer (a robot lying or dragging on the floor keeps its contacts).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
# `python benchmarks/env_step_cost.py` puts this folder first on sys.path, where benchmarks/mujoco.py would shadow
# the real `mujoco` package: drop it.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]


def one_round(policy, cfg, episodes: int) -> np.ndarray:
    """Sums over the episodes: [seconds in env.step, steps, contacts, solver iterations, true return]."""
    from prefrl.envs import make_env
    from prefrl.evaluate import EVAL_SEED

    env = make_env(cfg.env)
    data = getattr(env.unwrapped, "data", None)  # MuJoCo's mjData, None elsewhere
    spent, steps, contacts, iters, ret = 0.0, 0, 0, 0, 0.0
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=EVAL_SEED + ep)
            done = False
            while not done:
                action = policy(obs)
                t = time.perf_counter()
                obs, rew, terminated, truncated, _ = env.step(action)
                spent += time.perf_counter() - t
                steps += 1
                ret += float(rew)
                if data is not None:
                    contacts += int(data.ncon)
                    iters += int(np.sum(data.solver_niter))
                done = terminated or truncated
    finally:
        env.close()
    return np.array([spent, steps, contacts, iters, ret])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders of one env")
    ap.add_argument("--episodes", type=int, default=2, help="deterministic episodes per run and round (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="turns each run takes (default 3)")
    args = ap.parse_args(argv)
    import torch

    from prefrl.evaluate import checkpoint_policy

    torch.set_num_threads(1)
    loaded = [(run, *checkpoint_policy(run)) for run in args.runs]
    envs = {cfg.env.env for _, _, cfg in loaded}
    if len(envs) > 1:
        raise SystemExit(f"env_step_cost: pass runs of one env (got {', '.join(sorted(envs))})")
    totals = {run: np.zeros(5) for run, _, _ in loaded}
    for _ in range(args.rounds):
        for run, policy, cfg in loaded:
            totals[run] += one_round(policy, cfg, args.episodes)
    base = None
    print("| run | us per env step | / first run | contacts per step | solver iterations per step | true return |")
    print("|---|---|---|---|---|---|")
    for run, _, _ in loaded:
        spent, steps, contacts, iters, ret = totals[run]
        us = spent / steps * 1e6
        base = base or us
        print(f"| {run.name} | {us:.1f} | {us / base:.2f}x | {contacts / steps:.2f} | {iters / steps:.1f} | "
              f"{ret / (args.rounds * args.episodes):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
