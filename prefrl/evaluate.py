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


def checkpoint_policy(run_dir) -> tuple[Policy, "TrainConfig"]:  # noqa: F821
    """The deterministic policy of a run's latest checkpoint, on raw observations, and the run's config.

    Observations are normalised with the checkpoint's frozen VecNormalize statistics, as in training.
    """
    from pathlib import Path

    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from prefrl.config import TrainConfig
    from prefrl.loop import RunError, _set_rms, latest_checkpoint, make_ppo

    run_dir = Path(run_dir)
    cfg = TrainConfig.from_json((run_dir / "config.json").read_text())
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise RunError(f"{run_dir} has no checkpoint yet; let the run reach its first checkpoint")
    # the same VecNormalize as training, frozen at the checkpoint's statistics; PPO gets weights only, no pickle
    venv = VecNormalize(DummyVecEnv([lambda: make_env(cfg.env)]), norm_obs=cfg.env.normalize_obs,
                        norm_reward=False, training=False)
    with np.load(ckpt / "vecnormalize.npz") as rms:
        _set_rms(venv, rms)
    model = make_ppo(cfg, venv)
    model.set_parameters(str(ckpt / "ppo.zip"), exact_match=True, device="cpu")
    venv.close()  # only its spaces and statistics are needed from here on

    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(venv.normalize_obs(obs), deterministic=True)[0]

    return act, cfg


def policy_video(run_dir, out, steps: int = 600, seed: int = EVAL_SEED, fps: int = 30) -> dict:
    """Render `steps` steps of a run's final policy to an H.264 MP4 at `out`; returns the last step's info
    (e.g. points won and rally length for MiniPong), so a caption can say what the video shows."""
    from pathlib import Path

    from prefrl.clips import write_video

    policy, cfg = checkpoint_policy(run_dir)
    env = make_env(cfg.env, render=True)
    frames, info = [], {}
    try:
        obs, _ = env.reset(seed=seed)
        for _ in range(steps):
            frames.append(env.render())
            obs, _, terminated, truncated, info = env.step(policy(obs))
            if terminated or truncated:
                obs, _ = env.reset()
    finally:
        env.close()
    write_video(np.stack(frames), Path(out), fps=fps)
    return {k: v for k, v in info.items() if np.isscalar(v)}
