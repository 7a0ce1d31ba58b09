"""Reward ensemble and its trainer: loss, learning a known reward, normalisation, L2, checkpoints."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

from prefrl.config import RewardConfig
from prefrl.reward.model import RewardEnsemble
from prefrl.reward.train import (PreferenceData, RewardTrainer, _poisson_ppf, member_weights, preference_loss,
                                 val_mask)

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
BOX = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
DISCRETE = gym.spaces.Discrete(3)


def true_reward(obs: np.ndarray, acts: np.ndarray, discrete: bool) -> np.ndarray:
    """(..., 3), (...[, 1]) -> (...)."""
    if discrete:
        return -(obs**2).sum(-1) - 1.0 * (acts == 0)
    return -(obs**2).sum(-1) - 0.1 * (acts**2).sum(-1)


def random_steps(rng: np.random.Generator, lead: tuple[int, ...], discrete: bool) -> tuple[np.ndarray, np.ndarray]:
    obs = rng.normal(size=(*lead, 3)).astype(np.float32)
    acts = rng.integers(0, 3, size=lead) if discrete else rng.normal(size=(*lead, 1)).astype(np.float32)
    return obs, acts


def oracle_data(n: int, t: int = 10, discrete: bool = False, seed: int = 0, target: str = "oracle") -> PreferenceData:
    """n labelled pairs of t-step random clips; target: perfect `oracle`, `noise` (random 0/1) or `equal`."""
    rng = np.random.default_rng(seed)
    ol, al = random_steps(rng, (n, t), discrete)
    orr, ar = random_steps(rng, (n, t), discrete)
    if target == "oracle":
        y = (true_reward(ol, al, discrete).sum(1) > true_reward(orr, ar, discrete).sum(1)).astype(np.float32)
    elif target == "noise":
        y = rng.integers(0, 2, size=n).astype(np.float32)
    else:
        y = np.full(n, 0.5, dtype=np.float32)
    return PreferenceData(np.arange(n), ol, al, orr, ar, y)


def make(cfg: RewardConfig = RewardConfig(use_actions=True), act_space: gym.Space = BOX, seed: int = 0) -> tuple[RewardEnsemble, RewardTrainer]:
    ens = RewardEnsemble(OBS, act_space, cfg, seed=seed)
    return ens, RewardTrainer(ens, cfg, seed=seed)


def roundtrip(obj: dict) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --- preference_loss -----------------------------------------------------------------


def test_loss_matches_hand_computation() -> None:
    d, eps = 0.7, 0.1
    p = (1 - eps) / (1 + math.exp(-d)) + eps / 2
    rl, rr = torch.tensor([1.2, 1.2]), torch.tensor([0.5, 0.5])
    got = preference_loss(rl, rr, torch.tensor([1.0, 0.0]), eps)
    assert got.item() == pytest.approx((-math.log(p) - math.log(1 - p)) / 2, rel=1e-5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(rl - rr, torch.tensor([1.0, 0.0]))
    assert preference_loss(rl, rr, torch.tensor([1.0, 0.0]), 0.0).item() == pytest.approx(bce.item(), rel=1e-5)


def test_loss_is_bounded_by_the_random_answer_term() -> None:
    huge = torch.tensor([1e4], requires_grad=True)
    wrong = preference_loss(torch.zeros(1), huge, torch.ones(1), 0.1)
    right = preference_loss(huge, torch.zeros(1), torch.ones(1), 0.1)
    assert wrong.item() == pytest.approx(-math.log(0.05), rel=1e-5)
    assert right.item() == pytest.approx(-math.log(0.95), rel=1e-5)
    wrong.backward()
    assert torch.isfinite(huge.grad).all()


def test_equal_answer_is_minimised_at_equal_returns() -> None:
    d = torch.linspace(-3, 3, 61)
    loss = torch.stack([preference_loss(x, torch.zeros(()), torch.tensor(0.5), 0.1) for x in d])
    assert d[loss.argmin()].item() == pytest.approx(0.0, abs=1e-6)
    assert loss.min().item() == pytest.approx(math.log(2), rel=1e-5)


# --- learning ------------------------------------------------------------------------


@pytest.mark.parametrize("discrete", [False, True], ids=["box", "discrete"])
def test_ensemble_learns_a_known_reward(discrete: bool) -> None:
    ens, trainer = make(act_space=DISCRETE if discrete else BOX)
    assert not ens.fitted
    stats = trainer.fit(oracle_data(400, discrete=discrete), epochs=60)
    assert ens.fitted and ens.version == 1 and stats.n_labels == 400
    assert stats.val_acc > 0.85, stats
    obs, acts = random_steps(np.random.default_rng(123), (2000,), discrete)
    mean, std = ens.predict(obs, acts)
    assert mean.shape == std.shape == (2000,) and mean.dtype == np.float32
    assert np.corrcoef(mean, true_reward(obs, acts, discrete))[0, 1] > 0.9


def test_each_member_is_normalised_over_the_data() -> None:
    cfg = RewardConfig(use_actions=True, output_std=2.0)
    ens, trainer = make(cfg)
    data = oracle_data(100)
    trainer.fit(data, epochs=10)
    obs = np.concatenate([data.obs_left, data.obs_right]).reshape(-1, 3)
    acts = np.concatenate([data.acts_left, data.acts_right]).reshape(-1, 1)
    r = ens.member_rewards(ens.features(obs, acts)).detach()
    assert r.shape == (cfg.ensemble_size, len(obs))
    np.testing.assert_allclose(r.mean(1).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(r.std(1, correction=0).numpy(), 2.0, rtol=1e-4)
    returns = ens.clip_returns(data.obs_left, data.acts_left)
    assert returns.shape == (cfg.ensemble_size, 100)
    np.testing.assert_allclose(returns, r[:, : 100 * 10].reshape(-1, 100, 10).sum(-1).numpy(), rtol=1e-4, atol=1e-4)


def test_adaptive_l2_rises_when_overfitting() -> None:
    cfg = RewardConfig(use_actions=True)
    ens, trainer = make(cfg)
    stats = trainer.fit(oracle_data(40, target="noise"), epochs=60)
    assert stats.val_loss > 1.5 * stats.train_loss
    assert stats.l2 > cfg.l2


def test_adaptive_l2_falls_when_val_matches_train() -> None:
    cfg = RewardConfig(use_actions=True, l2=1e-2)
    ens, trainer = make(cfg)
    stats = trainer.fit(oracle_data(200, target="equal"), epochs=20)  # both losses ~log 2
    assert stats.val_loss == pytest.approx(stats.train_loss, rel=0.1)
    assert stats.l2 < cfg.l2
    assert math.isnan(stats.train_acc) and math.isnan(stats.val_acc)  # no decided labels


def test_fixed_l2_without_adaptation() -> None:
    cfg = RewardConfig(use_actions=True, adapt_l2=False, l2=3e-3)
    assert make(cfg)[1].fit(oracle_data(40, target="noise"), epochs=5).l2 == pytest.approx(3e-3)


def test_validation_split_is_stable_and_tiny_sets_train_on_everything() -> None:
    ids = np.arange(5000)
    mask = val_mask(ids, seed=0, fraction=1 / math.e)
    assert abs(mask.mean() - 1 / math.e) < 0.03
    np.testing.assert_array_equal(val_mask(ids[:100], 0, 1 / math.e), mask[:100])  # growing keeps assignments
    assert (val_mask(ids, 1, 1 / math.e) != mask).any()  # the seed matters
    only_val = int(ids[mask][0])
    data = oracle_data(1)._replace(label_ids=np.array([only_val]))
    stats = make()[1].fit(data, epochs=2)
    assert math.isnan(stats.val_loss) and math.isnan(stats.val_acc) and not math.isnan(stats.train_loss)


def test_member_weights_are_a_stable_poisson_bootstrap() -> None:
    ids = np.arange(20000)
    w = member_weights(ids, seed=0, n_members=3, val_fraction=1 / math.e)
    assert w.shape == (3, 20000) and w.min() == 0
    assert np.allclose((w == 0).mean(1), 1 / math.e, atol=0.02)  # each member leaves out 1/e, its validation set
    assert np.allclose(w.mean(1), 1.0, atol=0.03)  # Poisson(1): as many draws as labels, like a bootstrap
    assert ((w == 0).all(0)).mean() < 0.07  # ~(1/e)^3 of the labels train no member
    np.testing.assert_array_equal(member_weights(ids[:300], 0, 3, 1 / math.e), w[:, :300])  # growing keeps them
    assert (member_weights(ids, 1, 3, 1 / math.e) != w).any()  # the seed matters
    assert ((member_weights(ids, 0, 3, 0.2) == 0).mean(1) < 0.25).all()


@pytest.mark.parametrize("fraction", [1 / math.e, 0.2, 0.5])
def test_member_weights_match_scipys_poisson_inverse_cdf(fraction: float) -> None:
    """The hand-built inverse CDF draws what scipy.stats.poisson.ppf would (scipy costs ~0.7 s to import)."""
    from scipy.stats import poisson

    u = np.random.default_rng(0).random((3, 200_000))
    lam = -math.log(fraction)
    np.testing.assert_array_equal(_poisson_ppf(u, lam), np.maximum(poisson.ppf(u, lam), 0).astype(np.int64))


@pytest.mark.parametrize("split", ["per_member", "shared"])
def test_no_member_trains_on_its_validation_labels(split: str) -> None:
    _, trainer = make(RewardConfig(use_actions=True, val_split=split))
    boot, counts, val = trainer._resamples(np.arange(600))
    for m in range(3):
        assert not val[m, boot[m]].any()
        np.testing.assert_array_equal(counts[m].numpy() > 0, np.isin(np.arange(600), boot[m].numpy()))
    used = (counts > 0).any(0).float().mean()
    if split == "per_member":  # the ensemble trains on nearly all labels, each member on ~63%
        assert used > 0.9 and (val.float().mean(1) - 1 / math.e).abs().max() < 0.06
        assert (val[0] != val[1]).any()
    else:  # one split for all: 1/e trains nobody
        assert used < 0.7 and (val == val[0]).all()


def test_out_of_bag_validation_stays_clean_across_warm_started_refits() -> None:
    """Random answers: members overfit their own labels, but each member's validation labels are never trained
    on, even after a refit on a grown label set, so validation accuracy stays at chance."""
    cfg = RewardConfig(use_actions=True, adapt_l2=False, l2=0.0, hidden=(128, 128), val_split="per_member")
    _, trainer = make(cfg)
    data = oracle_data(300, target="noise", seed=3)
    first = trainer.fit(PreferenceData(*(f[:200] for f in data[:6])), epochs=40)
    second = trainer.fit(data, epochs=40)
    for stats in (first, second):
        assert stats.train_acc > 0.8
        assert 0.3 < stats.val_acc < 0.7


# --- bootstrap, determinism, checkpoints ---------------------------------------------


def test_bootstrap_makes_identical_members_differ() -> None:
    ens, trainer = make()
    with torch.no_grad():
        for p in ens.parameters():
            p.copy_(p[:1].expand_as(p))  # every member starts as member 0
    trainer.fit(oracle_data(100), epochs=5)
    w = ens.weights[1].detach()
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])


def test_same_seed_same_result() -> None:
    data = oracle_data(100)
    cfg = RewardConfig(use_actions=True, dropout=0.2)
    runs = [make(cfg, seed=s) for s in (0, 0, 1)]
    stats = [trainer.fit(data, epochs=5) for _, trainer in runs]
    assert stats[0] == stats[1] and stats[0] != stats[2]
    a, b, c = (ens.state_dict() for ens, _ in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["weights.0"], c["weights.0"])


def test_state_dict_round_trip() -> None:
    cfg = RewardConfig(use_actions=True, dropout=0.1)
    data = oracle_data(100)
    ens, trainer = make(cfg)
    trainer.fit(data, epochs=5)
    ens2 = RewardEnsemble(OBS, BOX, cfg, seed=7)
    trainer2 = RewardTrainer(ens2, cfg, seed=0)  # the seed (val split) comes from the config, not the checkpoint
    ens2.load_state_dict(roundtrip(ens.state_dict()))
    trainer2.load_state_dict(roundtrip(trainer.state_dict()))
    assert ens2.version == 1 and ens2.fitted
    obs, acts = random_steps(np.random.default_rng(5), (50,), False)
    for x, y in zip(ens.predict(obs, acts), ens2.predict(obs, acts)):
        np.testing.assert_array_equal(x, y)
    # the trainer resumes exactly: same bootstrap draws, dropout masks, Adam moments and L2
    assert trainer.fit(data, epochs=3) == trainer2.fit(data, epochs=3)
    assert all(torch.equal(v, ens2.state_dict()[k]) for k, v in ens.state_dict().items())


# --- inputs and modes ----------------------------------------------------------------


def test_use_actions_false_ignores_actions() -> None:
    cfg = RewardConfig(use_actions=False)
    ens, trainer = make(cfg)
    assert ens.n_features == 3
    trainer.fit(oracle_data(50), epochs=3)
    obs, acts = random_steps(np.random.default_rng(0), (8,), False)
    m1, s1 = ens.predict(obs, acts)
    m2, s2 = ens.predict(obs, acts + 5.0)
    m3, _ = ens.predict(obs, None)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(m1, m3)


def test_discrete_actions_are_one_hot() -> None:
    ens, _ = make(act_space=DISCRETE)
    x = ens.features(np.zeros((2, 4, 3), np.float32), np.array([[0, 1, 2, 1]] * 2))
    assert x.shape == (2, 4, 6)
    np.testing.assert_array_equal(x[0, :, 3:].numpy(), np.eye(3)[[0, 1, 2, 1]])


def test_dropout_is_active_in_training_only() -> None:
    ens, trainer = make(RewardConfig(use_actions=True, dropout=0.5))
    trainer.fit(oracle_data(50), epochs=2)
    obs, acts = random_steps(np.random.default_rng(0), (16,), False)
    x = ens.features(obs, acts)
    ens.train()
    assert not torch.equal(ens.raw_rewards(x), ens.raw_rewards(x))
    first = ens.predict(obs, acts)
    for a, b in zip(first, ens.predict(obs, acts)):
        np.testing.assert_array_equal(a, b)
    ens.eval()
    np.testing.assert_array_equal(first[0], ens.predict(obs, acts)[0])
    assert torch.equal(ens.raw_rewards(x), ens.raw_rewards(x))


def test_unfitted_ensemble_predicts_without_stats() -> None:
    ens, _ = make(replace(RewardConfig(use_actions=True), ensemble_size=1))
    mean, std = ens.predict(*random_steps(np.random.default_rng(0), (4,), False))
    assert mean.shape == (4,) and np.all(std == 0)


def test_fast_predict_matches_the_torch_members() -> None:
    """predict() runs in numpy on views of the parameters; it must equal the torch path, also after a fit."""
    ens, trainer = make(RewardConfig(use_actions=True, output_std=2.0))
    rng = np.random.default_rng(3)
    obs, acts = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 1)).astype(np.float32)
    for _ in range(2):
        r = ens.member_rewards(ens.features(obs, acts)).detach().numpy()
        mean, std = ens.predict(obs, acts)
        np.testing.assert_allclose(mean, r.mean(0), atol=1e-5)
        np.testing.assert_allclose(std, r.std(0), atol=1e-5)
        trainer.fit(oracle_data(40, t=6, seed=4), epochs=3)  # weights and stats change in place


def test_mean_only_predict_and_cached_version_follow_fits_and_loads() -> None:
    """LearnedReward's per-step path (with_std=False, `fitted`) must see every fit and every load."""
    ens, trainer = make(RewardConfig(use_actions=True))
    obs, acts = random_steps(np.random.default_rng(2), (4,), False)
    assert not ens.fitted
    before = ens.predict(obs, acts, with_std=False)
    assert before[1] is None
    trainer.fit(oracle_data(40, t=6), epochs=2)
    assert ens.fitted and ens.version == 1
    after = ens.predict(obs, acts, with_std=False)[0]
    np.testing.assert_array_equal(after, ens.predict(obs, acts)[0])
    assert not np.array_equal(after, before[0])
    fresh = RewardEnsemble(OBS, BOX, RewardConfig(use_actions=True), seed=9)
    fresh.predict(obs, acts)  # caches views and the output scale of the unfitted model
    assert not fresh.fitted
    fresh.load_state_dict(roundtrip(ens.state_dict()))
    assert fresh.fitted and fresh.version == 1  # the load brought the fit count
    np.testing.assert_array_equal(fresh.predict(obs, acts, with_std=False)[0], after)  # and the output scale
    fresh.load_state_dict(roundtrip(RewardEnsemble(OBS, BOX, RewardConfig(use_actions=True)).state_dict()))
    assert not fresh.fitted


# --- temporal cropping ----------------------------------------------------------------


def test_crop_windows_share_a_length_and_stay_inside_the_clips() -> None:
    _, trainer = make(RewardConfig(use_actions=True, crop_fraction=0.4))
    t = 20
    # step k pays 1000 + k, so a window of length L from step s sums to 1000 L + L s + L (L - 1) / 2 (< 1000 L + 590)
    got = trainer._train_returns(1000 + torch.arange(t, dtype=torch.float64).expand(3, 64, 2, t))
    length = torch.div(got, 1000, rounding_mode="floor")
    start = (got - 1000 * length - length * (length - 1) / 2) / length
    assert (length[..., 0] == length[..., 1]).all()  # one length per pair and member
    assert length.min() >= math.ceil(0.6 * t) and length.max() <= t and len(torch.unique(length)) > 3
    assert torch.allclose(start, start.round()) and start.min() >= 0 and (start + length).max() <= t
    assert (start[..., 0] != start[..., 1]).any()  # the two clips' windows are placed independently


def test_no_crop_sums_whole_clips_and_leaves_fits_unchanged() -> None:
    r = torch.randn(3, 8, 2, 10)
    _, trainer = make()
    torch.testing.assert_close(trainer._train_returns(r), r.sum(-1))
    data = oracle_data(60)
    a = make(RewardConfig(use_actions=True))[1].fit(data, epochs=5)
    b = make(RewardConfig(use_actions=True, crop_fraction=0.0))[1].fit(data, epochs=5)
    assert a == b


def test_cropped_fit_still_learns_a_known_reward() -> None:
    ens, trainer = make(RewardConfig(use_actions=True, crop_fraction=0.3))
    stats = trainer.fit(oracle_data(400), epochs=60)
    assert stats.val_acc > 0.85, stats
    obs, acts = random_steps(np.random.default_rng(123), (2000,), False)
    assert np.corrcoef(ens.predict(obs, acts)[0], true_reward(obs, acts, False))[0, 1] > 0.9


# --- the scale the pair sampler sees ---------------------------------------------------------


def test_trained_clip_returns_are_the_raw_sums_and_keep_disagreement_graded() -> None:
    """Normalised returns are raw ones shifted and scaled per member. Where the output std spreads clip returns
    wider than the fit's own scale (Pendulum's 25-step clips at std 1: ~3x), P(left) saturates and the members'
    variance over a pair takes few values; the trained scale keeps it graded."""
    from prefrl.sampling import DisagreementSampler
    from prefrl.clips import Clip

    ens, trainer = make(RewardConfig(use_actions=True, output_std=4.0))
    data = oracle_data(60, t=25)
    trainer.fit(data, epochs=30)
    raw = ens.clip_returns(data.obs_left, data.acts_left, normalised=False)
    norm = ens.clip_returns(data.obs_left, data.acts_left)
    scale = (4.0 / ens.out_std).numpy()  # (M, 1)
    np.testing.assert_allclose(norm, (raw - 25 * ens.out_mean.numpy()) * scale, rtol=1e-4, atol=1e-3)

    clips = [Clip(f"c{i}", 0, data.obs_left[i], data.acts_left[i], np.zeros(25, np.float32)) for i in range(60)]
    variances = {}
    for normalised in (True, False):
        sampler = DisagreementSampler(lambda o, a: ens.clip_returns(o, a, normalised=normalised), factor=10)
        chosen = sampler.select(clips, 200, np.random.default_rng(0))
        variances[normalised] = np.array([c.disagreement for c in chosen])
    assert np.ptp(norm, axis=1).mean() > 2 * np.ptp(raw, axis=1).mean()
    saturated = lambda v: np.mean(np.isclose(v, 0, atol=1e-3) | np.isclose(v, 2 / 9, atol=1e-3))
    assert saturated(variances[True]) > saturated(variances[False]) + 0.2, variances


# --- semi-supervised fit (SURF's pseudo-labels) -------------------------------------


def test_semi_loss_trains_each_member_toward_the_side_it_is_sure_of_and_ignores_the_rest() -> None:
    _, trainer = make(RewardConfig(use_actions=True, semi_ratio=1, semi_threshold=0.95))
    # member 0: left ahead by 5 over the clip (p 0.993: sure); member 1: right ahead by 5; member 2: by 0.5 (unsure)
    lead = torch.tensor([5.0, -5.0, 0.5])
    r = torch.zeros(3, 1, 2, 4)
    r[:, 0, 0, 0] = lead
    r.requires_grad_(True)
    loss = trainer._semi_loss(r)
    assert loss[0] > 0 and loss[1] > 0 and loss[2] == 0
    loss.sum().backward()
    g = r.grad[:, 0, :, 0]  # d loss / d (first step's reward) of left and right clip
    assert g[0, 0] < 0 < g[0, 1]  # member 0 is pushed to prefer left still more
    assert g[1, 0] > 0 > g[1, 1]  # member 1 toward right
    assert (g[2] == 0).all()


def test_semi_off_or_without_clips_leaves_fits_unchanged() -> None:
    data = oracle_data(60)
    pool = random_steps(np.random.default_rng(5), (40, 10), False)
    base = make(RewardConfig(use_actions=True))[1].fit(data, epochs=5)
    assert make(RewardConfig(use_actions=True))[1].fit(data, epochs=5, unlabeled=pool) == base
    assert make(RewardConfig(use_actions=True, semi_ratio=4))[1].fit(data, epochs=5, unlabeled=None) == base
    assert make(RewardConfig(use_actions=True, semi_ratio=4))[1].fit(data, epochs=5, unlabeled=pool) != base


def test_unlabelled_pairs_are_two_different_clips_per_member() -> None:
    _, trainer = make(RewardConfig(use_actions=True, semi_ratio=2))
    ux = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1).expand(5, 3, 4)  # clip i holds the value i
    pairs = trainer._unlabeled_pairs(ux, m=3, k=500)
    assert pairs.shape == (3, 500, 2, 3, 4)
    left, right = pairs[:, :, 0, 0, 0], pairs[:, :, 1, 0, 0]
    assert (left != right).all() and set(left.unique().tolist()) == set(range(5)) == set(right.unique().tolist())
    assert not torch.equal(pairs[0], pairs[1])  # each member draws its own pairs
