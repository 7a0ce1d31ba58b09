"""LearnedReward: PPO sees the reward model's output; the true reward rides along in info."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from prefrl.envs import action_array

if TYPE_CHECKING:
    from prefrl.reward.model import RewardEnsemble


class LearnedReward(VecEnvWrapper):
    """Replace the reward with the normalised ensemble mean r(s_t, a_t).

    Each step's info gets `true_reward`; at an episode end it also gets
    `learned_episode_return`, so plots can set learned against true return. The
    ensemble is updated in place by the trainer between rollouts, which is the
    "swap weights" step: no copy, nothing to sync. Before the first fit the reward is 0.
    """

    def __init__(self, venv: VecEnv, ensemble: "RewardEnsemble"):
        super().__init__(venv)
        self.ensemble = ensemble
        self._obs: Optional[np.ndarray] = None
        self._acts: Optional[np.ndarray] = None
        self._episode = np.zeros(venv.num_envs, dtype=np.float64)

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._obs = np.asarray(obs)
        self._episode[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._acts = action_array(self.action_space, actions)
        self.venv.step_async(actions)

    def step_wait(self):
        obs, true_rews, dones, infos = self.venv.step_wait()
        if self.ensemble.fitted:
            rews, _ = self.ensemble.predict(self._obs, self._acts, with_std=False)
        else:
            rews = np.zeros(self.num_envs, dtype=np.float32)
        self._episode += rews
        for i, info in enumerate(infos):
            info["true_reward"] = float(true_rews[i])
            if dones[i] or "episode" in info:  # a game end inside a continuous episode (Atari) counts too
                info["learned_episode_return"] = float(self._episode[i])
                self._episode[i] = 0.0
        self._obs = np.asarray(obs)
        return obs, rews, dones, infos
