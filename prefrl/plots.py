"""Plots from run folders alone. Performance is always the TRUE return."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

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
