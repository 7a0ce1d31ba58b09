"""Fitting the reward ensemble to preferences: Bradley-Terry loss, bootstrap, adaptive L2.

All members train at once on stacked weights: each minibatch is (M, batch) label ids, one
bootstrap resample per member, and the summed loss gives every member exactly its own
gradient. Adam is elementwise, so one optimiser over the stacked weights is M optimisers.

The loss uses each member's raw output, as in the paper; the per-member output
normalisation is for what the policy and the pair sampler see. Training on normalised
outputs (scale frozen during a fit, reset after it) lets the L2 penalty and the
renormalisation chase each other: on refits of the same 200 labels the L2 weight rose
to ~5, output stds fell to ~3e-4 and validation accuracy fell from 0.86 to 0.68.

Image clips may come as `ClipObsArray`s, read from disk per minibatch: a fit then holds a
minibatch of clips rather than all of them (Atari: ~1.4 MB a label, ~4-8 GB at 3,000 labels
held in memory). In-memory arrays are turned into features once for the whole fit, as before.

Objective "target" (the paper's ablation) swaps the Bradley-Terry loss for the squared
error between each clip's predicted return and its standardised true return; everything
else (bootstrap, split, L2 adaptation, output normalisation) is the same, and the losses
in FitStats are then squared errors in units of the clips' return std.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from prefrl.config import RewardConfig
from prefrl.reward.model import Ensemble, RewardEnsemble
from prefrl.sampling import random_pairs

if TYPE_CHECKING:
    from prefrl.clips import ClipObsArray

L2_STEP = 1.05
"""Multiplicative change of a member's L2 weight per epoch when its val/train loss ratio leaves [1.1, 1.5]."""
L2_RANGE = (1e-8, 10.0)
RATIO_RANGE = (1.1, 1.5)
"""The paper keeps validation loss between 1.1 and 1.5 times the training loss."""
LAZY_CHUNK_BYTES = 8 * 1024**2
"""Clip features per pass over on-disk data when no gradient is needed (output statistics, losses): ~300 Atari
frame stacks, about what the CNN runs at once anyway (CNN_CHUNK), so smaller passes cost no speed."""
INPUT_STATS_LABELS = 16
"""Labels whose clips set the input statistics of a first fit on on-disk data (image clips: the model
scales bounded pixels by the space's bounds or 1/255, so the data's statistics barely matter)."""


class PreferenceData(NamedTuple):
    label_ids: np.ndarray  # (N,) int, stable ids from the label store; decide the train/val split
    obs_left: Union[np.ndarray, ClipObsArray]  # (N, T, *obs_shape); a ClipObsArray reads image clips on demand
    acts_left: np.ndarray  # (N, T, ...)
    obs_right: Union[np.ndarray, ClipObsArray]  # (N, T, *obs_shape)
    acts_right: np.ndarray  # (N, T, ...)
    target: np.ndarray  # (N,) float P(left preferred): 1.0 left, 0.0 right, 0.5 equal
    true_returns: Optional[np.ndarray] = None  # (N, 2) true return of the left and right clip; objective "target"


UnlabeledClips = tuple[np.ndarray, Optional[np.ndarray]]
"""(obs (U, T, *obs_shape), acts (U, T, ...) or None): clips nobody labelled, for the semi-supervised loss."""


class FitStats(NamedTuple):
    n_labels: int
    train_loss: float  # mean over members, each on its own bootstrap resample; no penalty, no dropout
    val_loss: float  # mean over members; nan without a validation set
    train_acc: float  # ensemble-mean prediction on non-equal train labels (nan when none)
    val_acc: float
    l2: float  # mean L2 weight over members after adaptation


def _bt_nll(diff: Tensor, target: Tensor, random_prob: float) -> Tensor:
    """Elementwise -log-likelihood of `target` under P(left) = (1-e) sigmoid(diff) + e/2, computed in
    log space so a confident wrong member gets a bounded, finite loss rather than inf/nan."""
    log_l, log_r = F.logsigmoid(diff), F.logsigmoid(-diff)
    if random_prob > 0:
        keep, rand = math.log1p(-random_prob), torch.tensor(math.log(random_prob / 2))
        log_l, log_r = torch.logaddexp(log_l + keep, rand), torch.logaddexp(log_r + keep, rand)
    return -(target * log_l + (1 - target) * log_r)


def preference_loss(ret_left: Tensor, ret_right: Tensor, target: Tensor, random_prob: float) -> Tensor:
    """Bradley-Terry cross-entropy where the labeler answers uniformly at random with prob random_prob:
    P(left) = (1 - random_prob) * sigmoid(R_l - R_r) + random_prob / 2.  Mean over the batch. Equal answers (0.5) train toward 0.5."""
    return _bt_nll(ret_left - ret_right, target, random_prob).mean()


def standardised_returns(data: PreferenceData) -> Tensor:
    """(N, 2) true clip returns scaled to zero mean and unit std over this fit's clips, the regression target
    of objective "target": raw returns (hundreds on Pendulum) would make the squared error, and with it the
    L2 balance, depend on the env's reward scale, which the comparison loss never sees."""
    if data.true_returns is None:
        raise ValueError("objective 'target' needs PreferenceData.true_returns (the clips' true returns)")
    y = torch.as_tensor(np.asarray(data.true_returns, dtype=np.float64), dtype=torch.float64)
    return ((y - y.mean()) / y.std(correction=0).clamp_min(1e-8)).float()


def _unit_hash(label_ids: np.ndarray, seed: int) -> np.ndarray:
    """(N,) float in [0, 1): splitmix64 of (id, seed), a stable per-label uniform draw."""
    z = np.asarray(label_ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


def val_mask(label_ids: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """(N,) bool: label in validation iff splitmix64(id, seed) / 2^64 < fraction, so a label keeps its
    side of the split as the label set grows (val_split "shared")."""
    return _unit_hash(label_ids, seed) < fraction


def member_weights(label_ids: np.ndarray, seed: int, n_members: int, val_fraction: float) -> np.ndarray:
    """(M, N) int: how often each member trains on each label, a Poisson draw with P(0) = val_fraction
    (Poisson(1) for 1/e: the streaming form of a bootstrap resample, Oza & Russell's online bagging), fixed
    per (label id, member, seed) so that a label keeps its weights as the set grows and warm-started refits
    never validate a member on labels it trained on before. A member's weight-0 labels are its validation set."""
    lam = -math.log(val_fraction)
    u = np.stack([_unit_hash(label_ids, (seed + 0x632BE59BD9B4E019 * (m + 1)) & 0xFFFFFFFFFFFFFFFF)
                  for m in range(n_members)])
    return _poisson_ppf(u, lam)


def _poisson_ppf(u: np.ndarray, lam: float) -> np.ndarray:
    """The smallest k with P(K <= k) >= u for K ~ Poisson(lam), as int64: scipy.stats.poisson.ppf (the same
    weights on 3M draws, tests/test_reward_model.py) without importing scipy, which a training run otherwise never
    does (~0.7 s that only runs with --val-split per_member, the default, would pay)."""
    k = np.arange(int(lam + 12 * math.sqrt(lam) + 20) + 1)
    cdf = np.cumsum(np.exp(k * math.log(lam) - lam - np.array([math.lgamma(i + 1) for i in k])))
    return np.minimum(np.searchsorted(cdf, u, side="left"), k[-1]).astype(np.int64)


class RewardTrainer:
    """Fits a RewardEnsemble to preference labels, warm-starting from its current weights."""

    def __init__(self, ensemble: RewardEnsemble, cfg: RewardConfig, seed: int = 0):
        self.ensemble = ensemble
        self.cfg = cfg
        self.seed = seed
        self.optimizer = torch.optim.Adam(ensemble.parameters(), lr=cfg.lr)
        self.l2 = torch.full((ensemble.n_members,), float(cfg.l2))
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)  # dropout masks

    def fit(self, data: PreferenceData, epochs: int, unlabeled: Optional[UnlabeledClips] = None) -> FitStats:
        """Train every member `epochs` epochs on its own bootstrap of the train labels, then renormalise
        the members' outputs over the data and bump ensemble.version. With cfg.semi_ratio > 0 and at least two
        `unlabeled` clips, minibatches also carry pseudo-labelled pairs of them (`_semi_loss`)."""
        ens, cfg = self.ensemble, self.cfg
        n = len(data.target)
        if n == 0:
            raise ValueError("fit needs at least one label")
        lazy = not isinstance(data.obs_left, np.ndarray)
        if not ens.fitted:
            part = slice(INPUT_STATS_LABELS) if lazy else slice(None)
            ens.set_input_stats(np.concatenate([data.obs_left[part], data.obs_right[part]]),
                                None if data.acts_left is None
                                else np.concatenate([data.acts_left[part], data.acts_right[part]]))

        x = _Pairs(ens, data)  # (N, 2, T, F): both clips of every label, normalised
        t_len, n_feat = x.t_len, x.n_feat
        target = torch.as_tensor(data.target, dtype=torch.float32)
        true = standardised_returns(data) if cfg.objective == "target" else None

        ux = self._unlabeled_features(unlabeled)  # (U, T, F) or None
        m = ens.n_members
        boot, counts, val = self._resamples(data.label_ids)  # (M, L) ids, (M, N) multiplicities, (M, N) bool
        n_draws = boot.shape[1]
        val_any = val.any(0).nonzero().squeeze(1)  # labels some member validates on
        adapt = cfg.adapt_l2 and len(val_any) > 0

        ens.train()
        bs = cfg.batch_size
        for _ in range(epochs):
            order = torch.from_numpy(np.argsort(self.rng.random((m, n_draws)), axis=1))
            epoch_ids = boot.gather(1, order)
            train_sum = torch.zeros(m)
            for start in range(0, n_draws, bs):
                ids = epoch_ids[:, start:start + bs]  # (M, b)
                b = ids.shape[1]
                xb = x[ids]  # (M, b, 2, T, F)
                k = 0
                if ux is not None:  # the unlabelled pairs ride in the same forward pass
                    upairs = self._unlabeled_pairs(ux, m, self.cfg.semi_ratio * b)
                    k = upairs.shape[1]
                    xb = torch.cat([xb, upairs], dim=1)
                r = ens.raw_rewards(xb.reshape(m, (b + k) * 2 * t_len, n_feat), self.gen).reshape(m, b + k, 2, t_len)
                ret = self._train_returns(r[:, :b])
                nll = self._loss(ret, target[ids], None if true is None else true[ids]).mean(1)  # (M,)
                sq = sum(w.pow(2).sum((1, 2)) for w in ens.weights)  # (M,)
                loss = (nll + self.l2 * sq).sum()
                if k:
                    loss = loss + self._semi_loss(r[:, b:]).sum()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                train_sum += nll.detach() * b
            if adapt:
                # train loss: the epoch's running minibatch loss on each member's own resample (free;
                # a full eval pass would double the fit time); val loss: an eval pass on each member's
                # validation labels (members without any keep their weight)
                val_loss = _masked_mean(self._nll_of(x, val_any, target, true)[0], val[:, val_any], dim=1)
                ratio = val_loss / (train_sum / n_draws).clamp_min(1e-12)
                step = torch.where(ratio > RATIO_RANGE[1], L2_STEP, torch.where(ratio < RATIO_RANGE[0], 1 / L2_STEP, 1.0))
                self.l2 = (self.l2 * torch.where(torch.isnan(ratio), 1.0, step)).clamp(*L2_RANGE)

        x.set_output_stats()
        ens.version += 1
        nll, diff = self._nll_of(x, slice(None), target, true)
        train_loss = (nll * counts).sum(1) / counts.sum(1)
        return FitStats(
            n_labels=n,
            train_loss=float(train_loss.mean()),
            val_loss=float(torch.nanmean(_masked_mean(nll, val, dim=1))),  # members without validation labels: nan
            train_acc=_accuracy(_masked_mean(diff, ~val, dim=0), target),
            val_acc=_accuracy(_masked_mean(diff, val, dim=0), target),
            l2=float(self.l2.mean()),
        )

    def _unlabeled_features(self, unlabeled: Optional[UnlabeledClips]) -> Optional[Tensor]:
        """The pool's clips as model inputs (U, T, F), once per fit; None when the semi-supervised loss is off or
        there are fewer than two clips to pair."""
        if self.cfg.semi_ratio == 0 or unlabeled is None or len(unlabeled[0]) < 2:
            return None
        obs, acts = unlabeled
        with torch.no_grad():
            return self.ensemble.features(obs, acts)

    def _unlabeled_pairs(self, ux: Tensor, m: int, k: int) -> Tensor:
        """(M, k, 2, T, F): k random pairs of two different pool clips for each member, SURF's unlabelled batch."""
        return ux[torch.from_numpy(random_pairs(ux.shape[0], m * k, self.rng).reshape(m, k, 2))]

    def _semi_loss(self, r: Tensor) -> Tensor:
        """Per-member rewards (M, k, 2, T) of unlabelled pairs -> SURF's pseudo-label loss (M,): where a member's
        sigmoid of its whole-clip return difference reaches cfg.semi_threshold either way, the answer it leans to
        is taken as that member's label (no gradient through the choice) and scored like a real answer (with the
        random-answer term), on the same cropped windows as labels; unconfident pairs add 0, the mean runs over
        all k so the weight of pseudo-labels grows with the members' confidence."""
        with torch.no_grad():
            whole = r.sum(-1)
            p_left = torch.sigmoid(whole[..., 0] - whole[..., 1])  # (M, k)
            sure = (torch.maximum(p_left, 1 - p_left) >= self.cfg.semi_threshold).to(r.dtype)
            answer = (p_left > 0.5).to(r.dtype)
        ret = self._train_returns(r)
        nll = _bt_nll(ret[..., 0] - ret[..., 1], answer, self.cfg.random_answer_prob)
        return self.cfg.semi_weight * (nll * sure).mean(1)

    def _train_returns(self, r: Tensor) -> Tensor:
        """Per-step rewards (M, b, 2, T) -> the clip returns a training step compares (M, b, 2).

        With cfg.crop_fraction > 0 (SURF's temporal cropping, Park et al. 2022) each member sums each pair over
        windows of one random length in [ceil((1 - f) T), T], placed independently in the two clips: the same
        label then constrains shifted windows of its clips, an augmentation for small label sets. Losses and
        accuracies reported after the fit use whole clips."""
        t_len = r.shape[-1]
        shortest = math.ceil((1 - self.cfg.crop_fraction) * t_len)  # >= 1: validate() keeps the fraction below 1
        if shortest >= t_len:  # no cropping (fraction 0), or clips too short to crop by it
            return r.sum(-1)
        m, b = r.shape[:2]
        length = self.rng.integers(shortest, t_len + 1, size=(m, b, 1))
        start = self.rng.integers(0, t_len - length + 1, size=(m, b, 2))
        t = np.arange(t_len)
        window = (t >= start[..., None]) & (t < (start + length)[..., None])  # (M, b, 2, T)
        return (r * torch.from_numpy(window).to(r.dtype)).sum(-1)

    def _resamples(self, label_ids: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """Each member's training draws (M, L) label positions, how often each label is among them (M, N), and
        its validation labels (M, N) bool, by cfg.val_split.

        `per_member`: stable Poisson weights (`member_weights`), weight-0 labels validate that member, so the
        ensemble trains on all but ~(1/e)^M of the labels; members with fewer draws than the longest are padded
        with extra draws from their own. `shared`: one split for all members (1/e held out from every member)
        and a fresh bootstrap of the rest per fit: with 50 labels each member then trained on ~40% of them."""
        cfg, m = self.cfg, self.ensemble.n_members
        n = len(label_ids)
        if cfg.val_split == "per_member":
            w = member_weights(label_ids, self.seed, m, cfg.val_fraction)
            empty = w.sum(1) == 0
            w[empty] = 1  # too few labels for this member to hold any out: it trains on all of them
            pools = [np.repeat(np.arange(n), w[i]) for i in range(m)]
            size = max(len(p) for p in pools)
            draws = np.stack([np.concatenate([p, self.rng.choice(p, size - len(p))]) for p in pools])
            val = torch.from_numpy(w == 0)
        else:
            is_val = val_mask(label_ids, self.seed, cfg.val_fraction)
            train_ids = np.flatnonzero(~is_val)
            if len(train_ids) == 0:  # too few labels to hold any out
                train_ids, is_val = np.arange(n), np.zeros(n, bool)
            draws = train_ids[self.rng.integers(0, len(train_ids), size=(m, len(train_ids)))]
            val = torch.from_numpy(np.broadcast_to(is_val, (m, n)).copy())
        boot = torch.from_numpy(draws)
        counts = torch.zeros(m, n).scatter_add_(1, boot, torch.ones(boot.shape, dtype=torch.float32))
        return boot, counts, val

    def _nll_of(self, x: _Pairs, ids: Union[Tensor, slice], target: Tensor,
                true: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """`_nll` of the labels `ids`, one chunk of clips at a time (in-memory data: one chunk)."""
        parts = [self._nll(xs, target[part], None if true is None else true[part]) for part, xs in x.chunks(ids)]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _loss(self, ret: Tensor, target: Tensor, true: Optional[Tensor]) -> Tensor:
        """Predicted clip returns (M, n, 2) -> per-member, per-label loss (M, n) of the configured objective:
        Bradley-Terry on the answer `target` (n,), or squared error to the standardised true returns (n, 2)."""
        if true is None:
            return _bt_nll(ret[..., 0] - ret[..., 1], target, self.cfg.random_answer_prob)
        return (ret - true).pow(2).mean(-1)

    @torch.no_grad()
    def _nll(self, x: Tensor, target: Tensor, true: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x (n, 2, T, F), target (n,) -> per-member loss without penalty (M, n) in eval mode (no dropout),
        and each member's normalised return difference left - right (M, n), whose means decide accuracy."""
        ens = self.ensemble
        n, _, t_len, n_feat = x.shape
        was_training = ens.training
        ens.eval()
        ret = ens.raw_rewards(x.reshape(-1, n_feat)).reshape(-1, n, 2, t_len).sum(-1)
        ens.train(was_training)
        diff = ret[..., 0] - ret[..., 1]  # (M, n)
        return self._loss(ret, target, true), diff / ens.out_std

    def state_dict(self) -> dict:
        """Optimiser state, per-member L2 weights and both rngs; safe for torch.load(weights_only=True)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "l2": self.l2.clone(),
            "np_rng": self.rng.bit_generator.state,
            "torch_rng": self.gen.get_state(),
        }

    def load_state_dict(self, d: dict) -> None:
        self.optimizer.load_state_dict(d["optimizer"])
        self.l2 = d["l2"].clone().to(torch.float32)
        self.rng.bit_generator.state = d["np_rng"]
        self.gen.set_state(d["torch_rng"])


class _Pairs:
    """Model inputs (N, 2, T, F) of both clips of every label, indexed like a tensor by label ids.

    In-memory data become one tensor for the whole fit: fast, and MLP clips are small. On-disk data
    (ClipObsArray) are read and featurised per call, so a fit holds one minibatch or chunk of image clips.
    """

    def __init__(self, ens: Ensemble, data: PreferenceData):
        self.ens, self.data = ens, data
        self.n, self.t_len, self.n_feat = len(data.target), data.obs_left.shape[1], ens.n_features
        self.x: Optional[Tensor] = None
        if isinstance(data.obs_left, np.ndarray) and isinstance(data.obs_right, np.ndarray):
            with torch.no_grad():
                self.x = torch.stack([ens.features(data.obs_left, data.acts_left),
                                      ens.features(data.obs_right, data.acts_right)], dim=1)
            self.chunk = max(1, self.n)
        else:
            label_bytes = 2 * self.t_len * self.n_feat * (4 if isinstance(ens, RewardEnsemble) else 1)  # CNN: uint8
            self.chunk = max(1, LAZY_CHUNK_BYTES // label_bytes)

    def __getitem__(self, ids: Union[Tensor, slice]) -> Tensor:
        """ids (...) label ids, or a slice -> (..., 2, T, F)."""
        if self.x is not None:
            return self.x[ids]
        d, ens = self.data, self.ens
        ids = np.arange(self.n)[ids] if isinstance(ids, slice) else np.asarray(ids)
        with torch.no_grad():
            return torch.stack([ens.features(d.obs_left[ids], None if d.acts_left is None else d.acts_left[ids]),
                                ens.features(d.obs_right[ids], None if d.acts_right is None else d.acts_right[ids])],
                               dim=ids.ndim)

    def chunks(self, ids: Union[Tensor, slice]) -> Iterator[tuple[Union[Tensor, slice], Tensor]]:
        """(part of ids, its inputs) in pieces of at most `chunk` labels: one piece for in-memory data."""
        ids = torch.arange(self.n)[ids] if isinstance(ids, slice) and self.x is None else ids
        if self.x is not None or len(ids) <= self.chunk:
            yield ids, self[ids]
            return
        for start in range(0, len(ids), self.chunk):
            part = ids[start:start + self.chunk]
            yield part, self[part]

    @torch.no_grad()
    def set_output_stats(self) -> None:
        """The ensemble's per-member output mean/std over all clips; on-disk data chunk by chunk (the same
        statistics, up to summation order)."""
        ens = self.ens
        if self.x is not None:
            ens.set_output_stats(self.x.reshape(-1, self.n_feat))
            return
        was_training = ens.training
        ens.eval()  # no dropout, running batch-norm statistics: what set_output_stats uses
        raw = torch.cat([ens.raw_rewards(xs.reshape(-1, self.n_feat)) for _, xs in self.chunks(slice(None))], dim=1)
        ens.train(was_training)
        ens.store_output_stats(raw)


def _masked_mean(v: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of v over the entries where mask is True along dim; nan where there are none."""
    mask = mask.to(v.dtype)
    return (v * mask).sum(dim) / mask.sum(dim)


def _accuracy(diff: Tensor, target: Tensor) -> float:
    """Share of non-equal labels where the sign of diff (N,) picks the preferred clip (labels where diff is nan,
    e.g. no member validates them, do not count); nan if none."""
    decided = (target != 0.5) & ~torch.isnan(diff)
    if not bool(decided.any()):
        return float("nan")
    return float(((diff[decided] > 0) == (target[decided] > 0.5)).float().mean())
