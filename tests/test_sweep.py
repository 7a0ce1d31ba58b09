"""`prefrl ablate`: the variant presets, the grid on a process pool and on local Ray, resuming a stopped grid."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from prefrl.config import (VARIANT_GROUPS, VARIANTS, ConfigError, FeedbackConfig, RewardConfig, TrainConfig,
                           _to_plain, variant_names)
from prefrl.sweep import SweepError, build_grid, job_status
from prefrl.sweep import main as sweep_main

EXPECTED = {
    "full": {},
    "random_queries": {"feedback.sampler": "random"},
    "no_ensemble": {"reward.ensemble_size": 1, "feedback.sampler": "random"},
    "offline": {"feedback.schedule": "offline"},
    "no_regularization": {"reward.l2": 0.0, "reward.adapt_l2": False},
    "no_segments": {"feedback.clip_length": 1},
    "target": {"reward.objective": "target"},
    **{t: ({} if t == "oracle" else {"feedback.teacher": t}) for t in VARIANT_GROUPS["teachers"]},
}
TINY = ["--n-steps", "64", "--n-envs", "2", "--total-labels", "8", "--pretrain-epochs", "3", "--epochs", "2",
        "--eval-episodes", "1", "--max-episode-steps", "32", "--clip-length", "8"]


def flat(cfg: TrainConfig) -> dict:
    out = {}
    for section, values in _to_plain(cfg).items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            out[section] = values
    return out


def changed(a: TrainConfig, b: TrainConfig) -> dict:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    return {k: fb[k] for k in fa if fa[k] != fb[k]}


def ablate(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "prefrl", "ablate", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"), **kw)


def summaries(runs: Path) -> dict[str, float]:
    return {d.name: json.loads((d / "summary.json").read_text())["true_return"] for d in sorted(runs.iterdir())}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_preset_changes_exactly_what_it_names(name):
    default = TrainConfig()
    assert changed(default, VARIANTS[name](default)) == EXPECTED[name]
    VARIANTS[name](default).validate()
    # on a base that already differs elsewhere, the preset still touches only its own fields
    base = replace(default, seed=7, feedback=FeedbackConfig(total_labels=50, clip_length=10),
                   reward=RewardConfig(dropout=0.3, hidden=(32,)))
    assert changed(base, VARIANTS[name](base)) == EXPECTED[name]


def test_variant_groups_and_names():
    assert variant_names("paper") == ["full", "random_queries", "no_ensemble", "offline", "no_regularization",
                                      "no_segments", "target"]
    assert variant_names("teachers") == ["oracle", "stochastic", "mistake", "skip", "equal", "myopic"]
    assert variant_names("offline,full,offline") == ["offline", "full"]
    with pytest.raises(ConfigError, match="did you mean offline"):
        variant_names("full,ofline")


def test_grid_folders_are_fixed_per_cell_and_configs_differ_only_by_preset(tmp_path):
    flags = ["--clip-length", "10"]
    jobs = build_grid(["Pendulum-v1", "prefrl/MiniPong-v0"], ["full", "offline"], [0, 1], tmp_path,
                      labels=[50, 100], steps=4096, train_flags=flags)
    assert len(jobs) == 16 and len({j.run_dir for j in jobs}) == 16
    j = next(j for j in jobs if j.env == "prefrl/MiniPong-v0" and j.variant == "offline" and j.labels == 100
             and j.seed == 1)
    assert j.run_dir == tmp_path.resolve() / "MiniPong-v0" / "runs" / "offline__labels100__seed1"
    twin = next(k for k in jobs if k.env == j.env and k.variant == "full" and k.labels == 100 and k.seed == 1)
    assert changed(twin.cfg, j.cfg) == {"feedback.schedule": "offline", "exp_name": "offline",
                                        "run_dir": str(j.run_dir)}
    assert j.cfg.total_timesteps == 4096 and j.cfg.feedback.clip_length == 10 and not j.cfg.progress_bar
    again = build_grid(["prefrl/MiniPong-v0"], ["offline"], [1], tmp_path, labels=[100], steps=4096, train_flags=flags)
    assert again[0].cfg == j.cfg


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    (job,) = build_grid(["Pendulum-v1"], ["full"], [0], tmp_path)
    assert job_status(job) == "new"
    job.run_dir.mkdir(parents=True)
    assert job_status(job) == "new"  # empty: left by a kill before config.json
    (job.run_dir / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="not a run folder"):
        job_status(job)


def test_tiny_grid_on_the_process_pool_then_rerun_skips_it(tmp_path, capsys):
    args = ["--env", "Pendulum-v1", "--variants", "full,offline", "--seeds", "2", "--workers", "2", "--steps", "256",
            "--out", str(tmp_path), "--", *TINY]
    r = ablate(*args)
    assert r.returncode == 0, r.stderr
    grid = tmp_path / "Pendulum-v1"
    runs = summaries(grid / "runs")
    assert sorted(runs) == ["full__labels8__seed0", "full__labels8__seed1", "offline__labels8__seed0",
                            "offline__labels8__seed1"]
    cfg = json.loads((grid / "runs" / "offline__labels8__seed1" / "config.json").read_text())
    assert cfg["feedback"]["schedule"] == "offline" and cfg["seed"] == 1 and cfg["total_timesteps"] == 256
    assert cfg["reward"]["epochs"] == 2  # train flags after `--` reach every run
    rows = list(csv.DictReader(open(grid / "summary.csv")))
    assert [(row["variant"], row["runs"]) for row in rows] == [("full", "2"), ("offline", "2")]
    assert (grid / "learning_curves.png").stat().st_size > 10_000
    mtimes = {p: p.stat().st_mtime_ns for p in grid.glob("runs/*/summary.json")}

    assert sweep_main(args) == 0  # the same command again, in-process: nothing to run
    assert "4 finished (skipped), 0 to resume, 0 to start" in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime_ns for p in grid.glob("runs/*/summary.json")}
    assert len((grid / "ablate.jsonl").read_text().splitlines()) == 2

    with pytest.raises(SweepError, match=r"other settings \(feedback.clip_length: 8 -> 4\)"):
        sweep_main([*args[:-len(TINY)], *TINY[:-2], "--clip-length", "4"])


def test_tiny_grid_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray", reason="ray is an optional extra: pip install -e .[ray]")
    r = ablate("--env", "Pendulum-v1", "--variants", "full,target", "--seeds", "2", "--workers", "2", "--ray", "local",
               "--steps", "256", "--out", str(tmp_path), "--no-plot", "--", *TINY,
               timeout=600)  # Ray's start-up on a loaded 2-core machine: 4 tiny runs took 81 s each, 300 s timed out
    assert r.returncode == 0, r.stderr
    assert "on Ray (local)" in r.stdout
    runs = summaries(tmp_path / "Pendulum-v1" / "runs")
    assert sorted(runs) == ["full__labels8__seed0", "full__labels8__seed1", "target__labels8__seed0",
                            "target__labels8__seed1"]
    assert all(np.isfinite(v) for v in runs.values())
    record = json.loads((tmp_path / "Pendulum-v1" / "ablate.jsonl").read_text())
    assert {row["status"] for row in record["ran"]} == {"started"} and record["runner"] == "Ray (local)"


def test_a_grid_killed_half_way_skips_finished_runs_and_resumes_the_rest(tmp_path):
    args = ["--env", "Pendulum-v1", "--variants", "full,offline", "--seeds", "1", "--workers", "1", "--steps", "3072",
            "--out", str(tmp_path), "--no-plot", "--", *TINY, "--checkpoint-every", "1"]
    runs = tmp_path / "Pendulum-v1" / "runs"
    first, second = runs / "full__labels8__seed0", runs / "offline__labels8__seed0"
    proc = subprocess.Popen([sys.executable, "-m", "prefrl", "ablate", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (second / "checkpoints" / "latest").exists():
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the grid and its worker, mid-run
        proc.wait()
    assert (first / "summary.json").exists() and not (second / "summary.json").exists()
    done_at = (first / "summary.json").stat().st_mtime_ns

    r = ablate(*args)
    assert r.returncode == 0, r.stderr
    assert "1 finished (skipped), 1 to resume, 0 to start" in r.stdout and "offline labels8 seed0: resumed" in r.stdout
    assert (first / "summary.json").stat().st_mtime_ns == done_at
    with open(second / "progress.csv") as fh:
        steps = [int(row["env_steps"]) for row in csv.DictReader(fh)]
    assert steps == list(range(128, 3072 + 1, 128))  # every rollout once: nothing lost, nothing twice
    with sqlite3.connect(second / "labels.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 8  # offline: all 8 asked once, up front


@pytest.mark.parametrize("args,error,msg", [
    (["--variants", "nope"], ConfigError, "unknown variant"),
    (["--labels", "50,x"], SweepError, "--labels takes a comma list"),
    (["--seeds", "0"], SweepError, "--seeds must be >= 1"),
    (["--ray", "local", "--workers", "0"], SweepError, "--workers must be >= 1"),
    (["--", "--seed", "3"], SweepError, "--seed after `--` is set by the grid"),
    (["--labels", "50", "--", "--total-labels", "3"], SweepError, "--total-labels after `--` is set by the grid"),
    (["--", "--clip-length", "500"], ConfigError, "--clip-length 500 is longer"),
])
def test_bad_grid_input_is_refused_before_anything_runs(tmp_path, args, error, msg):
    with pytest.raises(error, match=msg) as e:
        sweep_main(["--env", "Pendulum-v1", "--out", str(tmp_path), *args])
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())


def test_target_objective_regresses_true_clip_returns():
    """The `target` variant's reward trainer: predicted clip returns track the true ones without comparisons."""
    import gymnasium as gym

    from prefrl.reward.model import RewardEnsemble
    from prefrl.reward.train import PreferenceData, RewardTrainer

    rng = np.random.default_rng(0)
    n, t = 120, 5
    obs_l, obs_r = rng.normal(size=(n, t, 3)).astype(np.float32), rng.normal(size=(n, t, 3)).astype(np.float32)
    acts = np.zeros((n, t, 1), dtype=np.float32)
    true = np.stack([obs_l[..., 0].sum(1), obs_r[..., 0].sum(1)], axis=1)  # true reward r(s) = s_0
    answers = np.full(n, 0.5, dtype=np.float32)  # comparisons carry nothing: only the returns can teach
    cfg = RewardConfig(objective="target", ensemble_size=2, use_actions=False)
    ens = RewardEnsemble(gym.spaces.Box(-np.inf, np.inf, (3,)), gym.spaces.Box(-1, 1, (1,)), cfg, seed=0)
    stats = RewardTrainer(ens, cfg, seed=0).fit(
        PreferenceData(np.arange(n), obs_l, acts, obs_r, acts, answers, true), epochs=60)
    pred = ens.clip_returns(obs_l, acts).mean(0)
    assert np.corrcoef(pred, true[:, 0])[0, 1] > 0.95
    assert stats.train_loss < 0.2  # squared error in units of the return std
    with pytest.raises(ValueError, match="true_returns"):
        RewardTrainer(ens, cfg).fit(PreferenceData(np.arange(n), obs_l, acts, obs_r, acts, answers), epochs=1)
