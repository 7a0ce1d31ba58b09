"""The paper's Atari reward predictor (CnnRewardEnsemble): shapes, modes, checkpoints, and a fit on a few labels."""

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from prefrl.config import ConfigError, RewardConfig
from prefrl.reward.model import CnnRewardEnsemble, RewardEnsemble, make_ensemble
from prefrl.reward.train import PreferenceData, RewardTrainer

IMAGES = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
ACTIONS = gym.spaces.Discrete(6)
CNN = RewardConfig(arch="cnn", use_actions=False, ensemble_size=2, dropout=0.5, output_std=0.05)


def frames(rng: np.random.Generator, *lead: int) -> np.ndarray:
    return rng.integers(0, 256, size=(*lead, 4, 84, 84), dtype=np.uint8)


def test_layer_shapes_follow_the_paper():
    ens = make_ensemble(IMAGES, ACTIONS, CNN)
    assert isinstance(ens, CnnRewardEnsemble)
    # 84 -> 7x7/3 -> 26 -> 5x5/2 -> 11 -> 3x3/1 -> 9 -> 3x3/1 -> 7; 16 filters each; dense 64; scalar
    assert [tuple(w.shape) for w in ens.weights] == [(2, 16, 4 * 49), (2, 16, 16 * 25), (2, 16, 16 * 9),
                                                      (2, 16, 16 * 9), (2, 16 * 7 * 7, 64), (2, 64, 1)]
    assert all(w.dim() == 3 for w in ens.weights)  # the trainer's per-member L2: w.pow(2).sum((1, 2)) -> (M,)


def test_output_shapes():
    rng = np.random.default_rng(0)
    ens = make_ensemble(IMAGES, ACTIONS, CNN).eval()
    x = ens.features(frames(rng, 5))
    assert x.shape == (5, 4 * 84 * 84) and x.dtype == torch.uint8  # raw bytes: a fit holds clips 4x smaller
    assert ens.raw_rewards(x).shape == (2, 5)  # one batch shared by the members
    assert ens.raw_rewards(torch.stack([x, x.flip(0)])).shape == (2, 5)  # one batch per member
    mean, std = ens.predict(frames(rng, 3), None)
    assert mean.shape == (3,) and std.shape == (3,) and mean.dtype == np.float32
    assert ens.clip_returns(frames(rng, 4, 6), None).shape == (2, 4)


def test_prediction_uses_eval_mode_even_after_training():
    rng = np.random.default_rng(1)
    ens = make_ensemble(IMAGES, ACTIONS, CNN)
    obs = frames(rng, 6)
    ens.train()  # the trainer leaves the ensemble in train mode after a fit
    gen = torch.Generator().manual_seed(0)
    x = ens.features(obs)
    a, b = ens.raw_rewards(x, gen), ens.raw_rewards(x, gen)
    assert not torch.allclose(a, b)  # dropout and batch statistics in train mode
    np.testing.assert_array_equal(ens.predict(obs, None)[0], ens.predict(obs, None)[0])
    assert ens.training  # predict did not switch the mode for the trainer


def test_big_batches_without_gradient_are_chunked_exactly():
    rng = np.random.default_rng(2)
    ens = make_ensemble(IMAGES, ACTIONS, CNN).eval()
    x = ens.features(frames(rng, 300))  # > CNN_CHUNK images
    with torch.no_grad():
        whole = ens.raw_rewards(x)
        parts = torch.cat([ens.raw_rewards(x[:150]), ens.raw_rewards(x[150:])], dim=1)
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip():
    rng = np.random.default_rng(3)
    ens = make_ensemble(IMAGES, ACTIONS, CNN, seed=0)
    ens.train()
    ens.raw_rewards(ens.features(frames(rng, 8)), torch.Generator().manual_seed(0))  # move batch-norm statistics
    buf = io.BytesIO()
    torch.save(ens.state_dict(), buf)
    other = make_ensemble(IMAGES, ACTIONS, CNN, seed=9)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    obs = frames(rng, 4)
    np.testing.assert_allclose(other.predict(obs, None)[0], ens.predict(obs, None)[0], rtol=1e-5, atol=1e-6)


def test_bad_settings_say_how_to_fix_them():
    with pytest.raises(ConfigError, match="--arch cnn needs image observations.*use --arch mlp"):
        make_ensemble(gym.spaces.Box(-1, 1, (3,), np.float32), ACTIONS, CNN)
    with pytest.raises(ConfigError, match="--no-use-actions"):
        make_ensemble(IMAGES, ACTIONS, RewardConfig(arch="cnn", use_actions=True))
    assert isinstance(make_ensemble(gym.spaces.Box(-1, 1, (3,), np.float32), ACTIONS, RewardConfig()), RewardEnsemble)


def test_fits_a_handful_of_labels():
    """Clips showing a bright square are better: 16 labels teach the CNN ensemble to rank held-out clips."""
    rng = np.random.default_rng(4)
    torch.manual_seed(0)

    def clips(n: int) -> tuple[np.ndarray, np.ndarray]:
        obs = rng.integers(0, 40, size=(n, 4, 4, 84, 84), dtype=np.uint8)  # 4-step clips of noise
        good = np.arange(n) % 2 == 0
        obs[good, :, :, 30:54, 30:54] = 230
        return obs, good

    cfg = RewardConfig(arch="cnn", use_actions=False, ensemble_size=2, dropout=0.0, output_std=0.05, lr=1e-3,
                       batch_size=8)
    ens = make_ensemble(IMAGES, ACTIONS, cfg, seed=0)
    left, good_left = clips(16)
    right, good_right = clips(16)
    right, good_right = right[::-1].copy(), good_right[::-1].copy()  # left and right differ in every label
    target = np.where(good_left, 1.0, 0.0).astype(np.float32)
    stats = RewardTrainer(ens, cfg, seed=0).fit(PreferenceData(np.arange(16), left, None, right, None, target), 8)
    assert ens.fitted and stats.train_acc == 1.0
    test, good = clips(6)
    returns = ens.clip_returns(test, None).mean(0)
    assert returns[good].min() > returns[~good].max()
    mean, _ = ens.predict(test[:, 0], None)
    assert abs(float(np.std(ens.predict(np.concatenate([left, right])[:, 0], None)[0])) - 0.05) < 0.03
    assert mean[good].mean() > mean[~good].mean()
