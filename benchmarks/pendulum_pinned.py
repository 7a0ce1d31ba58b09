"""Issue 2's wall-time ratio (a preference run / PPO-true) with each pair of runs pinned, one run per core, and
every pair run twice with the cores swapped.

    .venv/bin/python benchmarks/pendulum_pinned.py [--method pref_200] [--seeds 5] [--first-seed 0]
        [--steps 122880] [--out DIR] [-- TRAIN FLAGS]

Why: `prefrl bench pendulum --methods ppo_true,pref_200 --workers 2` starts each seed's two runs together, but on
the shared 2-core hosts one core can run 10-40% slower than the other for seconds at a time (three-second spin
loops pinned to each core, eighteenth session) and the scheduler moves the runs between cores, so the per-seed
ratios spread over 1.02-1.22 for identical work. Here each run of a pair keeps its own core and the pair is
repeated with the cores swapped, so a steady difference between the cores cancels in the geometric mean of the two
ratios, the seed's figure. Runs are the benchmark's own (`prefrl.bench.run_one`: Pendulum-v1, the defaults plus
TRAIN FLAGS, scored on the true reward); each one starts in a fresh process. Without --out nothing is written.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

# `python benchmarks/pendulum_pinned.py` puts this folder first on sys.path (the spawned runs inherit it), where
# benchmarks/mujoco.py would shadow the real `mujoco` package: drop it.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

COLUMNS = ["seed", "ppo_true_core", "ppo_true_wall", "pref_wall", "ratio", "ppo_true_return", "pref_return"]


def _pinned(core: int, method: str, seed: int, steps: int, runs_dir: str, flags: list[str], out: mp.Queue) -> None:
    os.sched_setaffinity(0, {core})
    from prefrl.bench import run_one

    out.put((method, run_one(method, seed, steps, runs_dir, flags)))


def run_pair(method: str, seed: int, steps: int, runs_dir: str, flags: list[str], true_core: int) -> dict:
    """PPO-true on `true_core`, the preference run on the other core, started together."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_pinned, args=(core, m, seed, steps, runs_dir, flags, q))
             for m, core in (("ppo_true", true_core), (method, 1 - true_core))]
    for p in procs:
        p.start()
    for p in procs:  # the rows are small: the children exit without waiting for the queue to drain
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"pendulum_pinned: a run of seed {seed} failed (exit codes {[p.exitcode for p in procs]})")
    got = dict(q.get(timeout=30) for _ in procs)
    t, r = got["ppo_true"], got[method]
    return dict(seed=seed, ppo_true_core=true_core, ppo_true_wall=t["wall_seconds"], pref_wall=r["wall_seconds"],
                ratio=round(r["wall_seconds"] / t["wall_seconds"], 4), ppo_true_return=round(t["true_return"], 2),
                pref_return=round(r["true_return"], 2))


def summary(rows: list[dict], method: str, command: str, started: str, load_start: str, load_end: str) -> str:
    seeds = sorted({r["seed"] for r in rows})
    per_seed = {s: math.exp(sum(math.log(r["ratio"]) for r in rows if r["seed"] == s)
                            / sum(r["seed"] == s for r in rows)) for s in seeds}
    mean = sum(per_seed.values()) / len(per_seed)
    lines = [f"# Pendulum-v1: {method} / PPO-true wall time, runs pinned one per core, cores swapped", "",
             f"Command: `{command}`  ",
             f"Started: {started}; load average at start {load_start}, "
             f"at end {load_end}. Wall seconds as `prefrl bench pendulum` reports them (from the trainer's start "
             "to the end of its final evaluation).", "",
             "| seed | PPO-true on core | PPO-true wall s | preference wall s | ratio | returns (PPO-true, pref) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['ppo_true_core']} | {r['ppo_true_wall']:.1f} | {r['pref_wall']:.1f} | "
              f"{r['ratio']:.3f} | {r['ppo_true_return']:.1f}, {r['pref_return']:.1f} |" for r in rows]
    lines += ["", "Per seed, the geometric mean over both core assignments: "
              + ", ".join(f"seed {s} {v:.3f}x" for s, v in per_seed.items())
              + f". Mean over seeds: **{mean:.3f}x** (issue 2's target: <= 1.10x)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="pref_200", help="the preference run: pref_<labels> (default pref_200)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=122_880, help="PPO steps a run (issue 2: 122,880)")
    ap.add_argument("--out", type=Path, default=None, help="folder for pendulum_pinned.csv/.md (default: none)")
    args = ap.parse_args(own)
    from prefrl.bench import is_pref_method, load_average

    if not is_pref_method(args.method):
        ap.error(f"--method {args.method!r}: use pref_<labels>, e.g. pref_200")
    if args.seeds < 1 or args.steps < 1:
        ap.error("--seeds and --steps must be >= 1")
    if not {0, 1} <= os.sched_getaffinity(0):
        raise SystemExit("pendulum_pinned: needs cores 0 and 1 (one run on each); this process may use "
                         f"{sorted(os.sched_getaffinity(0))}")
    if args.out is not None and (args.out / "pendulum_pinned.csv").exists():
        raise SystemExit(f"pendulum_pinned: {args.out}/pendulum_pinned.csv exists; pass another --out")
    command = "benchmarks/pendulum_pinned.py " + " ".join(argv)
    load_start = load_average()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    with tempfile.TemporaryDirectory(prefix="pinned_") as tmp:
        runs = str(args.out / "runs") if args.out is not None else tmp  # run folders are kept only with --out
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for true_core in (0, 1):
                rows.append(run_pair(args.method, seed, args.steps, runs, flags, true_core))
                r = rows[-1]
                print(f"seed {seed}, PPO-true on core {true_core}: {r['ppo_true_wall']:.1f} s vs "
                      f"{r['pref_wall']:.1f} s = {r['ratio']:.3f}x", file=sys.stderr, flush=True)
    md = summary(rows, args.method, command, started, load_start, load_average())
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "pendulum_pinned.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        (args.out / "pendulum_pinned.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
