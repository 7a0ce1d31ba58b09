"""Plots from run folders alone (config.json, progress.csv, summary.json). Performance is always the
TRUE return; the reward model's own numbers are labelled as such.

`learning_curve` draws one run (the trainer calls it at the end). `plot_grid` (`prefrl plot`) draws
groups of runs, a group being the runs of one env, variant (the run's exp_name) and label budget that
differ only in seed:
- learning curves of true return vs env steps, mean over seeds with a 95% bootstrap band;
- final performance (the evaluation's true return in summary.json): IQM and mean with 95% stratified
  bootstrap CIs, as rliable computes them (percentile bootstrap, strata resampled independently), done
  with scipy.stats.bootstrap because rliable does not install beside pandas 3;
- true return vs number of labels, when the runs have more than one label budget;
- reward hacking: learned vs true return over training, their correlation, the per-step reward
  correlation (reward_corr), and the env's episode metrics (progress.csv's `ep_` columns, e.g. points
  won, rally length) per variant.
Every PNG has a CSV beside it with the plotted numbers (curves.csv, summary.csv).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_progress(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, list[float]] = {k: [] for k in (rows[0] if rows else [])}
    for r in rows:
        for k, v in r.items():
            cols[k].append(float(v) if v not in ("", None) else math.nan)
    return cols


def learning_curve(progress_csv: Path, out_png: Path, title: str = "") -> Path:
    """True episode return vs env steps; the learned return (rescaled) on a second axis, labelled as such."""
    cols = read_progress(progress_csv)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if cols:
        steps = cols["env_steps"]
        ax.plot(steps, cols["true_episode_return"], color="C0", label="true episode return")
        ax.set_xlabel("env steps")
        ax.set_ylabel("true episode return")
        learned = cols.get("learned_episode_return", [])
        if any(not math.isnan(v) for v in learned):
            ax2 = ax.twinx()
            ax2.plot(steps, learned, color="C1", alpha=0.6, label="learned episode return (reward model)")
            ax2.set_ylabel("learned return (reward model, normalised)")
            ax2.legend(loc="lower right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


# --- groups of runs: `prefrl plot` -------------------------------------------------------------------------------

EP_PREFIX = "ep_"
"""progress.csv columns of env episode metrics (prefrl.loop.EPISODE_METRIC_PREFIX; not imported: it pulls torch)."""
CONFIDENCE = 0.95
N_RESAMPLES = 2000
FINAL_FRACTION = 0.1
"""Training-time numbers (reward_corr, episode metrics) are summarised over the last 10% of each run's rollouts."""
ORDER = ("full", "random_queries", "no_ensemble", "offline", "no_regularization", "no_segments", "target",
         "oracle", "stochastic", "mistake", "skip", "equal", "myopic")
"""Variants in the paper's order (prefrl.config.VARIANT_GROUPS); others follow alphabetically."""


class PlotError(ValueError):
    """Nothing to plot from the given folders; the message is one line with the fix."""


@dataclass
class Run:
    """What plots need from one run folder."""

    path: Path
    env: str
    variant: str  # the run's exp_name (prefrl ablate names runs after their variant)
    labels: int
    seed: int
    progress: dict[str, np.ndarray]
    final_return: Optional[float]  # summary.json's true_return; None while the run is unfinished


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Run folders among `paths`: each path is a run folder (has config.json), a grid folder (its `runs/`
    holds run folders) or a folder of run folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise PlotError(f"{p} is not a folder; pass run folders or a grid folder such as results/ablations/<env>")
        if (p / "config.json").is_file():
            found.append(p)
            continue
        inner = p / "runs" if (p / "runs").is_dir() else p
        runs = sorted(d for d in inner.iterdir() if (d / "config.json").is_file())
        if not runs:
            raise PlotError(f"{p} holds no run folders (no config.json in it, its runs/ or its subfolders); "
                            "pass folders made by prefrl train or prefrl ablate")
        found += runs
    return list(dict.fromkeys(found))


def load_run(path: Path) -> Run:
    try:
        cfg = json.loads((path / "config.json").read_text())
        env, variant = cfg["env"]["env"], cfg["exp_name"]
        labels = 0 if cfg.get("reward_source") == "true" else int(cfg["feedback"]["total_labels"])
        seed = int(cfg["seed"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PlotError(f"{path / 'config.json'} is not a prefrl config ({type(exc).__name__}: {exc}); "
                        "restore it or leave the folder out") from None
    progress: dict[str, np.ndarray] = {}
    if (path / "progress.csv").is_file():
        try:
            progress = {k: np.asarray(v, dtype=float) for k, v in read_progress(path / "progress.csv").items()}
        except (ValueError, csv.Error) as exc:
            raise PlotError(f"{path / 'progress.csv'} is damaged ({exc}); fix or delete the bad row, "
                            "or leave the folder out") from None
    final = None
    if (path / "summary.json").is_file():
        try:
            final = float(json.loads((path / "summary.json").read_text())["true_return"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise PlotError(f"{path / 'summary.json'} is unreadable; rerun the run's evaluation with "
                            f"prefrl train --resume {path}") from None
    return Run(path, env, variant, labels, seed, progress, final)


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (rliable's aggregate of choice)."""
    from scipy import stats  # scipy is imported where it is used: learning_curve, at every run's end, needs none

    return stats.trim_mean(x, 0.25, axis=axis)


def interval_estimate(strata: Sequence[np.ndarray], aggregate: Callable[..., np.ndarray]) -> tuple[float, float, float]:
    """(point, low, high): `aggregate` over all scores pooled, with a 95% stratified percentile bootstrap CI:
    each stratum (e.g. an env's runs) is resampled on its own, as rliable's StratifiedBootstrap does.
    The CI is nan when a stratum has fewer than two scores."""
    strata = [np.asarray(s, dtype=float) for s in strata]
    point = float(aggregate(np.concatenate(strata)))
    if any(len(s) < 2 for s in strata):
        return point, math.nan, math.nan

    def pooled(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        return aggregate(np.concatenate(xs, axis=axis), axis=axis)

    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-equal scores: a zero-width interval is the right answer
        ci = stats.bootstrap(strata, pooled, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                             method="percentile", vectorized=True, rng=np.random.default_rng(0)).confidence_interval
    return point, float(ci.low), float(ci.high)


def curve(runs: Sequence[Run], column: str) -> Optional[dict[str, np.ndarray]]:
    """Mean over runs of `column` vs env steps, with a 95% bootstrap band over runs (nan for one run).
    Runs are interpolated onto the union of their logged steps, within the range all of them cover."""
    series = []
    for r in runs:
        x, y = r.progress.get("env_steps"), r.progress.get(column)
        if x is None or y is None:
            continue
        ok = ~np.isnan(y)
        if ok.sum() >= 1:
            series.append((x[ok], y[ok]))
    if not series:
        return None
    lo_step = max(x[0] for x, _ in series)
    hi_step = min(x[-1] for x, _ in series)
    steps = np.unique(np.concatenate([x for x, _ in series]))
    steps = steps[(steps >= lo_step) & (steps <= hi_step)]
    if len(steps) == 0:
        return None
    ys = np.stack([np.interp(steps, x, y) for x, y in series])  # (runs, steps)
    low = high = np.full(len(steps), np.nan)
    if len(series) >= 2:
        from scipy import stats

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = stats.bootstrap((ys,), np.mean, axis=0, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                                 method="percentile", vectorized=True, rng=np.random.default_rng(0)).confidence_interval
        low, high = ci.low, ci.high
    return dict(env_steps=steps, mean=ys.mean(0), low=low, high=high, runs=np.full(len(steps), len(series)))


def _tail_mean(r: Run, column: str) -> float:
    y = r.progress.get(column)
    if y is None or len(y) == 0:
        return math.nan
    tail = y[-max(1, math.ceil(len(y) * FINAL_FRACTION)):]
    tail = tail[~np.isnan(tail)]
    return float(tail.mean()) if len(tail) else math.nan


def _corr(r: Run, a: str, b: str) -> float:
    x, y = r.progress.get(a), r.progress.get(b)
    if x is None or y is None:
        return math.nan
    ok = ~(np.isnan(x) | np.isnan(y))
    if ok.sum() < 3 or x[ok].std() == 0 or y[ok].std() == 0:
        return math.nan
    from scipy import stats

    return float(stats.pearsonr(x[ok], y[ok]).statistic)


Group = tuple[str, int]  # (variant, labels)


def _group_order(g: Group) -> tuple:
    return (ORDER.index(g[0]) if g[0] in ORDER else len(ORDER), g[0], g[1])


def _label(g: Group, several_budgets: bool) -> str:
    return f"{g[0]} ({g[1]} labels)" if several_budgets else g[0]


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path


def _band(ax, c: dict[str, np.ndarray], label: str, color, style: str = "-") -> None:
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 400k, not 400000 (ticks overlap in small panels)
    ax.plot(c["env_steps"], c["mean"], style, color=color, label=f"{label} (n={int(c['runs'][0])})")
    if not np.all(np.isnan(c["low"])):
        ax.fill_between(c["env_steps"], c["low"], c["high"], color=color, alpha=0.2, linewidth=0)


def plot_env(runs: list[Run], out: Path) -> list[Path]:
    """Every plot and CSV for the runs of one env, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    env = runs[0].env
    groups: dict[Group, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.variant, r.labels), []).append(r)
    order = sorted(groups, key=_group_order)
    several = len({g[1] for g in order}) > 1
    variants = list(dict.fromkeys(g[0] for g in order))
    budgets = sorted({g[1] for g in order})
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    colors = {g: cmap(variants.index(g[0]) % cmap.N) for g in order}  # one colour per variant
    styles = {g: ("-", "--", ":", "-.")[budgets.index(g[1]) % 4] for g in order}  # one line style per budget
    metrics = sorted({k for r in runs for k in r.progress if k.startswith(EP_PREFIX)})
    written: list[Path] = []

    # curves.csv + learning_curves.png: TRUE return over training
    curve_rows: list[dict] = []
    curves: dict[tuple[Group, str], dict[str, np.ndarray]] = {}
    for g in order:
        for col in ["true_episode_return", "learned_episode_return", "reward_corr", *metrics]:
            c = curve(groups[g], col)
            if c is None:
                continue
            curves[g, col] = c
            curve_rows += [dict(env=env, variant=g[0], labels=g[1], column=col, env_steps=int(s), runs=int(n),
                                mean=m, ci_low=lo, ci_high=hi)
                           for s, m, lo, hi, n in zip(c["env_steps"], c["mean"], c["low"], c["high"], c["runs"])]
    if not any(col == "true_episode_return" for _, col in curves):
        raise PlotError(f"no {env} run has a true episode return in progress.csv yet; train longer (an episode "
                        "must end within a rollout) or check the run folders")
    written.append(_write_csv(out / "curves.csv", curve_rows))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for g in order:
        if (g, "true_episode_return") in curves:
            _band(ax, curves[g, "true_episode_return"], _label(g, several), colors[g], styles[g])
    ax.set(xlabel="env steps (PPO)", ylabel="true episode return",
           title=f"{env}: true return, mean over seeds, {CONFIDENCE:.0%} bootstrap band")
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out / "learning_curves.png"))

    # summary.csv + final_performance.png: evaluation return (summary.json), IQM and mean with CIs
    summary: list[dict] = []
    for g in order:
        done = [r for r in groups[g] if r.final_return is not None]
        scores = np.array([r.final_return for r in done])
        row: dict = dict(env=env, variant=g[0], labels=g[1], runs=len(done), unfinished=len(groups[g]) - len(done))
        for name, agg in (("mean", np.mean), ("iqm", iqm)):
            pt, lo, hi = interval_estimate([scores], agg) if len(scores) else (math.nan,) * 3
            row.update({name: pt, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
        row["reward_corr_final"] = float(np.nanmean([_tail_mean(r, "reward_corr") for r in groups[g]])) \
            if any(not math.isnan(_tail_mean(r, "reward_corr")) for r in groups[g]) else math.nan
        lt = [_corr(r, "learned_episode_return", "true_episode_return") for r in groups[g]]
        row["learned_true_corr"] = float(np.nanmean(lt)) if any(not math.isnan(v) for v in lt) else math.nan
        for m in metrics:
            tails = np.array([_tail_mean(r, m) for r in groups[g]])
            tails = tails[~np.isnan(tails)]
            pt, lo, hi = interval_estimate([tails], np.mean) if len(tails) else (math.nan,) * 3
            row.update({f"{m}_final": pt, f"{m}_final_ci_low": lo, f"{m}_final_ci_high": hi})
        summary.append(row)
    written.append(_write_csv(out / "summary.csv", summary))
    scored = [row for row in summary if row["runs"]]
    if scored:
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(scored) + 1.6), dpi=110, sharey=True)
        ylab = [_label((row["variant"], row["labels"]), several) for row in scored]
        for ax, name in zip(axes, ("iqm", "mean")):
            for i, row in enumerate(scored):
                c = colors[row["variant"], row["labels"]]
                ax.plot([row[f"{name}_ci_low"], row[f"{name}_ci_high"]], [i, i], color=c, linewidth=6, alpha=0.5)
                ax.plot(row[name], i, "|", color="k", markersize=14)
            ax.set(title=f"{name.upper() if name == 'iqm' else 'Mean'} (95% stratified bootstrap CI)",
                   xlabel="final true return (deterministic evaluation)")
            ax.grid(axis="x", alpha=0.3)
        axes[0].set_yticks(range(len(scored)), ylab)
        axes[0].invert_yaxis()
        fig.suptitle(f"{env}: final performance over seeds", fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out / "final_performance.png"))

    # return_vs_labels.png: one line per variant, when there are several label budgets
    if several:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        for v in dict.fromkeys(row["variant"] for row in scored):
            pts = sorted((row for row in scored if row["variant"] == v), key=lambda row: row["labels"])
            x = [p["labels"] for p in pts]
            c = colors[v, pts[0]["labels"]]
            ax.plot(x, [p["iqm"] for p in pts], "o-", color=c, label=v)
            ax.fill_between(x, [p["iqm_ci_low"] for p in pts], [p["iqm_ci_high"] for p in pts], color=c, alpha=0.2)
        ax.set(xlabel="labels", ylabel="final true return (IQM, 95% CI)", title=f"{env}: true return vs labels")
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out / "return_vs_labels.png"))

    # reward_hacking.png: per group, true vs learned return over training; last panel: reward_corr
    learned = [g for g in order if (g, "learned_episode_return") in curves]
    if learned:
        n = len(learned) + 1
        cols = min(4, n)
        rows_ = math.ceil(n / cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(3.6 * cols, 2.8 * rows_), dpi=110, squeeze=False)
        flat = list(axes.flat)
        for ax, g in zip(flat, learned):
            if (g, "true_episode_return") in curves:
                _band(ax, curves[g, "true_episode_return"], "true", "C0")
            ax2 = ax.twinx()
            _band(ax2, curves[g, "learned_episode_return"], "learned (reward model)", "C1")
            ax.set_title(_label(g, several), fontsize=8)
            ax.set_ylabel("true return", fontsize=7, color="C0")
            ax2.set_ylabel("learned return (normalised)", fontsize=7, color="C1")
            ax.tick_params(labelsize=6), ax2.tick_params(labelsize=6)
        ax = flat[len(learned)]
        for g in learned:
            if (g, "reward_corr") in curves:
                _band(ax, curves[g, "reward_corr"], _label(g, several), colors[g], styles[g])
        ax.set_title("reward model vs true reward: per-step correlation", fontsize=8)
        ax.set_ylim(-1, 1)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
        for extra in flat[n:]:
            extra.axis("off")
        fig.suptitle(f"{env}: reward hacking views (x: env steps; mean over seeds, 95% bands)", fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out / "reward_hacking.png"))

    # episode_metrics.png: the env's own episode numbers over training, per group
    if metrics:
        cols = min(3, len(metrics))
        rows_ = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(5 * cols, 3.6 * rows_), dpi=110, squeeze=False)
        for extra in list(axes.flat)[len(metrics):]:
            extra.axis("off")
        for ax, m in zip(axes.flat, metrics):
            for g in order:
                if (g, m) in curves:
                    _band(ax, curves[g, m], _label(g, several), colors[g], styles[g])
            ax.set(title=m[len(EP_PREFIX):].replace("_", " ") + " per episode", xlabel="env steps (PPO)")
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"{env}: episode metrics (mean over seeds, 95% bands)", fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out / "episode_metrics.png"))
    return written


def plot_grid(paths: Sequence[Path], out: Optional[Path] = None) -> list[Path]:
    """Plots and CSVs for the runs under `paths`, one folder per env: `out` itself for a single env (default
    results/ablations/<env>), `out/<env>` for several."""
    runs = [load_run(p) for p in find_run_dirs(paths)]
    usable = [r for r in runs if r.progress.get("env_steps") is not None and len(r.progress["env_steps"])]
    if not usable:
        raise PlotError(f"none of the {len(runs)} run folder(s) has progress.csv rows yet; train them first")
    envs = list(dict.fromkeys(r.env for r in usable))
    written: list[Path] = []
    for env in envs:
        short = env.split("/")[-1]
        dest = (out if len(envs) == 1 else out / short) if out is not None else Path("results/ablations") / short
        written += plot_env([r for r in usable if r.env == env], dest)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="prefrl plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR_OR_GRID_DIR",
                    help="run folders, grid folders (results/ablations/<env>) or folders of run folders")
    ap.add_argument("--out", type=Path, help="output folder (default results/ablations/<env>; one subfolder per env "
                                             "when the runs span several envs)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    written = plot_grid(args.paths, args.out)
    for p in written:
        print(p)
    return 0
