"""Score a policy on the TRUE reward: deterministic episodes with fixed reset seeds."""

from __future__ import annotations

from typing import Callable

import numpy as np

from prefrl.config import EnvConfig
from prefrl.envs import make_env

EVAL_SEED = 10_000
"""Episode i is reset with seed EVAL_SEED + i, the same for every method and run."""

Policy = Callable[[np.ndarray], np.ndarray]
"""Raw observation (*obs_shape) -> action."""


def evaluate(policy: Policy, env_cfg: EnvConfig, episodes: int = 10, seed0: int = EVAL_SEED) -> np.ndarray:
    """True return of each episode, shape (episodes,).

    The env is built exactly as in training (fixed horizon included), so the score is
    the return the agent was meant to maximise, never the learned reward.
    """
    env = make_env(env_cfg)
    returns = np.zeros(episodes)
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed0 + ep)
            env.action_space.seed(seed0 + ep)
            done = False
            while not done:
                obs, rew, terminated, truncated, _ = env.step(policy(obs))
                returns[ep] += float(rew)
                done = terminated or truncated
    finally:
        env.close()
    return returns


def random_policy(env_cfg: EnvConfig, seed: int = EVAL_SEED) -> Policy:
    """Uniform random actions, seeded: the score that normalises to 0."""
    env = make_env(env_cfg)
    space = env.action_space
    env.close()
    space.seed(seed)
    return lambda obs: space.sample()
