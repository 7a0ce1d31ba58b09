"""Reward model: a flat ensemble of MLPs r(s, a), all members evaluated in one batched op.

Members' weights are stacked as (M, in, out), so a forward pass is one `baddbmm` per
layer whatever the ensemble size: `predict` runs every PPO env step, and a Python loop
over members would cost M times the op overhead there.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from prefrl.config import RewardConfig

ActSpace = Union[gym.spaces.Box, gym.spaces.Discrete]
ArrayLike = Union[np.ndarray, Tensor]

_STD_FLOOR = 1e-2
"""Input features with a smaller std are only centred: a near-constant feature (an action
never taken, a fixed coordinate) must not be blown up by 1/std on new data."""
_OUT_STD_FLOOR = 1e-6
_LEAK = 0.01


class RewardEnsemble(nn.Module):
    """Flat ensemble of MLP reward predictors r(s, a) (or r(s))."""

    def __init__(self, obs_space: gym.spaces.Box, act_space: ActSpace, cfg: RewardConfig, seed: int = 0):
        super().__init__()
        if not isinstance(obs_space, gym.spaces.Box):
            raise TypeError(f"reward model needs a Box observation space, got {obs_space}")
        if not isinstance(act_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise TypeError(f"reward model needs a Box or Discrete action space, got {act_space}")
        self.cfg = cfg
        self.obs_shape: tuple[int, ...] = tuple(obs_space.shape)
        self.obs_dim = int(np.prod(self.obs_shape))
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        self.act_shape: tuple[int, ...] = () if self.discrete else tuple(act_space.shape)
        self.act_dim = int(act_space.n) if self.discrete else int(np.prod(self.act_shape))
        self.n_features = self.obs_dim + (self.act_dim if cfg.use_actions else 0)
        self.n_members = cfg.ensemble_size

        gen = torch.Generator().manual_seed(seed)
        sizes = [self.n_features, *cfg.hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            # torch.nn.Linear's default init, drawn independently per member
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(self.n_members, fan_in, fan_out, generator=gen) * 2 - 1) * bound
            b = (torch.rand(self.n_members, 1, fan_out, generator=gen) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        # Plain references to the same Parameter objects: iterating a ParameterList costs ~10 us,
        # a third of a whole `predict`. load_state_dict copies in place, so they stay valid.
        self._layers: list[tuple[Tensor, Tensor]] = list(zip(self.weights, self.biases))

        self.register_buffer("in_mean", torch.zeros(self.n_features))
        self.register_buffer("in_std", torch.ones(self.n_features))
        self.register_buffer("out_mean", torch.zeros(self.n_members, 1))
        self.register_buffer("out_std", torch.ones(self.n_members, 1))
        self.register_buffer("fit_count", torch.zeros((), dtype=torch.int64))
        self._eye = np.eye(self.act_dim if self.discrete else 0, dtype=np.float32)
        # Where the spaces are bounded, scale inputs by the bounds: statistics of the initial
        # policy's clips are narrow, and states the agent reaches later (e.g. a fast-spinning
        # pendulum) would then sit many "stds" out, where the MLP extrapolates wildly.
        low, high = [obs_space.low.reshape(-1)], [obs_space.high.reshape(-1)]
        if cfg.use_actions:
            if self.discrete:  # one-hot features lie in [0, 1]
                low.append(np.zeros(self.act_dim)), high.append(np.ones(self.act_dim))
            else:
                low.append(act_space.low.reshape(-1)), high.append(act_space.high.reshape(-1))
        lo, hi = np.concatenate(low).astype(np.float64), np.concatenate(high).astype(np.float64)
        bounded = np.isfinite(lo) & np.isfinite(hi) & (hi - lo < 1e6)
        lo, hi = np.where(bounded, lo, 0.0), np.where(bounded, hi, 0.0)
        self._bounded = torch.from_numpy(bounded)
        self._bound_mean = torch.from_numpy((lo + hi) / 2).float()
        self._bound_std = torch.from_numpy(np.where(bounded, np.maximum((hi - lo) / 2, 1e-6), 1.0)).float()

    # --- bookkeeping -----------------------------------------------------------------

    @property
    def version(self) -> int:
        """Fits so far (the trainer increments it); 0 = never fit. A buffer, so checkpoints keep it."""
        return int(self.fit_count)

    @version.setter
    def version(self, value: int) -> None:
        self.fit_count.fill_(int(value))

    @property
    def fitted(self) -> bool:
        return self.version > 0

    # --- features --------------------------------------------------------------------

    def _raw_features(self, obs: ArrayLike, acts: Optional[ArrayLike]) -> Tensor:
        """(..., *obs_shape), (..., [*act_shape]) -> (..., F) before normalisation."""
        return torch.from_numpy(self._np_features(obs, acts))

    def _np_features(self, obs: ArrayLike, acts: Optional[ArrayLike]) -> np.ndarray:
        """Built in numpy: on PPO's tiny per-step batches that is 3x faster than torch ops."""
        obs = _numpy(obs, np.float32)
        lead = obs.shape[: obs.ndim - len(self.obs_shape)]
        x = obs.reshape(*lead, self.obs_dim)
        if self.cfg.use_actions:
            if acts is None:
                raise ValueError("this reward model uses actions (use_actions=True); pass acts")
            if self.discrete:
                a = self._eye[_numpy(acts, np.int64).reshape(lead)]  # one-hot
            else:
                a = _numpy(acts, np.float32).reshape(*lead, self.act_dim)
            x = np.concatenate([x, a], axis=-1)
        elif not x.flags.writeable:
            x = x.copy()  # torch.from_numpy warns on read-only arrays
        return x

    def features(self, obs: ArrayLike, acts: Optional[ArrayLike]) -> Tensor:
        """Normalised model inputs (..., F), F = obs_dim [+ act_dim, one-hot for Discrete].

        obs (..., *obs_shape); acts (...) int for Discrete, (..., *act_shape) for Box;
        acts are ignored (may be None) when cfg.use_actions is False.
        """
        return (self._raw_features(obs, acts) - self.in_mean) / self.in_std

    @torch.no_grad()
    def set_input_stats(self, obs: np.ndarray, acts: Optional[np.ndarray]) -> None:
        """Per-feature centre/scale: the space's bounds where finite, else mean/std over obs
        (N, *obs_shape), acts (N, ...). Set once, at the first fit, so that later fits and the
        policy's rewards see a fixed input scale."""
        x = self._raw_features(obs, acts).reshape(-1, self.n_features)
        mean = x.mean(0)
        std = x.std(0, correction=0)
        std = torch.where(std < _STD_FLOOR, torch.ones_like(std), std)
        self.in_mean.copy_(torch.where(self._bounded, self._bound_mean, mean))
        self.in_std.copy_(torch.where(self._bounded, self._bound_std, std))

    # --- members ---------------------------------------------------------------------

    def raw_rewards(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """x (B, F) shared by all members, or (M, B, F) one batch per member -> (M, B) raw outputs.

        Dropout (manual, so the trainer's `generator` makes it reproducible) only in train mode.
        """
        return self._forward(x, self.training and self.cfg.dropout > 0, generator)

    def _forward(self, x: Tensor, drop: bool, generator: Optional[torch.Generator] = None) -> Tensor:
        h = x if x.dim() == 3 else x.unsqueeze(0).expand(self.n_members, -1, -1)
        p = self.cfg.dropout
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            if i == last:
                if h.shape[1] <= 64:  # PPO's per-step batches: one op is cheapest
                    return torch.baddbmm(b, h, w).squeeze(-1)
                # big batches: bmm's matrix-vector case (M, B, H) @ (M, H, 1) is 4x slower than this
                return (h * w.transpose(1, 2)).sum(-1) + b[:, :, 0]
            h = nn.functional.leaky_relu(torch.baddbmm(b, h, w), _LEAK)
            if drop:
                keep = torch.rand(h.shape, generator=generator) >= p
                h = h * keep / (1.0 - p)
        raise AssertionError("unreachable")

    def _normalise(self, raw: Tensor) -> Tensor:
        return (raw - self.out_mean) * (self.cfg.output_std / self.out_std)

    def member_rewards(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """x (B, F) or (M, B, F) -> (M, B): each member normalised on its own, (raw - mu_m) / sd_m * output_std,
        so that no member dominates the mean by scale (the paper normalises before averaging)."""
        return self._normalise(self.raw_rewards(x, generator))

    @torch.no_grad()
    def set_output_stats(self, x: Tensor) -> None:
        """Per-member mean/std of raw outputs over features x (B, F), in eval mode (no dropout)."""
        raw = self._forward(x.reshape(-1, self.n_features), drop=False)
        self.out_mean.copy_(raw.mean(1, keepdim=True))
        self.out_std.copy_(raw.std(1, correction=0, keepdim=True).clamp_min(_OUT_STD_FLOOR))

    def predict(self, obs: np.ndarray, acts: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """obs (B, *obs_shape), acts (B, ...) -> (mean, std) over members, each (B,) float32; never dropout.

        Called every PPO env step with B = n_envs, where torch's per-op overhead (~5-10 us an op) was most
        of the cost: this runs the same maths in numpy on views of the parameters and buffers (they share
        memory with the tensors, which training and load_state_dict update in place).
        """
        v = self._np_views()
        h = (self._np_features(obs, acts).reshape(-1, self.n_features) - v["in_mean"]) / v["in_std"]
        for w, b in v["hidden"]:
            h = h @ w + b  # (B, F) @ (M, F, H) broadcasts to (M, B, H)
            h = np.maximum(h, _LEAK * h)
        w, b = v["last"]
        r = ((h @ w + b)[..., 0] - v["out_mean"]) * v["out_scale"]  # (M, B), normalised per member
        mean = r.sum(0) / self.n_members  # np.mean/np.std cost ~10 us each on arrays this small
        d = r - mean
        return mean, np.sqrt((d * d).sum(0) / self.n_members)

    def _np_views(self) -> dict:
        if getattr(self, "_views", None) is None:
            t = lambda x: x.detach().numpy()  # noqa: E731 - a view, not a copy
            layers = [(t(w), t(b)) for w, b in self._layers]
            self._views = dict(hidden=layers[:-1], last=layers[-1], in_mean=t(self.in_mean), in_std=t(self.in_std),
                               out_mean=t(self.out_mean), out_std=t(self.out_std))
        # output_std / out_std, recomputed whenever a fit changed out_std (compared by value)
        v = self._views
        if v.get("out_std_seen") is None or not np.array_equal(v["out_std_seen"], v["out_std"]):
            v["out_std_seen"] = v["out_std"].copy()
            v["out_scale"] = (np.float32(self.cfg.output_std) / v["out_std"]).astype(np.float32)
        return v

    @torch.no_grad()
    def clip_returns(self, obs: np.ndarray, acts: Optional[np.ndarray]) -> np.ndarray:
        """obs (N, T, *obs_shape), acts (N, T, ...) -> (M, N) float32: each member's normalised reward summed
        over each clip, for the disagreement pair sampler."""
        x = self.features(obs, acts)
        n, t = x.shape[0], x.shape[1]
        r = self._normalise(self._forward(x.reshape(n * t, self.n_features), drop=False))
        return r.reshape(self.n_members, n, t).sum(-1).numpy()


def _numpy(a: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)
