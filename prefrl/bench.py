"""`prefrl bench pendulum`: PPO-true vs preferences (200 and 50 labels) vs random, on Pendulum-v1.

Every run uses the same PPO hyperparameters and PPO step budget and is scored on the
TRUE reward over 10 deterministic episodes (reset seeds 10000-10009). Runs go to a
process pool (one torch thread each, a fresh process per run so peak RSS is per run),
so all methods share the same machine load in one invocation.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from prefrl.config import EnvConfig, TrainConfig

METHODS = ("ppo_true", "pref_200", "pref_50", "random")
COLUMNS = ["method", "seed", "labels", "steps", "true_return", "wall_seconds", "peak_rss_mb"]


def method_config(method: str, seed: int, steps: int, runs_dir: Path, base: TrainConfig) -> TrainConfig:
    """`base` carries the train flags given after `--`, the same for every method."""
    base = replace(base, env=replace(base.env, env="Pendulum-v1"), seed=seed, total_timesteps=steps,
                   progress_bar=False, results_dir=runs_dir, exp_name=method)
    if method == "ppo_true":
        return replace(base, reward_source="true")
    if method.startswith("pref_"):
        return replace(base, feedback=replace(base.feedback, total_labels=int(method.split("_")[1])))
    raise ValueError(f"unknown method {method}")


def run_one(method: str, seed: int, steps: int, runs_dir: str, train_flags: list[str]) -> dict:
    import torch

    torch.set_num_threads(1)
    if method == "random":
        import resource

        from prefrl.evaluate import evaluate, random_policy

        cfg = EnvConfig(env="Pendulum-v1")
        returns = evaluate(random_policy(cfg, seed=10_000 + seed), cfg, episodes=10)
        return dict(method=method, seed=seed, labels=0, steps=0, true_return=float(returns.mean()), wall_seconds=0.0,
                    peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    from prefrl.cli import parse_train_config
    from prefrl.loop import train

    r = train(method_config(method, seed, steps, Path(runs_dir), parse_train_config(train_flags)))
    return dict(method=method, seed=seed, labels=r.labels, steps=r.steps, true_return=r.true_return,
                wall_seconds=round(r.wall_seconds, 1), peak_rss_mb=round(r.peak_rss_mb, 1))


def summarise(rows: list[dict], meta: dict) -> str:
    by = {m: [r for r in rows if r["method"] == m] for m in METHODS}
    mean = {m: statistics.fmean(r["true_return"] for r in rs) for m, rs in by.items() if rs}
    lo, hi = mean.get("random"), mean.get("ppo_true")
    norm = (lambda x: (x - lo) / (hi - lo)) if lo is not None and hi is not None and hi != lo else None
    wall_true = statistics.fmean(r["wall_seconds"] for r in by["ppo_true"]) if by["ppo_true"] else None
    lines = [
        "# Pendulum-v1 benchmark",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; load average at start {meta['load_start']}, "
        f"at end {meta['load_end']}; workers: {meta['workers']}; total wall {meta['total_wall']:.0f} s.  ",
        f"Every run: {meta['steps']} PPO steps, the same PPO hyperparameters (prefrl defaults), scored on the TRUE "
        "reward over 10 deterministic episodes with reset seeds 10000-10009. Normalised: random = 0, PPO-true = 1.",
        "",
        "| method | seeds | true return mean ± sd | worst seed | normalised mean | normalised worst | wall s (mean) "
        "| wall / PPO-true | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, rs in by.items():
        if not rs:
            continue
        xs = [r["true_return"] for r in rs]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        wall = statistics.fmean(r["wall_seconds"] for r in rs)
        ratio = f"{wall / wall_true:.2f}x" if wall_true and m != "random" else "-"
        nm = f"{norm(mean[m]):.3f}" if norm else "-"
        nw = f"{norm(min(xs)):.3f}" if norm else "-"
        rss = max(r["peak_rss_mb"] for r in rs)
        lines.append(f"| {m} | {len(rs)} | {mean[m]:.1f} ± {sd:.1f} | {min(xs):.1f} | {nm} | {nw} | {wall:.1f} | "
                     f"{ratio} | {rss:.0f} |")
    lines += ["", "Per-run rows: `pendulum.csv` beside this file. Run folders (labels, checkpoints, curves): "
              f"`{meta['runs_dir']}` (not committed)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prefrl bench pendulum", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["pendulum"], help="benchmark to run")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per method (default 5)")
    ap.add_argument("--steps", type=int, default=122_880, help="PPO steps per run (default 122,880)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel runs (one core each)")
    ap.add_argument("--out", type=Path, default=Path("results/bench"), help="where pendulum.csv/.md go")
    ap.epilog = "Flags after `--` are prefrl train flags applied to every run (all methods alike)."
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.train_flags = argv[cut + 1:]
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {','.join(METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    runs_dir = args.out / "runs" / f"pendulum__{int(time.time())}"
    runs_dir.mkdir(parents=True)
    meta = dict(command="prefrl bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                machine=f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                        f"Python {platform.python_version()}",
                load_start=" / ".join(f"{x:.2f}" for x in os.getloadavg()), workers=args.workers,
                steps=args.steps, runs_dir=str(runs_dir))
    t0 = time.monotonic()
    jobs = [(m, s) for s in range(args.seeds) for m in methods]
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=args.workers, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_one, m, s, args.steps, str(runs_dir), args.train_flags): (m, s) for m, s in jobs}
        for fut in as_completed(futures):
            row = fut.result()
            rows.append(row)
            print(f"[{len(rows)}/{len(jobs)}] {row['method']} seed {row['seed']}: true return "
                  f"{row['true_return']:.1f}, {row['wall_seconds']:.0f} s", flush=True)
    rows.sort(key=lambda r: (METHODS.index(r["method"]), r["seed"]))
    meta["total_wall"] = time.monotonic() - t0
    meta["load_end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    with open(args.out / "pendulum.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (args.out / "pendulum.md").write_text(summarise(rows, meta))
    print((args.out / "pendulum.md").read_text())
    return 0
