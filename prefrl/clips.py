"""Clips: fixed-length segments of the rollouts, and their files in the run folder.

`ClipRecorder` sits under `LearnedReward`, so the rewards it records are the true
ones. It keeps only a bounded pool of recent clips in memory; the clips chosen for
labelling are written to `clips/<id>.npz` (and `.mp4` when frames are rendered).
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from prefrl.envs import action_array

MAX_FRAME_SIDE = 256
"""Frames are downsampled (by an integer stride) to at most this many pixels a side in memory."""
MIN_VIDEO_SIDE = 256
"""Videos of smaller renders are upscaled (nearest neighbour) so a person can see them."""


@dataclass
class Clip:
    """One segment of one env's rollout. obs (T, *obs_shape), acts (T, ...), rews (T,) true rewards."""

    id: str
    env_step: int
    obs: np.ndarray
    acts: np.ndarray
    rews: np.ndarray
    frames: Optional[np.ndarray] = field(default=None, repr=False)  # (T, H, W, 3) uint8

    @property
    def true_return(self) -> float:
        return float(self.rews.sum())

    def __len__(self) -> int:
        return len(self.rews)


class ClipRecorder(VecEnvWrapper):
    """Cut each env's stream into non-overlapping clips that never span an episode end."""

    def __init__(self, venv: VecEnv, clip_length: int, pool_size: int, record_frames: bool = False):
        super().__init__(venv)
        self.clip_length = clip_length
        self.record_frames = record_frames
        # Frames are large: cap the pool so memory stays flat over long runs.
        self.pool: deque[Clip] = deque(maxlen=min(pool_size, 200) if record_frames else pool_size)
        self.new_clips = 0
        self.steps = 0  # env steps seen by this recorder, across all envs
        n, T = venv.num_envs, clip_length
        self._obs_buf = np.zeros((n, T, *venv.observation_space.shape), dtype=np.float32)
        act = action_array(venv.action_space, venv.action_space.sample())  # shape and dtype as stored
        self._act_buf = np.zeros((n, T, *act.shape[1:]), dtype=act.dtype)
        self._rew_buf = np.zeros((n, T), dtype=np.float32)
        self._frames: list[list[np.ndarray]] = [[] for _ in range(n)]
        self._cursor = np.zeros(n, dtype=np.int64)
        self._obs: Optional[np.ndarray] = None
        self._actions: Optional[np.ndarray] = None
        self._current_frames: Optional[list[np.ndarray]] = None

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._obs = np.asarray(obs)
        self._cursor[:] = 0
        for f in self._frames:
            f.clear()
        self._current_frames = self._grab_frames()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.venv.step_async(actions)

    def step_wait(self):
        obs, rews, dones, infos = self.venv.step_wait()
        acts = action_array(self.action_space, self._actions)
        c = self._cursor
        idx = np.arange(self.num_envs)
        self._obs_buf[idx, c] = self._obs
        self._act_buf[idx, c] = acts
        self._rew_buf[idx, c] = rews
        if self.record_frames:
            for i in range(self.num_envs):
                self._frames[i].append(self._current_frames[i])
        c += 1
        self.steps += self.num_envs
        for i in np.flatnonzero(c == self.clip_length):
            self._emit(i)
        # A clip cut short by an episode end is dropped: clips never span two episodes.
        c[dones] = 0
        for i in np.flatnonzero(dones):
            self._frames[i].clear()
        self._obs = np.asarray(obs)
        if self.record_frames:
            self._current_frames = self._grab_frames()
        return obs, rews, dones, infos

    def _emit(self, i: int) -> None:
        frames = np.stack(self._frames[i]) if self.record_frames else None
        self.pool.append(Clip(id=uuid.uuid4().hex[:16], env_step=self.steps, obs=self._obs_buf[i].copy(),
                              acts=self._act_buf[i].copy(), rews=self._rew_buf[i].copy(), frames=frames))
        self.new_clips += 1
        self._cursor[i] = 0
        self._frames[i].clear()

    def _grab_frames(self) -> Optional[list[np.ndarray]]:
        if not self.record_frames:
            return None
        return [_shrink(np.asarray(f)) for f in self.venv.get_images()]

    def take_new(self) -> int:
        """Number of clips emitted since the last call (they are the newest in `pool`)."""
        n, self.new_clips = min(self.new_clips, len(self.pool)), 0
        return n


def _shrink(frame: np.ndarray) -> np.ndarray:
    stride = max(1, int(np.ceil(max(frame.shape[:2]) / MAX_FRAME_SIDE)))
    return np.ascontiguousarray(frame[::stride, ::stride, :3])


def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def save_clip(clip: Clip, run_dir: Path) -> tuple[str, Optional[str]]:
    """Write clips/<id>.npz (and .mp4 when the clip has frames); returns paths relative to run_dir."""
    clip_dir = run_dir / "clips"
    clip_dir.mkdir(exist_ok=True)
    npz = clip_dir / f"{clip.id}.npz"
    tmp = _atomic_path(npz)
    with open(tmp, "wb") as fh:
        np.savez(fh, obs=clip.obs, acts=clip.acts, rews=clip.rews, env_step=clip.env_step)
    os.replace(tmp, npz)
    video = None
    if clip.frames is not None:
        mp4 = clip_dir / f"{clip.id}.mp4"
        write_video(clip.frames, mp4)
        video = str(mp4.relative_to(run_dir))
    return str(npz.relative_to(run_dir)), video


def load_clip_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(obs, acts, rews) of a saved clip."""
    with np.load(path) as data:
        return data["obs"], data["acts"], data["rews"]


def write_video(frames: np.ndarray, path: Path, fps: int = 20) -> None:
    """H.264 (libx264, yuv420p, +faststart) MP4 that Chromium plays; written atomically."""
    import imageio_ffmpeg

    frames = np.asarray(frames, dtype=np.uint8)
    h, w = frames.shape[1:3]
    scale = max(1, int(np.ceil(MIN_VIDEO_SIDE / max(h, w))))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = frames.shape[1:3]
    frames = frames[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sizes
    h, w = frames.shape[1:3]
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, output_params=["-movflags", "+faststart"])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    os.replace(tmp, path)
