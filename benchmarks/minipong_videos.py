"""Render the two MiniPong demo videos of issue 5 from a finished ablation grid.

    .venv/bin/python benchmarks/minipong_videos.py [GRID_DIR]   (default results/ablations/MiniPong-v0)

Renders 600 steps of every finished offline and online (`full`) run's final deterministic policy from
the same reset seed, keeps the offline video with the longest rally (the endless volley) and the online
one with the most points won, and writes offline_volley.mp4 / online_scoring.mp4 plus videos.json (what
each shows, and the same figures for every run, so the choice can be checked).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from prefrl.evaluate import policy_video


def finished(grid: Path, variant: str) -> list[Path]:
    runs = sorted(p for p in (grid / "runs").glob(f"{variant}__*") if (p / "summary.json").exists())
    if not runs:
        raise SystemExit(f"no finished {variant} runs under {grid / 'runs'}; run prefrl ablate first")
    return runs


def main() -> None:
    grid = Path(sys.argv[1] if len(sys.argv) > 1 else "results/ablations/MiniPong-v0")
    shown: dict = {}
    for name, variant, key in (("offline_volley", "offline", "longest_rally"),
                               ("online_scoring", "full", "points_won")):
        tmp = grid / f".{name}.tmp.mp4"
        best, every = None, {}
        for run in finished(grid, variant):
            info = policy_video(run, tmp, steps=600)
            every[run.name] = info
            if best is None or info[key] > best[1][key]:
                best = (run, info)
                tmp.replace(grid / f"{name}.mp4")
        tmp.unlink(missing_ok=True)
        shown[name] = dict(run=best[0].name, steps=600, chosen_by=key, shows=best[1], every_run=every)
        print(f"{name}.mp4 <- {best[0].name}: {best[1]}")
    (grid / "videos.json").write_text(json.dumps(shown, indent=2) + "\n")


if __name__ == "__main__":
    main()
