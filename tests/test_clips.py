import re
import subprocess

import imageio_ffmpeg
import numpy as np

from prefrl.clips import Clip, ClipRecorder, load_clip_arrays, save_clip, write_video
from prefrl.config import EnvConfig
from prefrl.envs import make_vec_env


def step_random(venv, n):
    venv.reset()
    for _ in range(n):
        venv.step(np.array([venv.action_space.sample() for _ in range(venv.num_envs)]))


def test_clips_have_fixed_length_and_true_rewards():
    rec = ClipRecorder(make_vec_env(EnvConfig(env="Pendulum-v1", n_envs=2), seed=0), clip_length=25, pool_size=100)
    step_random(rec, 200)  # one Pendulum episode per env = 8 clips each
    assert rec.take_new() == 16 and len(rec.pool) == 16
    for clip in rec.pool:
        assert clip.obs.shape == (25, 3) and clip.acts.shape == (25, 1) and clip.rews.shape == (25,)
        assert np.all(clip.rews <= 0)  # Pendulum's true reward is a cost
    assert rec.take_new() == 0


def test_clips_never_span_episode_ends():
    # 200-step episodes cut into 30-step clips: 6 clips per episode, the 20-step tail is dropped
    rec = ClipRecorder(make_vec_env(EnvConfig(env="Pendulum-v1", n_envs=1), seed=0), clip_length=30, pool_size=100)
    step_random(rec, 400)
    assert len(rec.pool) == 12


def test_pool_is_bounded():
    rec = ClipRecorder(make_vec_env(EnvConfig(env="Pendulum-v1", n_envs=1), seed=0), clip_length=10, pool_size=5)
    step_random(rec, 200)
    assert len(rec.pool) == 5


def test_recorded_observation_precedes_action():
    venv = make_vec_env(EnvConfig(env="Pendulum-v1", n_envs=1), seed=0)
    rec = ClipRecorder(venv, clip_length=5, pool_size=10)
    first = rec.reset()
    rec.step(np.array([[0.5]]))
    for _ in range(4):
        rec.step(np.array([[0.0]]))
    clip = rec.pool[0]
    np.testing.assert_allclose(clip.obs[0], first[0])
    assert clip.acts[0, 0] == 0.5


def test_save_and_load_round_trip(tmp_path):
    clip = Clip("abc", 7, np.ones((4, 3), np.float32), np.zeros((4, 1), np.float32), np.arange(4, dtype=np.float32))
    npz, video = save_clip(clip, tmp_path)
    assert video is None
    obs, acts, rews = load_clip_arrays(tmp_path / npz)
    np.testing.assert_array_equal(rews, clip.rews)
    assert not list(tmp_path.glob("clips/.*"))  # no temp files left


def test_video_is_h264_yuv420p_even_size(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(10, 61, 45, 3), dtype=np.uint8)
    write_video(frames, tmp_path / "v.mp4")
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(tmp_path / "v.mp4")],
                           capture_output=True, text=True).stderr
    assert "h264" in probe and "yuv420p" in probe
    w, h = map(int, re.search(r"yuv420p.*?, (\d+)x(\d+)", probe).groups())
    assert w % 2 == 0 and h % 2 == 0 and max(w, h) >= 256  # small renders are upscaled


def test_rendered_clips_carry_frames(tmp_path):
    rec = ClipRecorder(make_vec_env(EnvConfig(env="CartPole-v1", n_envs=1), seed=0, render=True), clip_length=8,
                       pool_size=10, record_frames=True)
    step_random(rec, 20)
    clip = rec.pool[0]
    assert clip.frames.shape[0] == 8 and clip.frames.dtype == np.uint8 and max(clip.frames.shape[1:3]) <= 256
    _, video = save_clip(clip, tmp_path)
    assert (tmp_path / video).stat().st_size > 1000
