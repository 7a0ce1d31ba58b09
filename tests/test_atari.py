"""Atari (ALE) from pixels: preprocessing, the score band, one continuous episode, the clip pool on disk, and
a tiny Pong run through the CLI."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from prefrl.clips import ClipRecorder, load_clip_arrays
from prefrl.config import EnvConfig
from prefrl.envs import EnvError, make_env, make_vec_env

PONG = EnvConfig(env="ALE/Pong-v5", fixed_horizon=False, n_envs=1)
SCORE_ROWS_84 = 10  # rows 0-23 of the 210-row screen, resized to 84 rows
SCORE_ROWS_RGB = 24


def play(env, steps: int, seed: int = 0):
    """Random play with real points scored: (observations, rendered frames) of every step."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, frames = [obs], [env.render()]
    for _ in range(steps):
        obs, *_ = env.step(env.action_space.sample())
        observations.append(obs)
        frames.append(env.render())
    return np.stack(observations), np.stack(frames)


def test_preprocessed_observations_are_stacks_of_84x84_grey_frames():
    env = make_env(PONG)
    assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        nxt, *_ = env.step(env.action_space.sample())
        np.testing.assert_array_equal(nxt[:-1], obs[1:])  # a sliding window of frames, newest last
        obs = nxt


def test_score_area_is_black_for_the_agent_the_reward_model_and_people():
    """Paper A.2: the score is replaced by a constant black band; everything else is left as it was."""
    blanked, frames = play(make_env(PONG, render=True), 400)
    plain, plain_frames = play(make_env(EnvConfig(env="ALE/Pong-v5", fixed_horizon=False, blank_score=False),
                                        render=True), 400)
    assert not blanked[:, :, :SCORE_ROWS_84].any() and not frames[:, :SCORE_ROWS_RGB].any()
    # the score really was there (digits change as points are scored) and the rest is untouched
    assert len({plain_frames[i, :SCORE_ROWS_RGB].tobytes() for i in range(len(plain_frames))}) > 1
    np.testing.assert_array_equal(blanked[:, :, SCORE_ROWS_84:], plain[:, :, SCORE_ROWS_84:])
    np.testing.assert_array_equal(frames[:, SCORE_ROWS_RGB:], plain_frames[:, SCORE_ROWS_RGB:])
    assert frames[:, SCORE_ROWS_RGB:34].min() > 0  # the top wall below the band stays visible


def test_games_without_a_known_score_area_need_a_flag():
    with pytest.raises(EnvError, match="no score area is known for ALE/Qbert-v5.*--no-blank-score"):
        make_env(EnvConfig(env="ALE/Qbert-v5", fixed_horizon=False))
    make_env(EnvConfig(env="ALE/Qbert-v5", fixed_horizon=False, blank_score=False)).close()


def test_no_life_loss_is_signalled():
    env = make_env(EnvConfig(env="ALE/Breakout-v5", fixed_horizon=False))
    env.reset(seed=0)
    env.action_space.seed(0)
    lives = []
    for _ in range(3000):
        _, _, terminated, _, info = env.step(env.action_space.sample())
        lives.append(info["lives"])
        if terminated:
            break
    assert lives[0] > min(lives) and terminated and lives[-1] == 0  # lives were lost; only the game end terminates


def test_one_continuous_episode_logs_each_game():
    venv = make_vec_env(EnvConfig(env="ALE/Pong-v5", fixed_horizon=False, continuous_episode=True, n_envs=1), seed=0)
    venv.reset()
    games = []
    for _ in range(6000):
        _, _, dones, infos = venv.step(np.array([venv.action_space.sample()]))
        assert not dones[0]  # the game ended and restarted underneath; PPO never sees an end
        if "episode" in infos[0]:
            games.append(infos[0]["episode"]["r"])
            break
    venv.close()
    assert games and -21 <= games[0] < 0  # a random player loses the game, and the score is logged


def test_clip_pool_lives_on_disk_and_is_bounded(tmp_path):
    venv = make_vec_env(EnvConfig(env="ALE/Pong-v5", fixed_horizon=False, continuous_episode=True, n_envs=2),
                        seed=0, render=True)
    rec = ClipRecorder(venv, clip_length=10, pool_size=5, record_frames=True, spill_dir=tmp_path / "pool")
    rec.reset()
    for _ in range(60):
        rec.step(np.array([venv.action_space.sample() for _ in range(2)]))
    assert len(rec.pool) == 5 and len(list((tmp_path / "pool").iterdir())) == 5  # evicted clips' files are gone
    clip = rec.pool[-1]
    assert clip._obs is None and clip._frames is None  # only actions and rewards stay in memory
    assert clip.obs.shape == (10, 4, 84, 84) and clip.obs.dtype == np.uint8
    assert clip.frames.shape == (10, 210, 160, 3)
    rec.close()
    assert not (tmp_path / "pool").exists()


def test_pong_through_the_cli(tmp_path):
    """A few hundred steps of real Pong with the paper's preset, a playable clip, and a fitted CNN ensemble."""
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "prefrl", "train", "--env", "ALE/Pong-v5", "--run-dir", str(run),
                        "--total-timesteps", "256", "--n-envs", "2", "--n-steps", "64", "--minibatch-size", "64",
                        "--total-labels", "6", "--pretrain-epochs", "2", "--epochs", "1", "--ensemble-size", "2",
                        "--eval-episodes", "1", "--render-clips", "--no-progress-bar"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["reward"]["arch"] == "cnn" and cfg["ppo"]["policy"] == "CnnPolicy"
    assert cfg["env"]["continuous_episode"] and cfg["reward"]["output_std"] == 0.05
    assert cfg["feedback"]["initial_fraction"] == 1.0  # 500 initial labels, capped by the 6 asked for
    assert cfg["feedback"]["clip_length"] == 25 and cfg["feedback"]["video_fps"] == 15
    assert "labels used:       6" in r.stdout
    videos = sorted((run / "clips").glob("*.mp4"))
    assert videos and not (run / "clip_pool").exists()
    video = iio.imread(videos[0])  # H.264 that a browser and imageio play
    assert video.shape[0] == 25 and video.shape[3] == 3 and not video[:, :2 * SCORE_ROWS_RGB - 2].any()
    obs, acts, rews = load_clip_arrays(videos[0].with_suffix(".npz"))
    assert obs.shape == (25, 4, 84, 84) and obs.dtype == np.uint8 and acts.shape == (25,)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["labels"] == 6 and summary["eval_returns"][0] <= 0
