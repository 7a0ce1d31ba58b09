"""`prefrl plot` from run folders alone: fixture folders with known numbers, failure cases, and a real run
whose env reports episode metrics (they must reach progress.csv, survive a resume and get plotted)."""

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import PendulumEnv
from scipy import stats

from prefrl.config import EnvConfig, FeedbackConfig, TrainConfig
from prefrl.plots import PlotError, interval_estimate, iqm, plot_grid

STEPS = [128, 256, 384, 512]


def write_run(root: Path, variant: str, seed: int, final: float | None, labels: int = 100,
              curve: list[float] | None = None, metric: list[float] | None = None) -> Path:
    run = root / "runs" / f"{variant}__labels{labels}__seed{seed}"
    run.mkdir(parents=True)
    cfg = TrainConfig(env=EnvConfig(env="prefrl/MiniPong-v0"), exp_name=variant, seed=seed,
                      feedback=FeedbackConfig(total_labels=labels), run_dir=run)
    (run / "config.json").write_text(cfg.to_json())
    curve = curve or [final or 0.0] * len(STEPS)
    with open(run / "progress.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["env_steps", "true_episode_return", "learned_episode_return", "labels", "reward_corr",
                    "wall_seconds"] + (["ep_rally_length"] if metric else []))
        for i, s in enumerate(STEPS):
            w.writerow([s, curve[i], 2 * curve[i] + seed, labels, "" if i == 0 else 0.5, i]
                       + ([metric[i]] if metric else []))
    if final is not None:
        (run / "summary.json").write_text(json.dumps({"true_return": final, "labels": labels}))
    return run


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_summary_and_curves_from_fixture_runs(tmp_path):
    grid = tmp_path / "MiniPong-v0"
    full = [0.0, 10.0, 20.0, 30.0, 100.0]
    for seed, final in enumerate(full):
        write_run(grid, "full", seed, final, curve=[seed, seed + 1, seed + 2, final],
                  metric=[5, 5, 5, 10 + seed])
    for seed in range(5):
        write_run(grid, "offline", seed, 1.0, metric=[5, 50, 500, 5000])
    write_run(grid, "offline", 5, None)  # still running: in the curves, not in the final scores

    written = plot_grid([grid], tmp_path / "out")
    names = {p.name for p in written}
    assert names == {"curves.csv", "summary.csv", "learning_curves.png", "final_performance.png",
                     "reward_hacking.png", "episode_metrics.png"}
    assert all(p.stat().st_size > (10_000 if p.suffix == ".png" else 100) for p in written)

    rows = {r["variant"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert list(rows) == ["full", "offline"]  # the paper's order
    f, o = rows["full"], rows["offline"]
    assert float(f["mean"]) == pytest.approx(32.0) and float(f["iqm"]) == pytest.approx(20.0)  # mean(10, 20, 30)
    for name in ("mean", "iqm"):
        assert float(f[f"{name}_ci_low"]) < float(f[name]) < float(f[f"{name}_ci_high"])
    assert float(f["mean_ci_low"]) >= 0.0 and float(f["mean_ci_high"]) <= 100.0
    assert (o["runs"], o["unfinished"]) == ("5", "1")
    assert float(o["mean_ci_low"]) == float(o["mean_ci_high"]) == 1.0  # equal scores: zero-width interval
    assert float(f["ep_rally_length_final"]) == pytest.approx(12.0)  # last 10% of rollouts = the last row
    assert float(o["ep_rally_length_final"]) == pytest.approx(5000.0)
    assert float(f["reward_corr_final"]) == pytest.approx(0.5)
    assert float(f["learned_true_corr"]) == pytest.approx(1.0)  # learned = 2 * true + seed in the fixture

    curves = read_csv(tmp_path / "out" / "curves.csv")
    first = next(r for r in curves if r["variant"] == "full" and r["column"] == "true_episode_return")
    assert first["env_steps"] == "128" and float(first["mean"]) == pytest.approx(2.0)  # seeds 0..4 at step 128
    assert float(first["ci_low"]) <= 2.0 <= float(first["ci_high"]) and first["runs"] == "5"
    off = [r for r in curves if r["variant"] == "offline" and r["column"] == "true_episode_return"]
    assert {r["runs"] for r in off} == {"6"}


def test_return_vs_labels_and_one_folder_per_env(tmp_path):
    for labels, score in ((50, 1.0), (100, 2.0), (200, 4.0)):
        for seed in range(3):
            write_run(tmp_path / "pong", "full", seed, score + seed, labels=labels)
    other = write_run(tmp_path / "pend", "full", 0, -150.0)
    cfg = json.loads((other / "config.json").read_text())
    cfg["env"]["env"] = "Pendulum-v1"
    (other / "config.json").write_text(json.dumps(cfg))

    written = plot_grid([tmp_path / "pong", other], tmp_path / "out")
    assert tmp_path / "out" / "MiniPong-v0" / "return_vs_labels.png" in written
    assert (tmp_path / "out" / "Pendulum-v1" / "summary.csv").exists()
    rows = read_csv(tmp_path / "out" / "MiniPong-v0" / "summary.csv")
    assert [(r["labels"], float(r["mean"])) for r in rows] == [("50", 2.0), ("100", 3.0), ("200", 5.0)]


def test_stratified_bootstrap_resamples_each_stratum_on_its_own():
    a, b = np.zeros(6), np.full(6, 10.0)
    assert interval_estimate([a, b], np.mean) == (5.0, 5.0, 5.0)  # each stratum keeps its share: no spread
    pooled = interval_estimate([np.concatenate([a, b])], np.mean)
    assert pooled[1] < 5.0 < pooled[2]  # the plain bootstrap of the pooled runs does spread
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    point, lo, hi = interval_estimate([x], iqm)
    assert point == pytest.approx(stats.trim_mean(x, 0.25)) and lo < point < hi
    assert np.isnan(interval_estimate([np.array([1.0])], np.mean)[1])  # one run: no interval


def test_bad_folders_give_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "a.txt").write_text("x")
    fresh = tmp_path / "fresh" / "runs" / "full__labels5__seed0"
    fresh.mkdir(parents=True)
    (fresh / "config.json").write_text(TrainConfig().to_json())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text(TrainConfig().to_json())
    (damaged / "progress.csv").write_text("env_steps,true_episode_return\n128,abc\n")
    for paths, msg in [([empty], "holds no run folders"), ([notes], "holds no run folders"),
                       ([tmp_path / "missing"], "is not a folder"), ([tmp_path / "fresh"], "has progress.csv rows yet"),
                       ([broken], "is not a prefrl config"), ([damaged], "progress.csv is damaged")]:
        with pytest.raises(PlotError, match=msg) as e:
            plot_grid(paths, tmp_path / "out")
        assert "\n" not in str(e.value)
    r = subprocess.run([sys.executable, "-m", "prefrl", "plot", str(empty), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "holds no run folders" in r.stderr
    assert not (tmp_path / "out").exists()


class CountingPendulum(PendulumEnv):
    """Pendulum that reports an episode metric, as MiniPong reports points and rallies."""

    metadata = {**PendulumEnv.metadata, "episode_metrics": ("upright_steps",)}

    def reset(self, *, seed=None, options=None):
        self.upright = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.upright += int(obs[0] > 0.5)
        return obs, reward, terminated, truncated, {**info, "upright_steps": self.upright}


def test_episode_metrics_reach_progress_csv_survive_resume_and_get_plotted(tmp_path):
    from prefrl.loop import resume, train

    env_id = "PrefrlTestCountingPendulum-v0"
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=CountingPendulum, max_episode_steps=32)
    cfg = TrainConfig(env=EnvConfig(env=env_id, n_envs=2), seed=0, total_timesteps=512, progress_bar=False,
                      feedback=FeedbackConfig(total_labels=6, clip_length=8), eval_episodes=1,
                      run_dir=tmp_path / "runs" / "full__labels6__seed0")
    cfg = replace(cfg, ppo=replace(cfg.ppo, n_steps=64), reward=replace(cfg.reward, pretrain_epochs=2, epochs=1))
    run = train(cfg).run_dir
    rows = read_csv(run / "progress.csv")
    assert "ep_upright_steps" in rows[0] and len(rows) == 4
    values = [float(r["ep_upright_steps"]) for r in rows]
    assert all(0 <= v <= 32 for v in values)  # 128 steps per rollout = 2 episodes per env: never empty
    resume(run, progress_bar=False)  # a finished run: progress.csv is truncated to the checkpoint and rewritten
    assert read_csv(run / "progress.csv") == rows
    written = plot_grid([tmp_path], tmp_path / "plots")
    assert tmp_path / "plots" / "episode_metrics.png" in written
    summary = read_csv(tmp_path / "plots" / "summary.csv")
    assert float(summary[0]["ep_upright_steps_final"]) == pytest.approx(values[-1])
