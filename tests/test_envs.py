import gymnasium as gym
import numpy as np
import pytest

from prefrl.config import EnvConfig
from prefrl.envs import AbsorbAfterTermination, EnvError, env_spec, make_env, make_vec_env


def test_unknown_id_suggests_close_ids():
    with pytest.raises(EnvError, match="unknown env id 'CartPol-v1'.*CartPole-v1"):
        env_spec("CartPol-v1")


def test_unsupported_observation_space():
    with pytest.raises(EnvError, match="Discrete observation space.*Box"):
        make_env(EnvConfig(env="FrozenLake-v1"))


def test_fixed_horizon_hides_termination():
    env = make_env(EnvConfig(env="CartPole-v1", max_episode_steps=60))
    env.reset(seed=0)
    lengths, rewards, absorbed = 0, [], False
    while True:
        obs, rew, terminated, truncated, info = env.step(0)  # always push left: CartPole falls in ~10 steps
        lengths += 1
        rewards.append(rew)
        absorbed |= info.get("absorbed", False)
        assert not terminated
        if truncated:
            break
    assert lengths == 60 and absorbed
    assert rewards[-1] == 0.0 and sum(rewards) < 30


def test_without_fixed_horizon_episodes_end_early():
    env = make_env(EnvConfig(env="CartPole-v1", fixed_horizon=False))
    env.reset(seed=0)
    for t in range(500):
        *_, terminated, truncated, _ = env.step(0)
        if terminated:
            break
    assert terminated and t < 50


def test_absorb_wrapper_repeats_last_observation():
    env = AbsorbAfterTermination(gym.make("CartPole-v1"), max_steps=40)
    env.reset(seed=1)
    obs_after = []
    for _ in range(40):
        obs, rew, term, trunc, info = env.step(1)
        if info.get("absorbed"):
            obs_after.append(obs)
    assert len(obs_after) > 5
    assert all(np.array_equal(o, obs_after[0]) for o in obs_after)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "MountainCarContinuous-v0", "Acrobot-v1"])
def test_vec_env_builds_and_steps(env_id):
    venv = make_vec_env(EnvConfig(env=env_id, n_envs=2), seed=0)
    venv.reset()
    obs, rew, done, info = venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
    assert obs.shape == (2, *venv.observation_space.shape)
    venv.close()


@pytest.mark.parametrize("spec,f", [("symlog", lambda r: -np.log1p(-r)), ("affine:0.5,2", lambda r: 0.5 * r + 2),
                                    ("power:2", lambda r: -(r * r))])
def test_reward_transform_reaches_ppo_but_not_the_logged_returns(spec, f):
    """PPO sees f(r); Monitor's episode return (progress.csv, plots) stays the true one."""
    shaped = make_vec_env(EnvConfig(env="Pendulum-v1", n_envs=2, reward_transform=spec), seed=0)
    plain = make_vec_env(EnvConfig(env="Pendulum-v1", n_envs=2), seed=0)
    shaped.reset(), plain.reset()
    rng = np.random.default_rng(0)
    true_sum = np.zeros(2)
    for _ in range(200):  # one full episode
        act = rng.uniform(-2, 2, size=(2, 1)).astype(np.float32)
        _, r_shaped, _, info = shaped.step(act)
        _, r_true, _, _ = plain.step(act)
        true_sum += r_true
        assert np.all(r_true < 0) and np.allclose(r_shaped, f(r_true), atol=1e-5)
    assert np.allclose([i["episode"]["r"] for i in info], true_sum, atol=1e-3)
