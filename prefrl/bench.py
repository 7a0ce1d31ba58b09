"""`prefrl bench pendulum | mujoco | pong`: PPO-true vs preferences from a synthetic oracle.

pendulum: PPO-true vs preferences (200 and 50 labels) vs random, on Pendulum-v1.
mujoco:   HalfCheetah-v5 and Hopper-v5 with the paper's MuJoCo settings (prefrl.presets): PPO-true
          vs 700 and 350 labels (paper Fig. 2: 700 labels nearly match RL).
pong:     ALE/Pong-v5 with the paper's Atari settings: PPO-true vs preferences, on a CPU budget
          by default, the paper's 10M frames with --budget paper (a GPU machine: add -- --device cuda).

Every run of a benchmark uses the same PPO hyperparameters and PPO step budget and is
scored on the TRUE reward over deterministic episodes (reset seeds 10000...). Runs go to
a process pool (one torch thread each, a fresh process per run so peak RSS is per run),
so all methods share the same machine load in one invocation; env steps per second are
reported per method, so the cost of learning the reward shows as a ratio to PPO-true.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from prefrl.config import EnvConfig, TrainConfig

METHODS = ("ppo_true", "pref_200", "pref_50", "random")
COLUMNS = ["method", "seed", "labels", "steps", "true_return", "wall_seconds", "peak_rss_mb"]


def is_pref_method(method: str) -> bool:
    """`pref_<labels>` with a positive label count: the preference methods every benchmark takes."""
    return method.startswith("pref_") and method[5:].isdigit() and int(method[5:]) > 0


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages as the benchmark reports print them (the hosts are shared)."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


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


TARGET_MEAN, TARGET_WORST, TARGET_WALL = 0.98, 0.95, 1.10
"""Issue 2's bars for each preference budget: normalised mean, every seed, wall time as a multiple of PPO-true's."""


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
        "| method | seeds | true return mean ± sd | worst seed | normalised mean | normalised worst | "
        f"seeds under {TARGET_WORST} | wall s (mean) | wall / PPO-true | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for m, rs in by.items():
        if not rs:
            continue
        xs = [r["true_return"] for r in rs]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        wall = statistics.fmean(r["wall_seconds"] for r in rs)
        ratio = f"{wall / wall_true:.2f}x" if wall_true and m != "random" else "-"
        nm = f"{norm(mean[m]):.3f}" if norm else "-"
        nw = f"{norm(min(xs)):.3f}" if norm else "-"
        nu = "-"
        if norm and m.startswith("pref_"):
            under = sum(norm(x) < TARGET_WORST for x in xs)
            nu = f"{under} of {len(xs)}"
            if wall_true:
                met = [norm(mean[m]) >= TARGET_MEAN, under == 0, wall / wall_true <= TARGET_WALL]
                verdicts.append(f"{m}: " + ", ".join(f"{what} {'met' if ok else 'missed'}"
                                                     for what, ok in zip(("mean", "worst seed", "wall"), met)))
        rss = max(r["peak_rss_mb"] for r in rs)
        lines.append(f"| {m} | {len(rs)} | {mean[m]:.1f} ± {sd:.1f} | {min(xs):.1f} | {nm} | {nw} | {nu} | "
                     f"{wall:.1f} | {ratio} | {rss:.0f} |")
    if verdicts:
        lines += ["", f"Issue 2's targets (normalised mean >= {TARGET_MEAN}, every seed >= {TARGET_WORST}, wall <= "
                      f"{TARGET_WALL:.2f}x PPO-true's): " + "; ".join(verdicts) + "."]
    lines += ["", "Per-run rows: `pendulum.csv` beside this file. Run folders (labels, checkpoints, curves): "
              f"`{meta['runs_dir']}` (not committed)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TASKS:
        return _task_main(TASKS[argv[0]], argv)
    if argv and argv[0] == "throughput":
        return _throughput_main(argv)
    return _pendulum_main(argv)


def _pendulum_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefrl bench pendulum", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["pendulum", *TASKS], help="benchmark to run (mujoco and pong: prefrl bench "
                                                              "mujoco --help)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per method (default 5)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (default 0): more seeds "
                                                              "in a later invocation without repeating runs")
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
                load_start=load_average(), workers=args.workers,
                steps=args.steps, runs_dir=str(runs_dir))
    t0 = time.monotonic()
    jobs = [(m, s) for s in range(args.first_seed, args.first_seed + args.seeds) for m in methods]
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
    meta["load_end"] = load_average()
    with open(args.out / "pendulum.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (args.out / "pendulum.md").write_text(summarise(rows, meta))
    print((args.out / "pendulum.md").read_text())
    return 0


# --- the paper's tasks: MuJoCo from states, Pong from pixels ---------------------------------------------------

TASK_COLUMNS = ["env", "method", "seed", "labels", "steps", "true_return", "wall_seconds", "steps_per_second",
                "peak_rss_mb", "run_dir"]


@dataclass(frozen=True)
class Task:
    """One benchmark: envs x methods x seeds, each run a `prefrl train` with the env family's preset."""

    name: str
    envs: tuple[str, ...]
    methods: dict[str, tuple[str, ...]]  # budget -> methods
    steps: dict[str, int]  # budget -> PPO steps per run
    seeds: int
    flags: dict[str, tuple[str, ...]]  # budget -> train flags before the user's (which override them)
    budgets: dict[str, str]  # budget -> what it is, for --help and the report
    eval_episodes: int = 10
    target: Optional[float] = None  # the bar for a preference method's mean / PPO-true's mean
    target_seeds: int = 3  # how many seeds the bar is judged on


TASKS: dict[str, Task] = {
    "mujoco": Task(
        name="mujoco", envs=("HalfCheetah-v5", "Hopper-v5"),
        methods={"cpu": ("ppo_true", "pref_700", "pref_350"), "paper": ("ppo_true", "pref_700", "pref_350")},
        steps={"cpu": 1_000_000, "paper": 1_000_000}, seeds=3, flags={"cpu": (), "paper": ()},
        budgets={"cpu": "1M PPO steps per run with the MuJoCo preset (the paper's settings); ~20-30 min a run on "
                        "one core, 18 runs",
                 "paper": "the same: 1M steps of the preset already is the paper-style comparison"},
        target=0.90),
    "pong": Task(
        name="pong", envs=("ALE/Pong-v5",),
        methods={"cpu": ("ppo_true", "pref_1000"), "paper": ("ppo_true", "pref_5500")},
        steps={"cpu": 500_000, "paper": 2_500_000}, seeds=1,
        flags={"cpu": ("--pretrain-epochs", "20", "--epochs", "3"), "paper": ()},
        budgets={"cpu": "500k agent steps (2M frames) with the Atari preset, 1,000 labels (500 initial), 20 "
                        "pretraining epochs and 3 per refit, so that both runs finish side by side on 2 cores in "
                        "one 3-hour session (~80 min PPO-true, ~2 h prefrl: two CNN processes each run at about "
                        "half the speed of one alone): the paper's CNN costs ~0.1 s per label and epoch on one "
                        "CPU thread, so its 200 epochs would cost hours",
                 "paper": "the paper's 10M frames (2.5M agent steps), 5,500 labels, 200 pretraining epochs "
                          "(A.2): a GPU machine (add -- --device cuda)"},
        eval_episodes=5),
}


def task_config(task: Task, env_id: str, method: str, seed: int, steps: int, runs_dir: Path,
                flags: list[str]) -> TrainConfig:
    """The env family's preset, the budget's flags and the user's flags (in that order), then the method."""
    from prefrl import presets
    from prefrl.cli import parse_train_config

    argv = ["--env", env_id, "--eval-episodes", str(task.eval_episodes), *flags]
    cfg = parse_train_config(argv)
    cfg = replace(cfg, seed=seed, total_timesteps=steps, progress_bar=False, results_dir=runs_dir, exp_name=method)
    if method == "ppo_true":
        return replace(cfg, reward_source="true")
    if method.startswith("pref_"):
        cfg = replace(cfg, feedback=replace(cfg.feedback, total_labels=int(method.split("_")[1])))
        return presets.finish(cfg, argv)  # Atari: 500 initial labels of the new total
    raise ValueError(f"unknown method {method}")


def run_task_one(task_name: str, env_id: str, method: str, seed: int, steps: int, runs_dir: str,
                 flags: list[str]) -> dict:
    import torch

    torch.set_num_threads(1)
    from prefrl.loop import train

    r = train(task_config(TASKS[task_name], env_id, method, seed, steps, Path(runs_dir), flags))
    return dict(env=env_id, method=method, seed=seed, labels=r.labels, steps=r.steps, true_return=r.true_return,
                wall_seconds=round(r.wall_seconds, 1), steps_per_second=round(r.steps / max(r.wall_seconds, 1e-9), 1),
                peak_rss_mb=round(r.peak_rss_mb, 1), run_dir=str(r.run_dir))


def summarise_task(task: Task, rows: list[dict], meta: dict) -> str:
    if "combined" in meta:  # rows of several invocations: their own .md files hold each one's date and load
        lines = [f"# {task.name} benchmark", "",
                 f"Command: `{meta['command']}`  ",
                 f"Combined from the rows of {len(meta['combined'])} earlier results ({', '.join(meta['combined'])}); "
                 f"each invocation's date, load and budget are in its own .md. Every run: {meta['steps']:,} PPO steps, "
                 "the env family's preset, scored on the TRUE reward over deterministic episodes (reset seeds "
                 "10000...). Steps/s compares fairly only between runs of one invocation.", ""]
        return _task_tables(task, rows, lines, meta)
    lines = [
        f"# {task.name} benchmark",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; load average at start {meta['load_start']}, at end "
        f"{meta['load_end']}; workers: {meta['workers']}; total wall {meta['total_wall']:.0f} s.  ",
        f"Budget `{meta['budget']}`: {task.budgets[meta['budget']]}. Every run: {meta['steps']:,} PPO steps, the "
        f"env family's preset (prefrl.presets, the paper's settings) and the same PPO hyperparameters for every "
        f"method; scored on the TRUE reward over {meta['eval_episodes']} deterministic episodes (reset seeds 10000...). "
        "Steps/s counts PPO steps over the whole run's wall time (initial labels, reward fitting, checkpoints "
        "and the final evaluation included).",
        "",
    ]
    return _task_tables(task, rows, lines, meta)


def _task_tables(task: Task, rows: list[dict], lines: list[str], meta: dict) -> str:
    for env_id in dict.fromkeys(r["env"] for r in rows):
        env_rows = [r for r in rows if r["env"] == env_id]
        by = {m: [r for r in env_rows if r["method"] == m] for m in dict.fromkeys(r["method"] for r in env_rows)}
        true = by.get("ppo_true", [])
        ref = statistics.fmean(r["true_return"] for r in true) if true else None
        sps_ref = statistics.fmean(r["steps_per_second"] for r in true) if true else None
        lines += [f"## {env_id}", "",
                  "| method | seeds | labels | true return mean ± sd | worst seed | / PPO-true | steps/s "
                  "| PPO-true steps/s ÷ this | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m, rs in by.items():
            xs = [r["true_return"] for r in rs]
            mean = statistics.fmean(xs)
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            sps = statistics.fmean(r["steps_per_second"] for r in rs)
            rel = f"{mean / ref:.2f}" if ref is not None and ref > 0 else "-"  # a ratio to a negative score says nothing
            slow = f"{sps_ref / sps:.2f}x" if sps_ref and sps else "-"
            lines.append(f"| {m} | {len(rs)} | {max(r['labels'] for r in rs)} | {mean:.1f} ± {sd:.1f} | {min(xs):.1f} "
                         f"| {rel} | {sps:.0f} | {slow} | {max(r['peak_rss_mb'] for r in rs):.0f} |")
        lines.append("")
        if task.target is not None:
            notes = [paired_ratio_note(m, true, rs, task.target, task.target_seeds)
                     for m, rs in by.items() if m != "ppo_true"]
            lines += [n + "  " for n in notes if n] + ([""] if any(notes) else [])
    folders = f"Run folders: `{meta['runs_dir']}`" if "runs_dir" in meta else "Run folders: the `run_dir` column"
    curves = (f"curves (true episode return vs PPO steps, mean over the seeds whose run folder was on disk): "
              f"`{task.name}.png`" if meta.get("png", True) else "no curves (no run folder was on disk)")
    lines += [f"Per-run rows: `{task.name}.csv`; {curves}. {folders} (not committed)."]
    return "\n".join(lines) + "\n"


def paired_ratio_note(method: str, true_rows: list[dict], rows: list[dict], target: float, k: int,
                      resamples: int = 20_000) -> Optional[str]:
    """How far a mean ratio over a few seeds can be trusted: a bootstrap over the seeds both methods ran (each
    resample keeps a seed's two runs together, since a seed fixes the env and network draws both share), and the
    share of all k-seed subsets whose mean ratio reaches `target`, i.e. how often a k-seed bar passes by the draw
    of seeds alone. None when fewer than k seeds pair up or PPO-true's mean is not positive."""
    import itertools

    import numpy as np

    ref = {r["seed"]: r["true_return"] for r in true_rows}
    pairs = np.array([(r["true_return"], ref[r["seed"]]) for r in rows if r["seed"] in ref], dtype=np.float64)
    n = len(pairs)
    if n < max(k, 2) or pairs[:, 1].mean() <= 0:
        return None
    idx = np.random.default_rng(0).integers(0, n, (resamples, n))
    lo, hi = np.quantile(pairs[idx, 0].mean(1) / pairs[idx, 1].mean(1), [0.05, 0.95])
    subsets = np.array(list(itertools.combinations(range(n), k)))
    sub = pairs[subsets].sum(1)  # (S, 2): summed returns of each subset's seeds
    met = int((sub[:, 0] >= target * sub[:, 1]).sum())
    return (f"{method} / ppo_true over {n} paired seeds: {pairs[:, 0].mean() / pairs[:, 1].mean():.2f}, bootstrap "
            f"90% interval {lo:.2f}-{hi:.2f} ({resamples:,} resamples of the seeds); {met} of {len(subsets)} "
            f"{k}-seed subsets reach the {target:.2f} bar.")


def plot_task(task: Task, rows: list[dict], out_png: Path) -> Optional[Path]:
    """True episode return vs PPO steps per method (mean over seeds), one panel per env."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from prefrl.plots import read_progress

    envs = list(dict.fromkeys(r["env"] for r in rows))
    if not envs:
        return None
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), dpi=100, squeeze=False)
    drawn = 0
    for ax, env_id in zip(axes[0], envs):
        for i, m in enumerate(dict.fromkeys(r["method"] for r in rows if r["env"] == env_id)):
            curves = []
            for r in rows:
                path = Path(r["run_dir"]) / "progress.csv"
                if r["env"] == env_id and r["method"] == m and path.exists():
                    cols = read_progress(path)
                    curves.append((np.asarray(cols["env_steps"]), np.asarray(cols["true_episode_return"])))
            if not curves:
                continue
            n = min(len(c[0]) for c in curves)
            ys = np.stack([c[1][:n] for c in curves])
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # steps where no episode ended yet: NaN
                mean = np.nanmean(np.where(np.isfinite(ys), ys, np.nan), axis=0)
            seen = np.isfinite(mean)  # rows where no episode ended (long MuJoCo episodes): skip, do not break the line
            ax.plot(curves[0][0][:n][seen], mean[seen], color=f"C{i}", marker="o" if seen.sum() < 20 else None,
                    label=f"{m} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
            drawn += 1
        ax.set_title(env_id, fontsize=9)
        ax.set_xlabel("PPO env steps")
        ax.set_ylabel("true episode return (mean over seeds)")
        if ax.get_lines():
            ax.legend(fontsize=8)
    if not drawn:  # no run folder left on disk (combined rows of earlier sessions): no empty figure
        plt.close(fig)
        return None
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _task_main(task: Task, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"prefrl bench {task.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=[task.name], help="benchmark to run")
    ap.add_argument("--budget", choices=list(task.budgets), default="cpu",
                    help="; ".join(f"{k}: {v}" for k, v in task.budgets.items()))
    ap.add_argument("--envs", default=",".join(task.envs), help=f"comma-separated env ids (default {','.join(task.envs)})")
    ap.add_argument("--seeds", type=int, default=task.seeds, help=f"seeds per method (default {task.seeds})")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds run from here (adding seeds to an earlier invocation without repeating its runs)")
    ap.add_argument("--steps", type=int, default=None, help="PPO steps per run (default: the budget's)")
    ap.add_argument("--methods", default=None, help="comma-separated: ppo_true and pref_<labels> (default: the budget's)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel runs (one core each)")
    ap.add_argument("--out", type=Path, default=Path("results/bench"), help=f"where {task.name}.csv/.md/.png go")
    ap.add_argument("--combine", type=Path, nargs="+", metavar="CSV_OR_RUN",
                    help=f"run nothing: write {task.name}.md/.png to --out from the rows of earlier invocations' "
                         f"{task.name}.csv files (seeds added over several sessions) and of finished run folders "
                         "(a run whose invocation died, finished with prefrl train --resume)")
    ap.epilog = "Flags after `--` are prefrl train flags applied to every run (all methods alike), after the preset's."
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    if args.combine:
        return _combine(task, args.combine, args.out, argv)
    flags = [*task.flags[args.budget], *argv[cut + 1:]]
    steps = args.steps or task.steps[args.budget]
    methods = [m for m in (args.methods or ",".join(task.methods[args.budget])).split(",") if m]
    bad = [m for m in methods if m != "ppo_true" and not is_pref_method(m)]
    if bad:
        ap.error(f"unknown method(s) {bad}; use ppo_true and pref_<labels>, e.g. pref_700")
    envs = [e for e in args.envs.split(",") if e]
    from prefrl.envs import env_spec

    for env_id in envs:  # an unknown id or bad flags: fail now, not in a worker an hour in
        env_spec(env_id)
        eval_episodes = task_config(task, env_id, methods[-1], 0, steps, args.out, flags).validate().eval_episodes
    args.out.mkdir(parents=True, exist_ok=True)
    runs_dir = args.out / "runs" / f"{task.name}__{int(time.time())}"
    runs_dir.mkdir(parents=True)
    meta = dict(command="prefrl bench " + " ".join(argv), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                machine=f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                        f"Python {platform.python_version()}",
                load_start=load_average(), workers=args.workers, steps=steps,
                runs_dir=str(runs_dir), budget=args.budget, eval_episodes=eval_episodes)
    t0 = time.monotonic()
    jobs = [(e, m, s) for s in range(args.first_seed, args.first_seed + args.seeds) for e in envs for m in methods]
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=args.workers, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_task_one, task.name, e, m, s, steps, str(runs_dir), flags): (e, m, s)
                   for e, m, s in jobs}
        for fut in as_completed(futures):
            row = fut.result()
            rows.append(row)
            print(f"[{len(rows)}/{len(jobs)}] {row['env']} {row['method']} seed {row['seed']}: true return "
                  f"{row['true_return']:.1f}, {row['steps_per_second']:.0f} steps/s", flush=True)
    rows.sort(key=lambda r: (envs.index(r["env"]), methods.index(r["method"]), r["seed"]))
    meta["total_wall"] = time.monotonic() - t0
    meta["load_end"] = load_average()
    with open(args.out / f"{task.name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, TASK_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    plot_task(task, rows, args.out / f"{task.name}.png")
    (args.out / f"{task.name}.md").write_text(summarise_task(task, rows, meta))
    print((args.out / f"{task.name}.md").read_text())
    return 0


def run_folder_row(run_dir: Path) -> dict:
    """The row a finished run folder stands for: a run whose invocation died (session end, kill) and that
    `prefrl train --resume` then finished has no csv row. Its wall time includes the time before the stop."""
    from prefrl.loop import RunError, finished_result

    try:
        cfg = TrainConfig.from_json((run_dir / "config.json").read_text(), source=str(run_dir / "config.json"))
        r = finished_result(run_dir)
    except (OSError, ValueError, RunError) as exc:
        raise SystemExit(f"prefrl bench: {run_dir} is not a readable run folder ({exc}); pass a bench run's folder")
    if r is None:
        raise SystemExit(f"prefrl bench: {run_dir} has not finished (no summary.json); finish it with "
                         f"prefrl train --resume {run_dir}, then combine again")
    return dict(env=cfg.env.env, method=cfg.exp_name, seed=cfg.seed, labels=int(r.labels), steps=int(r.steps),
                true_return=float(r.true_return), wall_seconds=round(float(r.wall_seconds), 1),
                steps_per_second=round(r.steps / max(r.wall_seconds, 1e-9), 1),
                peak_rss_mb=round(float(r.peak_rss_mb), 1), run_dir=str(run_dir))


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if set(reader.fieldnames or ()) != set(TASK_COLUMNS):
            raise SystemExit(f"prefrl bench: {path} is not a benchmark csv (columns {reader.fieldnames}); "
                             f"pass files with the columns {','.join(TASK_COLUMNS)}")
        return [dict(raw, seed=int(raw["seed"]), labels=int(raw["labels"]), steps=int(raw["steps"]),
                     **{k: float(raw[k]) for k in ("true_return", "wall_seconds", "steps_per_second", "peak_rss_mb")})
                for raw in reader]


def read_task_rows(paths: list[Path]) -> list[dict]:
    """Rows of `<task>.csv` files and finished run folders, numbers parsed; one row per (env, method, seed)
    or a one-line error."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        if path.is_dir():
            found = [run_folder_row(path)]
        elif path.is_file():
            found = _csv_rows(path)
        else:
            raise SystemExit(f"prefrl bench: no such file {path}; pass the .csv files earlier invocations wrote "
                             "or finished run folders")
        for row in found:
            key = (row["env"], row["method"], row["seed"])
            if key in rows:
                raise SystemExit(f"prefrl bench: {key[0]} {key[1]} seed {key[2]} is in more than one file "
                                 f"({path}); pass each run once")
            rows[key] = row
    return list(rows.values())


def _combine(task: Task, paths: list[Path], out: Path, argv: list[str]) -> int:
    rows = read_task_rows(paths)
    if not rows:
        raise SystemExit("prefrl bench: the files hold no runs; pass the .csv files earlier invocations wrote")
    steps = sorted({r["steps"] for r in rows})
    if len(steps) > 1:
        raise SystemExit(f"prefrl bench: the files mix PPO step budgets {steps}; combine runs of one budget only")
    envs = list(dict.fromkeys(r["env"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in sorted(rows, key=lambda r: r["method"] != "ppo_true")))
    rows.sort(key=lambda r: (envs.index(r["env"]), methods.index(r["method"]), r["seed"]))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{task.name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, TASK_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    png = plot_task(task, rows, out / f"{task.name}.png")
    md = summarise_task(task, rows, dict(combined=[str(p) for p in paths], command="prefrl bench " + " ".join(argv),
                                         steps=steps[0], png=png is not None))
    (out / f"{task.name}.md").write_text(md)
    print(md)
    return 0


# --- throughput: the PPO loop with the true vs the learned reward, one process, interleaved -------------------

THROUGHPUT_ENVS = ("ALE/Pong-v5", "HalfCheetah-v5")
THROUGHPUT_METHODS = ("ppo_true", "prefrl", "prefrl_per_step")


def measure_throughput(env_id: str, steps: int, repeats: int, flags: list[str]) -> list[dict]:
    """Env steps per second of PPO.learn on the true reward and on the learned one (ClipRecorder + LearnedReward
    with a fitted-size ensemble): `prefrl` predicts once per rollout (the default), `prefrl_per_step` at every
    step; in this one process, alternating chunks so all see the same machine load. Reward fitting is left
    out: its cost is the --epochs/--refit-growth trade-off, reported by the benchmarks' whole-run wall times
    and summary.json's phase_seconds."""
    import tempfile

    import torch

    from prefrl.cli import parse_train_config
    from prefrl.loop import Trainer

    torch.set_num_threads(1)
    base = replace(parse_train_config(["--env", env_id, *flags]), progress_bar=False)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="prefrl-throughput-") as tmp:
        trainers = {}
        for method in THROUGHPUT_METHODS:
            cfg = replace(base, reward_source="true" if method == "ppo_true" else "learned",
                          reward_per_rollout=method != "prefrl_per_step")
            run_dir = Path(tmp) / method
            run_dir.mkdir()
            trainers[method] = t = Trainer(cfg, run_dir, resuming=False)
            if t.ensemble is not None:
                t.ensemble.version = 1  # "fitted": LearnedReward now predicts (random weights cost the same)
            t.model.learn(t.cfg.rollout_steps, reset_num_timesteps=False, callback=t.relabel)  # warm-up, not timed
        for rep in range(repeats):
            for method, t in trainers.items():
                start, t0 = t.model.num_timesteps, time.perf_counter()
                t.model.learn(steps, reset_num_timesteps=False, callback=t.relabel)
                seconds = time.perf_counter() - t0
                done = t.model.num_timesteps - start
                rows.append(dict(env=env_id, method=method, repeat=rep, steps=done, seconds=round(seconds, 2),
                                 steps_per_second=round(done / seconds, 1)))
                print(f"{env_id} {method} repeat {rep}: {done / seconds:.0f} steps/s", flush=True)
        for t in trainers.values():
            t.close()
    return rows


def _throughput_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefrl bench throughput", description=measure_throughput.__doc__)
    ap.add_argument("task", choices=["throughput"])
    ap.add_argument("--envs", default=",".join(THROUGHPUT_ENVS), help="comma-separated env ids")
    ap.add_argument("--steps", type=int, default=8192, help="PPO steps per timed chunk (default 8,192)")
    ap.add_argument("--repeats", type=int, default=3, help="timed chunks per method, interleaved (default 3)")
    ap.add_argument("--out", type=Path, default=Path("results/bench"), help="where throughput.csv/.md go")
    ap.epilog = "Flags after `--` are prefrl train flags for all methods, after the env's preset."
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    flags = argv[cut + 1:]
    load_start = load_average()
    rows = [r for env_id in args.envs.split(",") if env_id for r in measure_throughput(env_id, args.steps,
                                                                                       args.repeats, flags)]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "throughput.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["env", "method", "repeat", "steps", "seconds", "steps_per_second"])
        w.writeheader()
        w.writerows(rows)
    lines = ["# Throughput: PPO on the true reward vs on the learned reward", "",
             f"Command: `prefrl bench {' '.join(argv)}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} cores; load "
             f"average at start {load_start}, at end {load_average()}.  ",
             "One process, one torch thread, the env's preset; timed chunks of PPO.learn alternate between the two "
             "methods so all see the same load. prefrl = ClipRecorder + LearnedReward, the ensemble predicting once "
             "per rollout (the default); prefrl per step = the same predicting at every step, batched over the "
             "VecEnv (--no-reward-per-rollout). Reward fitting and labelling are not in these numbers.", "",
             "| env | PPO-true steps/s | prefrl steps/s | prefrl per step steps/s | wall / PPO-true wall, per step, "
             "median (each repeat): prefrl | prefrl per step |",
             "|---|---|---|---|---|---|"]
    for env_id in dict.fromkeys(r["env"] for r in rows):
        by = {m: [r for r in rows if r["env"] == env_id and r["method"] == m] for m in THROUGHPUT_METHODS}
        sps = {m: sum(r["steps"] for r in rs) / sum(r["seconds"] for r in rs) for m, rs in by.items()}
        cells = []
        for m in THROUGHPUT_METHODS[1:]:
            ratios = [t["steps_per_second"] / p["steps_per_second"] for t, p in zip(by["ppo_true"], by[m])]
            cells.append(f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})")
        lines.append(f"| {env_id} | {sps['ppo_true']:.0f} | {sps['prefrl']:.0f} | {sps['prefrl_per_step']:.0f} | "
                     f"{' | '.join(cells)} |")
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    print((args.out / "throughput.md").read_text())
    return 0
