"""Clips: fixed-length segments of the rollouts, and their files in the run folder.

`ClipRecorder` sits under `LearnedReward`, so the rewards it records are the true
ones. It keeps a bounded pool of recent clips; the clips chosen for labelling are
written to `clips/<id>.npz` (and `.mp4` when frames are rendered).

Memory stays flat on image envs: a pool clip whose observations and frames are big
(Atari: 25 stacks of 4x84x84 plus 25 RGB frames, ~3 MB) lives in `<run>/clip_pool/<id>.npz`
and only its actions and true rewards stay in memory; the file goes when the clip leaves
the pool. Frame stacks are stored once per frame (T+3 frames, not 4T) and rebuilt on load.
MuJoCo clips keep physics states instead of frames and are rendered only when saved
for labelling (a frame costs ~30-100 ms on CPU; rendering every step would cap
training at ~10 steps/s).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import deque
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from prefrl.envs import action_array

MAX_FRAME_SIDE = 256
"""Frames are downsampled (by an integer stride) to at most this many pixels a side in memory."""
MIN_VIDEO_SIDE = 256
"""Videos of smaller renders are upscaled (nearest neighbour) so a person can see them."""
SPILL_BYTES = 64 * 1024
"""A pool clip whose observations and frames take more than this goes to disk (Pendulum's take ~0.4 KB)."""
SPILL_BUDGET = 2 * 1024**3
"""Disk bytes the spilled pool may take; the pool holds fewer clips than --clip-pool when they would not fit."""
IN_MEMORY_FRAME_CLIPS = 200
"""Without a spill folder, a pool with frames keeps at most this many clips."""

StateRenderer = Callable[[np.ndarray], np.ndarray]
"""Physics states (T, S) -> RGB frames (T, H, W, 3) uint8."""


class Clip:
    """One segment of one env's rollout: obs (T, *obs_shape), acts (T, ...), rews (T,) true rewards, and for
    people's videos frames (T, H, W, 3) uint8, or the physics states (T, S) to render them from.

    `obs` and `frames` are loaded from `file` when the clip was spilled to disk.
    """

    def __init__(self, id: str, env_step: int, obs: Optional[np.ndarray], acts: np.ndarray, rews: np.ndarray,
                 frames: Optional[np.ndarray] = None, *, file: Optional[Path] = None,
                 states: Optional[np.ndarray] = None, renderer: Optional[StateRenderer] = None):
        self.id, self.env_step, self.acts, self.rews = id, env_step, acts, rews
        self._obs, self._frames, self.file = obs, frames, file
        self.states, self.renderer = states, renderer
        self.has_frames = frames is not None or states is not None and renderer is not None

    @property
    def obs(self) -> np.ndarray:
        if self._obs is not None:
            return self._obs
        if self.file is None:
            raise ValueError(f"clip {self.id} has no observations")
        with np.load(self.file) as data:
            return _unpack(data)

    @property
    def frames(self) -> Optional[np.ndarray]:
        if self._frames is not None:
            return self._frames
        if self.states is not None and self.renderer is not None:
            return self.renderer(self.states)
        if self.file is not None:
            with np.load(self.file) as data:
                return data["frames"] if "frames" in data else None
        return None

    @property
    def true_return(self) -> float:
        return float(self.rews.sum())

    def discard(self) -> None:
        """Delete the spilled file (the clip is leaving the pool)."""
        if self.file is not None:
            self.file.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self.rews)

    def __repr__(self) -> str:
        return f"Clip(id={self.id!r}, env_step={self.env_step}, len={len(self)}, return={self.true_return:.3g})"


class _Pool(deque):
    """A bounded deque of clips that deletes a clip's spilled file when the clip falls out."""

    def append(self, clip: Clip) -> None:
        if self.maxlen is not None and len(self) == self.maxlen:
            self[0].discard()
        super().append(clip)


class ClipRecorder(VecEnvWrapper):
    """Cut each env's stream into non-overlapping clips that never span an episode end.

    record_frames: keep RGB frames for videos (from `get_images`, or with `renderer`, physics states from
    info["physics_state"] rendered when a clip is saved). spill_dir: where big clips live while in the pool.
    """

    def __init__(self, venv: VecEnv, clip_length: int, pool_size: int, record_frames: bool = False,
                 spill_dir: Optional[Path] = None, renderer: Optional[StateRenderer] = None):
        super().__init__(venv)
        self.clip_length = clip_length
        self.record_frames = record_frames
        self.renderer = renderer if record_frames else None
        n, T = venv.num_envs, clip_length
        space = venv.observation_space
        self.obs_dtype = np.uint8 if space.dtype == np.uint8 else np.float32  # images stay bytes
        self._obs_buf = np.zeros((n, T, *space.shape), dtype=self.obs_dtype)
        act = action_array(venv.action_space, venv.action_space.sample())  # shape and dtype as stored
        self._act_buf = np.zeros((n, T, *act.shape[1:]), dtype=act.dtype)
        self._rew_buf = np.zeros((n, T), dtype=np.float32)
        self._frames: list[list[np.ndarray]] = [[] for _ in range(n)]
        self._cursor = np.zeros(n, dtype=np.int64)
        self._env_idx = np.arange(n)
        self._obs: Optional[np.ndarray] = None
        self._actions: Optional[np.ndarray] = None
        self._current_frames: Optional[list[np.ndarray]] = None
        self._state: list[Optional[np.ndarray]] = [None] * n

        grab = record_frames and self.renderer is None  # RGB frames of every step: always big
        obs_bytes = T * int(np.prod(space.shape)) * np.dtype(self.obs_dtype).itemsize
        self.spill_dir = spill_dir if spill_dir is not None and (grab or obs_bytes > SPILL_BYTES) else None
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)  # a killed run's leftovers: ours alone
            self.spill_dir.mkdir(parents=True)
        self.pool_size = pool_size
        capacity = min(pool_size, IN_MEMORY_FRAME_CLIPS) if grab and self.spill_dir is None else pool_size
        self.pool: _Pool = _Pool(maxlen=capacity)  # a spilled pool is resized to SPILL_BUDGET at its first clip
        self._sized = False
        self.new_clips = 0
        self.steps = 0  # env steps seen by this recorder, across all envs

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._obs = np.asarray(obs)
        self._cursor[:] = 0
        for f in self._frames:
            f.clear()
        if self.renderer is not None:
            self._state = [info.get("physics_state") for info in self._reset_infos()]
        self._current_frames = self._grab_frames()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.venv.step_async(actions)

    def step_wait(self):
        obs, rews, dones, infos = self.venv.step_wait()
        acts = action_array(self.action_space, self._actions)
        c = self._cursor
        idx = self._env_idx
        self._obs_buf[idx, c] = self._obs
        self._act_buf[idx, c] = acts
        self._rew_buf[idx, c] = rews
        if self.record_frames:
            for i in range(self.num_envs):
                self._frames[i].append(self._current_frames[i])
        c += 1
        self.steps += self.num_envs
        full = c == self.clip_length
        if full.any():  # the checks cost ~1 us, the loops over no index ~7 us each: most steps end no clip
            for i in np.flatnonzero(full):
                self._emit(i)
        # A clip cut short by an episode end is dropped: clips never span two episodes.
        if dones.any():
            c[dones] = 0
            for i in np.flatnonzero(dones):
                self._frames[i].clear()
        self._obs = np.asarray(obs)
        if self.renderer is not None:  # the state the next action starts from (a new episode's after a done)
            reset_infos = self._reset_infos() if dones.any() else None  # only needed after an episode end
            for i, info in enumerate(infos):
                self._state[i] = (reset_infos[i] if dones[i] else info).get("physics_state")
        if self.record_frames:
            self._current_frames = self._grab_frames()
        return obs, rews, dones, infos

    def _reset_infos(self) -> list[dict]:
        """The base VecEnv's infos of its latest resets (every wrapper has its own, empty, `reset_infos`)."""
        return list(getattr(self.venv.unwrapped, "reset_infos", None) or [{}] * self.num_envs)

    def _emit(self, i: int) -> None:
        clip_id = uuid.uuid4().hex[:16]
        obs, acts, rews = self._obs_buf[i].copy(), self._act_buf[i].copy(), self._rew_buf[i].copy()
        frames = states = None
        if self.renderer is not None:
            states = np.stack(self._frames[i])
        elif self.record_frames:
            frames = np.stack(self._frames[i])
        if self.spill_dir is not None:
            path = self.spill_dir / f"{clip_id}.npz"
            with open(path, "wb") as fh:  # uncompressed: ~1 ms a clip; the file lives only while in the pool
                np.savez(fh, **_pack(obs), **({} if frames is None else {"frames": frames}))
            if not self._sized:  # the first clip: now its size on disk is known
                self._sized = True
                self.pool = _Pool(self.pool, maxlen=max(2, min(self.pool_size, SPILL_BUDGET // path.stat().st_size)))
            clip = Clip(clip_id, self.steps, None, acts, rews, file=path, states=states, renderer=self.renderer)
            clip.has_frames = frames is not None or clip.has_frames
        else:
            clip = Clip(clip_id, self.steps, obs, acts, rews, frames, states=states, renderer=self.renderer)
        self.pool.append(clip)
        self.new_clips += 1
        self._cursor[i] = 0
        self._frames[i].clear()

    def _grab_frames(self) -> Optional[list]:
        if not self.record_frames:
            return None
        if self.renderer is not None:  # physics states now, frames when the clip is saved
            return list(self._state)
        return [_shrink(np.asarray(f)) for f in self.venv.get_images()]

    def take_new(self) -> int:
        """Number of clips emitted since the last call (they are the newest in `pool`)."""
        n, self.new_clips = min(self.new_clips, len(self.pool)), 0
        return n

    def close(self) -> None:
        for clip in self.pool:
            clip.discard()
        if hasattr(self.renderer, "close"):
            self.renderer.close()
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
        self.venv.close()


def _shrink(frame: np.ndarray) -> np.ndarray:
    stride = max(1, int(np.ceil(max(frame.shape[:2]) / MAX_FRAME_SIDE)))
    return np.ascontiguousarray(frame[::stride, ::stride, :3])


def _pack(obs: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays to store for obs (T, ...): frame stacks (T, K, H, W) uint8 whose stack t+1 is stack t shifted by
    one frame (FrameStackObservation within one game) become their T+K-1 distinct frames, 4x smaller."""
    if obs.dtype == np.uint8 and obs.ndim == 4 and obs.shape[1] > 1 and np.array_equal(obs[1:, :-1], obs[:-1, 1:]):
        return {"obs_frames": np.concatenate([obs[0], obs[1:, -1]]), "obs_stack": np.array(obs.shape[1])}
    return {"obs": obs}


def _unpack(data) -> np.ndarray:
    if "obs" in data:
        return data["obs"]
    frames, k = data["obs_frames"], int(data["obs_stack"])
    windows = np.lib.stride_tricks.sliding_window_view(frames, k, axis=0)  # (T, H, W, K)
    return np.ascontiguousarray(np.moveaxis(windows, -1, 1))


def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def save_clip(clip: Clip, run_dir: Path, fps: int = 20) -> tuple[str, Optional[str]]:
    """Write clips/<id>.npz (and .mp4 when the clip has frames); returns paths relative to run_dir."""
    clip_dir = run_dir / "clips"
    clip_dir.mkdir(exist_ok=True)
    npz = clip_dir / f"{clip.id}.npz"
    tmp = _atomic_path(npz)
    obs = clip.obs
    with open(tmp, "wb") as fh:
        arrays = dict(**_pack(obs), acts=clip.acts, rews=clip.rews, env_step=clip.env_step)
        # images compress ~100x (Atari: 700 KB -> a few KB) and are written once; small clips stay plain
        (np.savez_compressed if obs.nbytes > SPILL_BYTES else np.savez)(fh, **arrays)
    os.replace(tmp, npz)
    video = None
    frames = clip.frames if clip.has_frames else None
    if frames is not None:
        mp4 = clip_dir / f"{clip.id}.mp4"
        write_video(frames, mp4, fps=fps)
        video = str(mp4.relative_to(run_dir))
    return str(npz.relative_to(run_dir)), video


def load_clip_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(obs, acts, rews) of a saved clip."""
    with np.load(path) as data:
        return _unpack(data), data["acts"], data["rews"]


def load_clip_acts_rews(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(acts, rews) of a saved clip without reading its observations, an image clip's bulk (npz members load
    one by one)."""
    with np.load(path) as data:
        return data["acts"], data["rews"]


class ClipObsArray:
    """The observations (N, T, *obs_shape) of N saved clips, read from their npz files at each indexing.

    A fit on image clips would otherwise hold all of them at once (Atari: ~0.7 MB a clip, two a label, ~4 GB
    at the paper's 3,000 labels); indexed with a minibatch's label ids it holds that minibatch only. Nothing
    is kept between calls, so memory stays flat however many labels a run gathers.
    """

    def __init__(self, paths: Sequence[Path], clip_shape: tuple[int, ...], dtype: np.dtype):
        self.paths = list(paths)
        self.shape = (len(self.paths), *clip_shape)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: Union[np.ndarray, Sequence[int], slice]) -> np.ndarray:
        """idx: integer array of any shape (or a slice) -> (*idx.shape, T, *obs_shape); a clip asked for
        several times (bootstrap resamples repeat labels) is read once."""
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise IndexError(f"ClipObsArray takes integer indices or a slice, not {idx.dtype}")
        out = np.empty((*idx.shape, *self.shape[1:]), self.dtype)
        flat = out.reshape(-1, *self.shape[1:])
        clips, where = np.unique(idx.reshape(-1), return_inverse=True)
        for j, i in enumerate(clips):
            with np.load(self.paths[i]) as data:
                flat[where == j] = _unpack(data)
        return out

    def __repr__(self) -> str:
        return f"ClipObsArray(shape={self.shape}, dtype={self.dtype})"


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
