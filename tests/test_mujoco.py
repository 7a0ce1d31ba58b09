"""MuJoCo from states: the paper's preset, the true reward without torques, termination as a penalty, headless
rendering (and its clear error), a tiny Hopper run through the CLI and the benchmark's plumbing."""

import csv
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from prefrl.cli import parse_train_config
from prefrl.config import EnvConfig
from prefrl.envs import EnvError, MujocoStateRenderer, make_env, make_vec_env

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_preset_has_the_papers_settings_and_flags_override_it():
    cfg = parse_train_config(["--env", "Hopper-v5"])
    fb, env = cfg.feedback, cfg.env
    assert fb.clip_length == 60 and fb.video_fps == 40  # 1.5 s = 187 steps of 8 ms, clamped to the paper's 15..60
    assert fb.initial_fraction == 0.25 and fb.rate_constant == 2e6 and fb.total_labels == 700
    assert cfg.ppo.ent_coef == 0.01 and cfg.reward.hidden == (64, 64) and cfg.reward.output_std == 1.0
    assert env.hidden_reward_terms == ("reward_ctrl",) and not env.terminate_when_unhealthy and env.fixed_horizon
    assert parse_train_config(["--env", "HalfCheetah-v5"]).feedback.clip_length == 30  # dt 0.05 s
    cfg = parse_train_config(["--env", "Hopper-v5", "--clip-length", "20", "--ent-coef", "0.0"])
    assert cfg.feedback.clip_length == 20 and cfg.ppo.ent_coef == 0.0
    assert parse_train_config(["--env", "Pendulum-v1"]) == parse_train_config([])  # other envs: no preset


def test_true_reward_leaves_out_the_torque_cost():
    env = make_env(EnvConfig(env="HalfCheetah-v5", hidden_reward_terms=("reward_ctrl",)))
    env.reset(seed=0)
    for _ in range(5):
        _, rew, _, _, info = env.step(env.action_space.high)  # full torque: a large control cost
        assert rew == pytest.approx(info["reward_forward"]) and info["env_reward"] < rew


def test_unknown_reward_term_names_the_known_ones():
    env = make_env(EnvConfig(env="HalfCheetah-v5", hidden_reward_terms=("reward_torque",)))
    env.reset(seed=0)
    with pytest.raises(EnvError, match="no reward term 'reward_torque'.*reward_ctrl.*--hidden-reward-terms"):
        env.step(env.action_space.sample())


def test_a_fall_is_a_penalty_not_an_episode_end():
    env = make_env(EnvConfig(env="Hopper-v5", terminate_when_unhealthy=False))
    env.reset(seed=0)
    env.action_space.seed(0)
    survive, steps = [], 0
    while True:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        survive.append(info["reward_survive"])
        steps += 1
        assert not terminated
        if truncated:
            break
    assert steps == 1000 and survive[0] == 1.0 and survive[-1] == 0.0  # fallen: no survive bonus, still going


def test_fallen_reward_zero_pays_nothing_while_down():
    cfgs = [EnvConfig(env="Hopper-v5", terminate_when_unhealthy=False, hidden_reward_terms=("reward_ctrl",),
                      fallen_reward=kind) for kind in ("kept", "zero")]
    runs = []
    for cfg in cfgs:
        env = make_env(cfg)
        env.reset(seed=0)
        env.action_space.seed(0)
        runs.append([env.step(env.action_space.sample()) for _ in range(200)])
    kept, zero = ([step[1] for step in run] for run in runs)
    healthy = [step[4]["healthy"] for step in runs[1]]
    assert healthy[0] and not healthy[-1]  # the random policy falls within 200 steps
    for k, z, h in zip(kept, zero, healthy):
        assert z == (pytest.approx(k) if h else 0.0)
    assert any(k != 0.0 for k, h in zip(kept, healthy) if not h)  # `kept` still pays a fallen robot's motion


def test_fallen_reward_zero_needs_a_robot_that_can_fall():
    with pytest.raises(EnvError, match="no healthy state.*drop --fallen-reward zero"):
        make_env(EnvConfig(env="HalfCheetah-v5", fallen_reward="zero"))
    r = subprocess.run([sys.executable, "-m", "prefrl", "train", "--env", "Hopper-v5", "--fallen-reward", "zero",
                        "--terminate-when-unhealthy", "--total-timesteps", "10"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode != 0 and "add --no-terminate-when-unhealthy" in r.stderr


def test_mujoco_gl_defaults_to_egl():
    code = "import os; import prefrl.envs; print(os.environ['MUJOCO_GL'])"
    env = {k: v for k, v in ENV.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() == "egl", r.stderr


@pytest.mark.skipif(bool(os.environ.get("DISPLAY")), reason="GLFW renders when there is a display")
def test_no_display_is_a_clear_error_before_the_run_starts(tmp_path):
    r = subprocess.run([sys.executable, "-m", "prefrl", "train", "--env", "Hopper-v5", "--render-clips",
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
                       env=dict(ENV, MUJOCO_GL="glfw"))
    assert r.returncode == 1
    assert "prefrl: error: MuJoCo cannot render clips here (glfw:" in r.stderr and "MUJOCO_GL=egl" in r.stderr
    assert not (tmp_path / "run").exists()


def test_clips_are_rendered_from_physics_states_as_the_env_renders_them():
    venv = make_vec_env(EnvConfig(env="Hopper-v5", n_envs=1), seed=0, render=True)
    venv.reset()
    states = [venv.reset_infos[0]["physics_state"]]
    for _ in range(3):
        *_, infos = venv.step(np.array([venv.action_space.sample()]))
        states.append(infos[0]["physics_state"])
    live = venv.envs[0].render()  # the env itself, at the last state
    frames = MujocoStateRenderer("Hopper-v5")(np.stack(states))
    venv.close()
    assert frames.shape == (4, 256, 256, 3) and frames.dtype == np.uint8
    diff = np.abs(frames[-1].astype(int) - live.astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() > 0.99  # the same picture (a few pixels' rounding aside)
    assert not np.array_equal(frames[0], frames[-1])


def test_hopper_through_the_cli(tmp_path):
    """A few hundred steps of Hopper with the paper's preset and a playable clip rendered headless."""
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "prefrl", "train", "--env", "Hopper-v5", "--run-dir", str(run),
                        "--total-timesteps", "512", "--n-envs", "2", "--n-steps", "128", "--total-labels", "2",
                        "--clip-length", "15", "--pretrain-epochs", "5", "--eval-episodes", "1", "--render-clips",
                        "--no-progress-bar"], capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["env"]["hidden_reward_terms"] == ["reward_ctrl"] and cfg["ppo"]["ent_coef"] == 0.01
    videos = sorted((run / "clips").glob("*.mp4"))
    assert videos and "labels used:       2" in r.stdout
    video = iio.imread(videos[0])
    assert video.shape == (15, 256, 256, 3) and video.std() > 1  # a picture, not a blank
    assert not list(tmp_path.glob("**/MUJOCO_LOG.TXT")) and not (run / "clip_pool").exists()


def test_mujoco_bench_plumbing(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "prefrl", "bench", "mujoco", "--envs", "HalfCheetah-v5", "--seeds", "1",
                        "--steps", "512", "--methods", "ppo_true,pref_4", "--workers", "2", "--out", str(out), "--",
                        "--n-envs", "2", "--n-steps", "128", "--eval-episodes", "1", "--pretrain-epochs", "5",
                        "--clip-length", "15"],
                       capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "mujoco.csv")))
    assert [(row["env"], row["method"]) for row in rows] == [("HalfCheetah-v5", "ppo_true"), ("HalfCheetah-v5", "pref_4")]
    assert int(rows[1]["labels"]) == 4 and int(rows[1]["steps"]) == 512 and float(rows[1]["steps_per_second"]) > 0
    md = (out / "mujoco.md").read_text()
    assert "## HalfCheetah-v5" in md and "PPO-true steps/s ÷ this" in md and (out / "mujoco.png").exists()
