"""Environments: any gymnasium id with a Box observation and Box/Discrete actions.

`make_vec_env` builds the bottom of the data flow in ../shared/DESIGN.md:
gymnasium env -> fixed horizon -> Monitor (true episode return) -> VecEnv.
The reward-side wrappers (ClipRecorder, LearnedReward, VecNormalize) go on top in
`prefrl.loop`.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from prefrl.config import EnvConfig


class EnvError(ValueError):
    """An env that prefrl cannot use; the message says how to fix it."""


def register_envs(env_id: str = "") -> None:
    """Register ids that live outside gymnasium: ours (`prefrl/...`, in envs/) and ALE's.

    Imported lazily so classic-control runs never pay for ale_py or our envs.
    """
    if env_id.startswith("prefrl/") or not env_id:
        import envs  # noqa: F401  (registers prefrl/... ids)
    if env_id.startswith("ALE/") or not env_id:
        import ale_py

        gym.register_envs(ale_py)


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """Look up a registered id, suggesting close ids for a typo."""
    register_envs(env_id)
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        register_envs()  # so a typo can be matched against every id we know
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.pprint_registry() for ids"
        raise EnvError(f"unknown env id '{env_id}'; {hint}") from None


def check_spaces(env_id: str, obs_space: gym.Space, act_space: gym.Space) -> None:
    if not isinstance(obs_space, spaces.Box):
        raise EnvError(f"{env_id} has a {type(obs_space).__name__} observation space; prefrl needs a Box "
                       "(wrap the env with gymnasium.wrappers.FlattenObservation)")
    if not isinstance(act_space, (spaces.Box, spaces.Discrete)):
        raise EnvError(f"{env_id} has a {type(act_space).__name__} action space; prefrl supports Box or Discrete "
                       "actions (pick another env or wrap its action space)")


class AbsorbAfterTermination(gym.Wrapper):
    """Hide episode ends from the reward: after `terminated` the env stays in an absorbing state.

    Termination leaks information about the reward (an agent learns that ending early
    is good or bad from the episode length alone), so with a fixed horizon every episode
    runs to the time limit: after the real episode ends, the last observation repeats
    with true reward 0 and the episode is truncated at `max_steps`.
    """

    def __init__(self, env: gym.Env, max_steps: int):
        super().__init__(env)
        self.max_steps = max_steps
        self._t = 0
        self._absorbed: Optional[Any] = None
        self._absorbed_info: dict[str, Any] = {}

    def reset(self, **kwargs):
        self._t = 0
        self._absorbed = None
        return self.env.reset(**kwargs)

    def step(self, action):
        self._t += 1
        if self._absorbed is not None:
            return self._absorbed, 0.0, False, self._t >= self.max_steps, self._absorbed_info
        obs, rew, terminated, truncated, info = self.env.step(action)
        if terminated:
            self._absorbed = obs
            # the last real info (episode metrics such as points won) stays visible to Monitor
            self._absorbed_info = {**info, "absorbed": True}
        return obs, rew, False, truncated or self._t >= self.max_steps, info


def episode_limit(cfg: EnvConfig) -> Optional[int]:
    return cfg.max_episode_steps or env_spec(cfg.env).max_episode_steps


def make_env(cfg: EnvConfig, render: bool = False) -> gym.Env:
    """One env, wrapped for a fixed horizon when asked. Raises EnvError on unusable envs."""
    env_spec(cfg.env)
    kwargs: dict[str, Any] = {}
    if cfg.max_episode_steps:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    if render:
        kwargs["render_mode"] = "rgb_array"
    env = gym.make(cfg.env, **kwargs)
    check_spaces(cfg.env, env.observation_space, env.action_space)
    if cfg.fixed_horizon:
        limit = episode_limit(cfg)
        if limit is None:
            env.close()
            raise EnvError(f"{cfg.env} has no time limit, so a fixed horizon is undefined; "
                           "set --max-episode-steps N or --no-fixed-horizon")
        env = AbsorbAfterTermination(env, limit)
    return env


def make_vec_env(cfg: EnvConfig, seed: int, render: bool = False) -> VecEnv:
    """n_envs copies under Monitor, seeded seed, seed+1, ..."""
    vec_cls = SubprocVecEnv if cfg.vec_env == "subproc" and cfg.n_envs > 1 else DummyVecEnv
    if vec_cls is SubprocVecEnv:
        make_env(cfg, render).close()  # fail here with a clear error, not inside a worker process
    env_fn: Callable[[], gym.Env] = lambda: make_env(cfg, render)  # noqa: E731
    return sb3_make_vec_env(env_fn, n_envs=cfg.n_envs, seed=seed, vec_env_cls=vec_cls,
                            monitor_kwargs={"info_keywords": episode_metrics(cfg.env)})


def episode_metrics(env_id: str) -> tuple[str, ...]:
    """Per-episode numbers an env reports in its final `info` (declared in its metadata as
    "episode_metrics", e.g. points won or rally length); Monitor copies them into episode infos."""
    spec = env_spec(env_id)
    entry = spec.entry_point
    if callable(entry):
        cls = entry
    else:
        import importlib

        mod, _, name = str(entry).partition(":")
        cls = getattr(importlib.import_module(mod), name)
    return tuple(getattr(cls, "metadata", {}).get("episode_metrics", ()))


def action_array(act_space: gym.Space, actions: np.ndarray) -> np.ndarray:
    """Actions as stored in clips: int64 indices for Discrete, float32 for Box."""
    if isinstance(act_space, spaces.Discrete):
        return np.asarray(actions, dtype=np.int64).reshape(-1)
    return np.asarray(actions, dtype=np.float32).reshape((-1, *act_space.shape))
