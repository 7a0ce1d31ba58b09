"""The benchmark script's plumbing on a tiny budget (the real numbers come from running it by hand)."""

import csv
import os
import subprocess
import sys


def test_tiny_bench_writes_csv_and_markdown(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "prefrl", "bench", "pendulum", "--seeds", "1", "--steps", "1024",
                        "--methods", "ppo_true,pref_50,random", "--workers", "2", "--out", str(out), "--",
                        "--n-steps", "256", "--n-envs", "2", "--total-labels", "10", "--pretrain-epochs", "5"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "pendulum.csv")))
    assert [row["method"] for row in rows] == ["ppo_true", "pref_50", "random"]
    assert set(rows[0]) == {"method", "seed", "labels", "steps", "true_return", "wall_seconds", "peak_rss_mb"}
    pref = rows[1]
    assert int(pref["labels"]) == 50 and int(pref["steps"]) == 1024 and float(pref["peak_rss_mb"]) > 50
    md = (out / "pendulum.md").read_text()
    assert "wall / PPO-true" in md and "| random | 1 |" in md and "load average" in md
