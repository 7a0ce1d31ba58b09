"""The CLI end to end, in subprocesses, with tiny budgets."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["--total-timesteps", "2048", "--n-steps", "256", "--n-envs", "2", "--total-labels", "24",
        "--clip-length", "20", "--eval-episodes", "2", "--epochs", "5", "--pretrain-epochs", "10",
        "--no-progress-bar"]


def prefrl(*args, cwd=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "prefrl", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def progress_steps(run: Path) -> list[int]:
    with open(run / "progress.csv") as fh:
        return [int(r["env_steps"]) for r in csv.DictReader(fh)]


def test_tiny_run_writes_a_complete_run_folder(tmp_path):
    run = tmp_path / "run"
    r = prefrl("train", "--env", "Pendulum-v1", "--run-dir", str(run), *TINY)
    assert r.returncode == 0, r.stderr
    assert "final true return" in r.stdout and "labels used:       24" in r.stdout
    for name in ("config.json", "labels.sqlite", "progress.csv", "learning_curve.png", "summary.json"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["feedback"]["total_labels"] == 24
    assert list((run / "clips").glob("*.npz")) and list((run / "tb").iterdir())
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
    assert {"ppo.zip", "ensemble.pt", "reward_trainer.pt", "state.json"} <= {p.name for p in latest.iterdir()}
    steps = progress_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 2048
    with open(run / "progress.csv") as fh:  # 200-step episodes end in every 512-step rollout
        learned = [float(r["learned_episode_return"]) for r in csv.DictReader(fh)]
    assert learned and all(x == x and x != 0 for x in learned), learned  # not NaN, not the unfitted 0
    with sqlite3.connect(run / "labels.sqlite") as db:
        rows = db.execute("SELECT p.left_clip, p.right_clip, p.rule, l.answer, l.labeler, l.model_version "
                          "FROM labels l JOIN pairs p ON p.id = l.pair_id").fetchall()
    assert len(rows) == 24
    assert {r[4] for r in rows} == {"oracle"} and {r[2] for r in rows} <= {"random", "disagreement"}
    assert any(r[5] > 0 for r in rows)  # later labels were chosen with a fitted reward model


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCarContinuous-v0"])
def test_other_classic_control_envs(tmp_path, env_id):
    r = prefrl("train", "--env", env_id, "--run-dir", str(tmp_path / "r"), *TINY)
    assert r.returncode == 0, r.stderr


def test_semi_supervised_fit_runs_on_discrete_actions(tmp_path):
    """--semi-ratio hands the fit the recorder's pool (Acrobot: integer actions, one-hot in the model)."""
    run = tmp_path / "r"
    r = prefrl("train", "--env", "Acrobot-v1", "--run-dir", str(run), *TINY, "--semi-ratio", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["reward"]["semi_ratio"] == 2
    assert json.loads((run / "summary.json").read_text())["phase_seconds"]["refit"] > 0


def test_true_reward_baseline(tmp_path):
    r = prefrl("train", "--reward-source", "true", "--run-dir", str(tmp_path / "r"), *TINY)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "r" / "labels.sqlite").exists()


def test_resume_after_kill_loses_nothing(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--run-dir", str(run), *TINY, "--total-timesteps", "6144", "--checkpoint-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "prefrl", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "latest").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(run / "labels.sqlite") as db:
        before = db.execute("SELECT id, pair_id, answer FROM labels ORDER BY id").fetchall()
    assert before
    r = prefrl("train", "--resume", str(run), "--no-progress-bar")
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(run / "labels.sqlite") as db:
        after = db.execute("SELECT id, pair_id, answer FROM labels ORDER BY id").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert after[: len(before)] == before and len(after) == 24
    steps = progress_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 6144
    assert steps == list(range(512, 6145, 512))
    again = prefrl("train", "--resume", str(run), "--no-progress-bar")
    assert again.returncode == 0 and "already finished" in again.stderr


@pytest.mark.parametrize("args,message", [
    (["--env", "CartPol-v1"], "unknown env id 'CartPol-v1'; did you mean CartPole-v1"),
    (["--env", "FrozenLake-v1"], "Discrete observation space"),
    (["--total-labels", "0"], "--total-labels must be > 0"),
    (["--total-labels", "-3"], "--total-labels must be > 0"),
    (["--clip-length", "500"], "longer than an episode"),
    (["--n-envs", "0"], "--n-envs must be >= 1"),
])
def test_bad_input_one_line_error_and_nothing_written(tmp_path, args, message):
    run = tmp_path / "run"
    r = prefrl("train", "--run-dir", str(run), *TINY, *args)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not run.exists()


def test_existing_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    r = prefrl("train", "--run-dir", str(run), *TINY)
    assert r.returncode != 0 and "exists; continue it with --resume" in r.stderr
    assert [p.name for p in run.iterdir()] == ["keep.txt"]


def test_help_explains_flags():
    r = prefrl("train", "--help")
    assert r.returncode == 0
    for flag in ("--env", "--total-labels", "--schedule", "--sampler", "--teacher", "--ensemble-size",
                 "--clip-length", "--fixed-horizon", "--torch-threads", "--random-answer-prob"):
        assert flag in r.stdout


def test_labels_and_reward_model_are_reused_without_new_labels(tmp_path):
    src = tmp_path / "src"
    assert prefrl("train", "--run-dir", str(src), *TINY).returncode == 0
    r = prefrl("train", "--run-dir", str(tmp_path / "from_labels"), *TINY, "--labels", str(src / "labels.sqlite"))
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "from_labels" / "labels.sqlite") as db:
        copied = db.execute("SELECT l.answer, l.labeler, p.left_clip, p.right_clip FROM labels l "
                            "JOIN pairs p ON p.id = l.pair_id ORDER BY l.id").fetchall()
    with sqlite3.connect(src / "labels.sqlite") as db:
        original = db.execute("SELECT l.answer, l.labeler, p.left_clip, p.right_clip FROM labels l "
                              "JOIN pairs p ON p.id = l.pair_id WHERE l.answer != 'cant_tell' ORDER BY l.id").fetchall()
    assert copied == original  # the same labels, with provenance, and none asked anew
    r = prefrl("train", "--run-dir", str(tmp_path / "from_model"), *TINY, "--reward-model", str(src),
               "--hidden", "8", "--output-mean", "-1.5", "--std-weight", "0.5")
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "from_model" / "labels.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
    reward = json.loads((tmp_path / "from_model" / "config.json").read_text())["reward"]
    assert reward["hidden"] == [64, 64]  # the source's network, whatever the flags say
    assert reward["output_mean"] == -1.5 and reward["std_weight"] == 0.5  # how PPO sees it: this run's flags
    bad = prefrl("train", "--run-dir", str(tmp_path / "x"), *TINY, "--env", "CartPole-v1", "--reward-model", str(src))
    assert bad.returncode != 0 and "trained on Pendulum-v1, not CartPole-v1" in bad.stderr


def test_human_labeler_with_oracle_fill_writes_videos_and_mixes_labels(tmp_path):
    run = tmp_path / "run"
    r = prefrl("train", "--run-dir", str(run), *TINY, "--labeler", "human", "--oracle-fill")
    assert r.returncode == 0, r.stderr
    assert f"prefrl app {run}" in r.stderr
    assert list((run / "clips").glob("*.mp4"))
    with sqlite3.connect(run / "labels.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM clips WHERE video IS NULL").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] > 0


def test_checkpoint_policy_replays_the_runs_own_evaluation(tmp_path):
    """The weights-only policy rebuilt from a run folder scores exactly what the run reported, and renders."""
    import imageio.v3 as iio

    from prefrl.evaluate import checkpoint_policy, evaluate, policy_video

    run = tmp_path / "run"
    assert prefrl("train", "--env", "Pendulum-v1", "--run-dir", str(run), *TINY).returncode == 0
    policy, cfg = checkpoint_policy(run)
    reported = json.loads((run / "summary.json").read_text())["eval_returns"]
    assert evaluate(policy, cfg.env, len(reported)).tolist() == pytest.approx(reported)
    policy_video(run, tmp_path / "v.mp4", steps=30)
    assert iio.imread(tmp_path / "v.mp4").shape[0] == 30


def test_an_interrupt_the_interpreter_swallowed_still_stops_the_run(tmp_path):
    """A SIGINT landing in a fork's at-fork hook (ffmpeg per clip video) is printed, not raised; the loop must
    stop anyway at its next step, keep what it wrote, and resume. Simulated by remembering the interrupt only."""
    from prefrl import loop
    from prefrl.cli import parse_train_config

    run = tmp_path / "run"
    cfg = parse_train_config(["--run-dir", str(run), *TINY])
    loop._INTERRUPTED.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.train(cfg)
    finally:
        loop._INTERRUPTED.clear()
    assert (run / "config.json").exists() and (run / "labels.sqlite").exists()
    r = prefrl("train", "--resume", str(run), "--no-progress-bar")
    assert r.returncode == 0, r.stderr


def test_initial_policy_redraws_gsde_noise_so_first_clips_vary_in_action(tmp_path):
    """gSDE's noise matrix is fixed until redrawn; the first labels must not all show the same torque."""
    import numpy as np

    from prefrl.config import TrainConfig
    from prefrl.loop import Trainer

    cfg = TrainConfig(seed=0, results_dir=tmp_path, progress_bar=False).validate()
    assert cfg.ppo.use_sde
    run = tmp_path / "run"
    run.mkdir()
    trainer = Trainer(cfg, run, resuming=False)
    trainer._rollout_initial_policy(clips_wanted=60)
    means = np.array([float(np.mean(c.acts)) for c in trainer.recorder.pool])
    assert len(means) >= 60
    # one fixed draw gave every clip of this seed a mean torque of +0.9..+2 (all one sign)
    assert (means > 0.5).any() and (means < -0.5).any(), np.round(means, 2)
    assert abs(means.mean()) < 0.5
