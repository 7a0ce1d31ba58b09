"""Reward model: a flat ensemble of MLPs r(s, a), all members evaluated in one batched op,
or of the paper's Atari CNN r(s) (`CnnRewardEnsemble`); `make_ensemble` picks by cfg.arch.

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

from prefrl.config import ConfigError, RewardConfig

ActSpace = Union[gym.spaces.Box, gym.spaces.Discrete]
ArrayLike = Union[np.ndarray, Tensor]

_STD_FLOOR = 1e-2
"""Input features with a smaller std are only centred: a near-constant feature (an action
never taken, a fixed coordinate) must not be blown up by 1/std on new data."""
_OUT_STD_FLOOR = 1e-6
_LEAK = 0.01


_NUMPY_ROWS = 256  # predict() runs in numpy up to this many rows (PPO's per-step batches), in torch above


class _FitCount:
    """`version`: fits so far (the trainer increments it); 0 = never fit. Kept in a `fit_count` buffer,
    so checkpoints keep it."""

    fit_count: torch.Tensor

    @property
    def version(self) -> int:
        return int(self.fit_count)

    @version.setter
    def version(self, value: int) -> None:
        self.fit_count.fill_(int(value))

    @property
    def fitted(self) -> bool:
        return self.version > 0

    @torch.no_grad()
    def store_output_stats(self, raw: Tensor) -> None:
        """Per-member mean/std of raw outputs (M, B): what the policy's rewards are normalised by."""
        self.out_mean.copy_(raw.mean(1, keepdim=True))
        self.out_std.copy_(raw.std(1, correction=0, keepdim=True).clamp_min(_OUT_STD_FLOOR))


class RewardEnsemble(_FitCount, nn.Module):
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
        self.store_output_stats(self._forward(x.reshape(-1, self.n_features), drop=False))

    def predict(self, obs: np.ndarray, acts: Optional[np.ndarray],
                with_std: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """obs (B, *obs_shape), acts (B, ...) -> (mean, std) over members, each (B,) float32; never dropout.
        with_std=False skips the std (None): LearnedReward needs only the mean.

        Called every PPO env step with B = n_envs, where torch's per-op overhead (~5-10 us an op) was most
        of the cost: this runs the same maths in numpy on views of the parameters and buffers (they share
        memory with the tensors, which training and load_state_dict update in place).
        """
        x = self._np_features(obs, acts).reshape(-1, self.n_features)
        if len(x) > _NUMPY_ROWS:  # a whole rollout at once: here torch's batched matmul is ~2x faster
            with torch.no_grad():
                r = self._normalise(self._forward((torch.from_numpy(x) - self.in_mean) / self.in_std,
                                                  drop=False)).numpy()
        else:
            v = self._np_views()
            h = (x - v["in_mean"]) / v["in_std"]
            for w, b in v["hidden"]:
                h = h @ w + b  # (B, F) @ (M, F, H) broadcasts to (M, B, H)
                h = np.maximum(h, _LEAK * h)
            w, b = v["last"]
            r = ((h @ w + b)[..., 0] - v["out_mean"]) * v["out_scale"]  # (M, B), normalised per member
        mean = r.sum(0) / self.n_members  # np.mean/np.std cost ~10 us each on arrays this small
        if not with_std:
            return mean, None
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
    def clip_returns(self, obs: np.ndarray, acts: Optional[np.ndarray], normalised: bool = True) -> np.ndarray:
        """obs (N, T, *obs_shape), acts (N, T, ...) -> (M, N) float32: each member's reward summed over each clip,
        normalised (what PPO sees) or raw (the scale the Bradley-Terry fit calibrated), for the pair sampler."""
        x = self.features(obs, acts)
        n, t = x.shape[0], x.shape[1]
        r = self._forward(x.reshape(n * t, self.n_features), drop=False)
        r = self._normalise(r) if normalised else r
        return r.reshape(self.n_members, n, t).sum(-1).numpy()


def _numpy(a: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


# --- the paper's Atari reward predictor ----------------------------------------------------------------------

CNN_LAYERS = ((7, 3), (5, 2), (3, 1), (3, 1))
"""(kernel, stride) of the four conv layers (paper A.2), 16 filters each."""
CNN_FILTERS = 16
CNN_DENSE = 64
CNN_CHUNK = 256
"""Images per forward pass when no gradient is needed (fitting statistics over thousands of clips)."""
_BN_MOMENTUM = 0.1


class CnnRewardEnsemble(_FitCount, nn.Module):
    """Flat ensemble of the paper's Atari reward predictor r(s) on frame stacks (C, H, W) uint8 (A.2):
    conv 7x7/3, 5x5/2, 3x3/1, 3x3/1 (16 filters each, batch norm, leaky ReLU 0.01, dropout cfg.dropout),
    a 64-unit dense layer (leaky ReLU) and a scalar output. Same interface as RewardEnsemble.

    Weights are stacked per member, conv kernels flattened to (M, out, in*k*k), so the trainer's L2 term
    sum(w**2 over dims 1, 2) is per member as for the MLP. Members run one after another: on one CPU thread
    a loop over three members' small convs was ~1.5x faster than one grouped conv. Features are the raw bytes
    (the network divides by 255), so a fit holds its clips as uint8, 4x less memory than float32.
    """

    def __init__(self, obs_space: gym.spaces.Box, act_space: ActSpace, cfg: RewardConfig, seed: int = 0):
        super().__init__()
        shape = tuple(getattr(obs_space, "shape", ()) or ())
        if not (isinstance(obs_space, gym.spaces.Box) and obs_space.dtype == np.uint8 and len(shape) == 3):
            raise ConfigError(f"--arch cnn needs image observations (channels, height, width) of uint8, such as "
                              f"ALE/... frame stacks; this env's are {shape} {getattr(obs_space, 'dtype', '')}; "
                              "use --arch mlp")
        if cfg.use_actions:
            raise ConfigError("--arch cnn sees observations only (the paper's Atari predictor); add --no-use-actions")
        self.cfg = cfg
        self.obs_shape: tuple[int, ...] = shape
        self.obs_dim = self.n_features = int(np.prod(shape))
        self.n_members = m = cfg.ensemble_size
        gen = torch.Generator().manual_seed(seed)

        def uniform(*size: int, fan_in: int) -> nn.Parameter:  # torch's default Conv2d/Linear init, per member
            return nn.Parameter((torch.rand(*size, generator=gen) * 2 - 1) / math.sqrt(fan_in))

        self.weights = nn.ParameterList()
        self.bn_weight = nn.ParameterList()
        self.bn_bias = nn.ParameterList()
        c, h, w = shape
        self._convs: list[tuple[int, int, int]] = []  # (in channels, kernel, stride)
        for i, (k, stride) in enumerate(CNN_LAYERS):
            if h < k or w < k:
                raise ConfigError(f"--arch cnn: images of {shape[1]}x{shape[2]} are too small for its conv "
                                  "layers (84x84 expected)")
            self.weights.append(uniform(m, CNN_FILTERS, c * k * k, fan_in=c * k * k))
            self.bn_weight.append(nn.Parameter(torch.ones(m, CNN_FILTERS)))
            self.bn_bias.append(nn.Parameter(torch.zeros(m, CNN_FILTERS)))
            self.register_buffer(f"bn_mean{i}", torch.zeros(m, CNN_FILTERS))
            self.register_buffer(f"bn_var{i}", torch.ones(m, CNN_FILTERS))
            self._convs.append((c, k, stride))
            c, h, w = CNN_FILTERS, (h - k) // stride + 1, (w - k) // stride + 1
        flat = c * h * w
        self.weights.append(uniform(m, flat, CNN_DENSE, fan_in=flat))
        self.weights.append(uniform(m, CNN_DENSE, 1, fan_in=CNN_DENSE))
        self.biases = nn.ParameterList([uniform(m, 1, CNN_DENSE, fan_in=flat), uniform(m, 1, 1, fan_in=CNN_DENSE)])
        self.register_buffer("out_mean", torch.zeros(m, 1))
        self.register_buffer("out_std", torch.ones(m, 1))
        self.register_buffer("fit_count", torch.zeros((), dtype=torch.int64))

    # --- features --------------------------------------------------------------------------------------------

    def features(self, obs: ArrayLike, acts: Optional[ArrayLike] = None) -> Tensor:
        """obs (..., C, H, W) -> (..., C*H*W) uint8, a view where possible; acts are ignored."""
        x = obs if isinstance(obs, Tensor) else torch.from_numpy(np.ascontiguousarray(obs))
        return x.reshape(*x.shape[: x.dim() - len(self.obs_shape)], self.n_features)

    def set_input_stats(self, obs: np.ndarray, acts: Optional[np.ndarray]) -> None:
        """Nothing to learn: pixels are scaled by 1/255 (kept for RewardEnsemble's interface)."""

    # --- members ---------------------------------------------------------------------------------------------

    def raw_rewards(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """x (B, F) shared by all members, or (M, B, F) one batch per member -> (M, B) raw outputs.
        Train mode: batch statistics (updating the running ones) and dropout; eval mode: neither."""
        return self._forward(x, self.training, generator)

    def _forward(self, x: Tensor, training: bool, generator: Optional[torch.Generator] = None) -> Tensor:
        shared = x.dim() == 2
        if not torch.is_grad_enabled() and x.shape[-2] > CNN_CHUNK:
            parts = [self._forward(x[..., i:i + CNN_CHUNK, :], training, generator)
                     for i in range(0, x.shape[-2], CNN_CHUNK)]
            return torch.cat(parts, dim=1)
        out = []
        for m in range(self.n_members):
            h = (x if shared else x[m]).reshape(-1, *self.obs_shape).float().div_(255.0)
            for i, (c_in, k, stride) in enumerate(self._convs):
                w = self.weights[i][m].view(CNN_FILTERS, c_in, k, k)
                h = nn.functional.conv2d(h, w, stride=stride)
                h = nn.functional.batch_norm(h, getattr(self, f"bn_mean{i}")[m], getattr(self, f"bn_var{i}")[m],
                                             self.bn_weight[i][m], self.bn_bias[i][m], training=training,
                                             momentum=_BN_MOMENTUM)
                h = nn.functional.leaky_relu(h, _LEAK)
                if training and self.cfg.dropout > 0:
                    keep = torch.rand(h.shape, generator=generator) >= self.cfg.dropout
                    h = h * keep / (1.0 - self.cfg.dropout)
            h = nn.functional.leaky_relu(torch.addmm(self.biases[0][m], h.flatten(1), self.weights[-2][m]), _LEAK)
            out.append(torch.addmm(self.biases[1][m], h, self.weights[-1][m]).squeeze(-1))
        return torch.stack(out)

    def _normalise(self, raw: Tensor) -> Tensor:
        return (raw - self.out_mean) * (self.cfg.output_std / self.out_std)

    def member_rewards(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """x (B, F) or (M, B, F) -> (M, B), each member normalised to output_std (see RewardEnsemble)."""
        return self._normalise(self.raw_rewards(x, generator))

    @torch.no_grad()
    def set_output_stats(self, x: Tensor) -> None:
        """Per-member mean/std of raw outputs over features x (B, F), in eval mode."""
        self.store_output_stats(self._forward(x.reshape(-1, self.n_features), training=False))

    @torch.no_grad()
    def predict(self, obs: np.ndarray, acts: Optional[np.ndarray] = None,
                with_std: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """obs (B, C, H, W) -> (mean, std) over members, each (B,) float32 (std None unless with_std); eval mode.
        One batched pass per PPO step over all envs."""
        r = self._normalise(self._forward(self.features(obs).reshape(-1, self.n_features), training=False))
        return r.mean(0).numpy(), r.std(0, correction=0).numpy() if with_std else None

    @torch.no_grad()
    def clip_returns(self, obs: np.ndarray, acts: Optional[np.ndarray] = None, normalised: bool = True) -> np.ndarray:
        """obs (N, T, C, H, W) -> (M, N) float32: each member's reward summed over each clip, normalised or raw."""
        n, t = obs.shape[0], obs.shape[1]
        r = self._forward(self.features(obs).reshape(n * t, self.n_features), training=False)
        r = self._normalise(r) if normalised else r
        return r.reshape(self.n_members, n, t).sum(-1).numpy()


Ensemble = Union[RewardEnsemble, CnnRewardEnsemble]


def make_ensemble(obs_space: gym.spaces.Box, act_space: ActSpace, cfg: RewardConfig, seed: int = 0) -> Ensemble:
    """The ensemble cfg.arch names: `mlp` (RewardEnsemble) or `cnn` (CnnRewardEnsemble)."""
    if cfg.arch == "cnn":
        return CnnRewardEnsemble(obs_space, act_space, cfg, seed)
    return RewardEnsemble(obs_space, act_space, cfg, seed)
