import numpy as np
import pytest
import torch

from prefrl.config import EnvConfig, RewardConfig
from prefrl.envs import make_vec_env
from prefrl.reward.model import RewardEnsemble
from prefrl.reward.wrapper import LearnedReward


def wrapped(env_id="Pendulum-v1", n_envs=2, fitted=True, offset=0.0, per_rollout=False, std_weight=0.0):
    venv = make_vec_env(EnvConfig(env=env_id, n_envs=n_envs), seed=0)
    ens = RewardEnsemble(venv.observation_space, venv.action_space, RewardConfig(), seed=0)
    if fitted:
        ens.version = 1
    return LearnedReward(venv, ens, per_rollout=per_rollout, offset=offset, std_weight=std_weight), ens


def test_reward_is_the_ensemble_mean_and_true_reward_rides_in_info():
    env, ens = wrapped()
    obs = env.reset()
    acts = np.array([[0.5], [-1.0]], dtype=np.float32)
    expected, _ = ens.predict(obs, acts)
    _, rews, _, infos = env.step(acts)
    np.testing.assert_allclose(rews, expected, rtol=1e-5)
    true = [info["true_reward"] for info in infos]
    assert all(t <= 0 for t in true) and not np.allclose(true, rews)


def test_unfitted_model_gives_zero_reward():
    env, _ = wrapped(fitted=False)
    env.reset()
    _, rews, _, infos = env.step(np.zeros((2, 1), dtype=np.float32))
    assert np.all(rews == 0) and "true_reward" in infos[0]


@pytest.mark.parametrize("per_rollout", [False, True])
def test_offset_shifts_what_ppo_sees_and_nothing_else(per_rollout):
    env, ens = wrapped(offset=-1.5, per_rollout=per_rollout)
    plain, _ = wrapped()  # the same seeded envs, no offset: the true reward to compare with
    obs = env.reset()
    plain.reset()
    acts = np.array([[0.5], [-1.0]], dtype=np.float32)
    mean, std = ens.predict(obs, acts)
    _, rews, _, infos = env.step(acts)
    _, _, _, plain_infos = plain.step(acts)
    if per_rollout:
        rews = env.rollout_rewards()[0][0]
    np.testing.assert_allclose(rews, mean - 1.5, rtol=1e-5)
    assert np.all(std > 0) and infos[0]["true_reward"] <= 0
    # the members (what the fit and the pair sampler see) and the true reward are untouched
    np.testing.assert_array_equal(ens.predict(obs, acts)[0], mean)
    assert [i["true_reward"] for i in infos] == [i["true_reward"] for i in plain_infos]
    unfitted, _ = wrapped(fitted=False, offset=-1.5)
    unfitted.reset()
    assert np.all(unfitted.step(acts)[1] == np.float32(-1.5))


@pytest.mark.parametrize("per_rollout", [False, True])
@pytest.mark.parametrize("weight", [0.5, -1.0])
def test_std_weight_adds_the_members_spread_to_what_ppo_sees(per_rollout, weight):
    env, ens = wrapped(per_rollout=per_rollout, std_weight=weight)
    obs = env.reset()
    acts = np.array([[0.5], [-1.0]], dtype=np.float32)
    mean, std = ens.predict(obs, acts)
    _, rews, _, _ = env.step(acts)
    if per_rollout:
        rews = env.rollout_rewards()[0][0]
    assert np.all(std > 1e-3)  # members of different initial weights disagree, so the term is visible
    np.testing.assert_allclose(rews, mean + weight * std, rtol=1e-5)


def test_episode_end_reports_learned_return_beside_monitor_true_return():
    env, ens = wrapped(n_envs=1)
    obs = env.reset()
    total, true_total = 0.0, 0.0
    for _ in range(200):  # one Pendulum episode
        act = np.array([[0.3]], dtype=np.float32)
        r_exp, _ = ens.predict(obs, act)
        obs, rews, dones, infos = env.step(act)
        total += float(r_exp[0])
        true_total += infos[0]["true_reward"]
    assert dones[0]
    assert infos[0]["learned_episode_return"] == pytest.approx(total, rel=1e-4)
    assert infos[0]["episode"]["r"] == pytest.approx(true_total, rel=1e-4)  # Monitor: the true return


def test_discrete_actions():
    env, ens = wrapped("CartPole-v1")
    env.reset()
    _, rews, _, infos = env.step(np.array([0, 1]))
    assert rews.shape == (2,) and infos[1]["true_reward"] == 1.0


def test_weights_swapped_in_place_take_effect_at_once():
    env, ens = wrapped()
    env.reset()
    _, before, _, _ = env.step(np.zeros((2, 1), dtype=np.float32))
    with torch.no_grad():
        ens.out_mean.add_(5.0)  # what a refit does: updates the same module the wrapper holds
    _, after, _, _ = env.step(np.zeros((2, 1), dtype=np.float32))
    assert np.all(after < before - 1.0)


def test_rollout_episode_returns_are_the_per_step_sums_exactly():
    """The per-rollout bookkeeping of learned episode returns adds the same float64 numbers in the same order as
    the per-step one, episodes carried across rollouts and several ends per env and rollout included."""
    rng = np.random.default_rng(0)
    a, _ = wrapped(n_envs=3)
    b, _ = wrapped(n_envs=3)
    for _ in range(3):  # rollouts
        rews = rng.normal(size=(40, 3)).astype(np.float32) * 10
        ends = rng.random((40, 3)) < 0.08
        ends[:, 2] = False  # one env ends nothing in some rollout: its sum carries over
        stepwise = [ret for t in range(40) for _, ret in a._close_episodes(rews[t], ends[t])]
        assert b._close_rollout_episodes(rews, ends) == stepwise
        assert np.array_equal(a._episode, b._episode)
    assert len(stepwise) > 3
