"""LearnedReward: PPO sees the reward model's output; the true reward rides along in info.

Two ways to hand PPO the learned reward, with the same numbers:
- per step (`per_rollout=False`): a plain VecEnvWrapper, usable under any SB3 algorithm;
- per rollout (the trainer's default): each step returns a placeholder 0 and logs (obs, action); at the
  rollout end `RelabelRollout` predicts every logged step in one batch, scales the rewards exactly as
  VecNormalize would have step by step (`RolloutRewardNormalize`), writes them into PPO's rollout buffer
  and recomputes returns and advantages. The ensemble only changes between rollouts, so nothing is lost by
  waiting, and one batched predict replaces a thousand tiny ones (35-95 us each on Pendulum's 4 envs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize

from prefrl.envs import action_array

if TYPE_CHECKING:
    from prefrl.reward.model import RewardEnsemble

_CHUNK_ROWS = 1024  # steps per batched predict: Pendulum's 4,096-step rollout took 5 ms in chunks of 1,024, 6-9 ms
_CHUNK_BYTES = 16 << 20  # in one batch; fewer rows for big observations (Atari stacks: ~600 a chunk)


class LearnedReward(VecEnvWrapper):
    """Replace the reward with the normalised ensemble mean r(s_t, a_t) plus a constant offset (and, with
    std_weight, that many times the members' std: an optimism bonus or a pessimism penalty).

    Each step's info gets `true_reward`. Per step, an episode end's info also gets `learned_episode_return`
    (per rollout, `rollout_rewards` returns them), so plots can set learned against true return. The
    ensemble is updated in place by the trainer between rollouts, which is the "swap weights" step: no copy,
    nothing to sync. Before the first fit the reward is the offset alone.
    """

    def __init__(self, venv: VecEnv, ensemble: "RewardEnsemble", per_rollout: bool = False, offset: float = 0.0,
                 std_weight: float = 0.0):
        super().__init__(venv)
        self.ensemble = ensemble
        self.offset = np.float32(offset)
        self.std_weight = np.float32(std_weight)
        self.per_rollout = per_rollout
        self._obs: Optional[np.ndarray] = None
        self._acts: Optional[np.ndarray] = None
        self._episode = np.zeros(venv.num_envs, dtype=np.float64)
        self._log: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # obs, acts, dones, ends

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._obs = np.asarray(obs)
        self._episode[:] = 0
        self._log.clear()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._acts = action_array(self.action_space, actions)
        self.venv.step_async(actions)

    def step_wait(self):
        obs, true_rews, dones, infos = self.venv.step_wait()
        ends = np.array(dones, dtype=bool)  # episode ends for the learned return
        for i, info in enumerate(infos):
            info["true_reward"] = float(true_rews[i])
            if "episode" in info:  # a game end inside a continuous episode (Atari) counts too
                ends[i] = True
        if self.per_rollout:
            self._log.append((self._obs, self._acts, np.array(dones, dtype=bool), ends))
            self._obs = np.array(obs)  # a copy: the logged observation must not change under us
            return obs, np.zeros(self.num_envs, dtype=np.float32), dones, infos
        rews = self._predict(self._obs, self._acts)
        for i, ret in self._close_episodes(rews, ends):
            infos[i]["learned_episode_return"] = ret
        self._obs = np.asarray(obs)
        return obs, rews, dones, infos

    def _predict(self, obs: np.ndarray, acts: np.ndarray) -> np.ndarray:
        """(B, ...) -> (B,) float32: the ensemble mean (0 before the first fit) plus std_weight x the members' std
        plus the offset; big batches in chunks."""
        if not self.ensemble.fitted:
            return np.full(len(obs), self.offset, dtype=np.float32)
        chunk = max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // max(1, obs[0].nbytes)))
        parts = [self._mean_and_bonus(obs[i:i + chunk], acts[i:i + chunk]) for i in range(0, len(obs), chunk)]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)).astype(np.float32, copy=False) + self.offset

    def _mean_and_bonus(self, obs: np.ndarray, acts: np.ndarray) -> np.ndarray:
        if not self.std_weight:
            return self.ensemble.predict(obs, acts, with_std=False)[0]
        mean, std = self.ensemble.predict(obs, acts, with_std=True)
        return mean + self.std_weight * std

    def _close_episodes(self, rews: np.ndarray, ends: np.ndarray) -> list[tuple[int, float]]:
        """Add one step's rewards to the running (float64) episode returns; hand back and zero those that ended."""
        self._episode += rews
        if not ends.any():
            return []
        done = [(int(i), float(self._episode[i])) for i in np.flatnonzero(ends)]
        self._episode[ends] = 0.0
        return done

    def clear_log(self) -> None:
        """Forget logged steps (those of the label-collection rollout before PPO starts, say)."""
        self._log.clear()

    def rollout_rewards(self) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """The steps logged since the last call -> rewards (T, n_envs) float32 from one batched predict,
        dones (T, n_envs), and the learned return of every episode that ended in them. Clears the log."""
        n = self.num_envs
        if not self._log:
            return np.zeros((0, n), dtype=np.float32), np.zeros((0, n), dtype=bool), []
        obs, acts, dones, ends = (np.stack(column) for column in zip(*self._log))
        self._log.clear()
        steps = len(obs)
        rews = self._predict(obs.reshape(steps * n, *obs.shape[2:]),
                             acts.reshape(steps * n, *acts.shape[2:])).reshape(steps, n)
        return rews, dones, self._close_rollout_episodes(rews, ends)

    def _close_rollout_episodes(self, rews: np.ndarray, ends: np.ndarray) -> list[float]:
        """_close_episodes over a rollout (T, n_envs) at once: the same float64 sums in the same order (cumsum is
        sequential), a Python step per episode instead of per row (~4 ms a 1,024-step rollout); (step, env) order."""
        found: list[tuple[int, int, float]] = []
        for i in range(rews.shape[1]):
            start, total = 0, self._episode[i]
            for t in np.flatnonzero(ends[:, i]):
                found.append((int(t), i, _running_sum(total, rews[start:t + 1, i])))
                start, total = t + 1, 0.0
            self._episode[i] = _running_sum(total, rews[start:, i])
        return [ret for _, _, ret in sorted(found)]


def _running_sum(total: float, rews: np.ndarray) -> float:
    """total + rews[0] + rews[1] + ... in float64, added left to right like the per-step `+=`."""
    return float(np.cumsum(np.concatenate([[total], rews.astype(np.float64)]))[-1])


class RolloutRewardNormalize(VecNormalize):
    """VecNormalize whose reward scaling runs once per rollout (`scale_rollout`) instead of at each step.

    Observations are normalised per step as usual. The per-step reward (LearnedReward's placeholder 0)
    passes through untouched and leaves the return statistics alone; `scale_rollout` then runs VecNormalize's
    own per-step recurrence over the rollout: discounted return, update of `ret_rms`, division by its std,
    clipping. Built with norm_reward=False so that step() never scales; `scale_rewards` keeps the setting.
    """

    def __init__(self, venv: VecEnv, norm_reward: bool = True, **kwargs):
        super().__init__(venv, norm_reward=False, **kwargs)
        self.scale_rewards = norm_reward
        self._rollout_returns = np.zeros(self.num_envs)

    def _update_reward(self, reward: np.ndarray) -> None:
        pass  # the per-step reward is a placeholder; the statistics are updated in scale_rollout

    def reset(self):
        self._rollout_returns = np.zeros(self.num_envs)
        return super().reset()

    def scale_rollout(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards, dones (T, n_envs) in step order -> the rewards VecNormalize.step_wait would have returned.

        The discounted return runs step by step; the running std after each step's update of `ret_rms`
        (count, mean, M2 of everything seen so far) comes from cumulative sums, not T calls of update()."""
        steps, n = rewards.shape
        rets = np.empty((steps, n))
        ret = self._rollout_returns
        for t in range(steps):
            ret = ret * self.gamma + rewards[t]
            rets[t] = ret
            ret = np.where(dones[t], 0.0, ret)
        self._rollout_returns = ret
        rms = self.ret_rms
        if self.training and steps:
            y = rets - rms.mean  # shifted by the prior mean, against cancellation in the sums
            s1, s2 = np.cumsum(y.sum(1)), np.cumsum((y * y).sum(1))
            count = rms.count + n * np.arange(1, steps + 1)
            var = (rms.count * rms.var + s2 - s1 * s1 / count) / count
            rms.mean, rms.var, rms.count = rms.mean + s1[-1] / count[-1], var[-1], float(count[-1])
        else:
            var = np.full(steps, rms.var)
        if not self.scale_rewards:
            return rewards.astype(np.float32)
        scaled = rewards / np.sqrt(var + self.epsilon)[:, None]
        return np.clip(scaled, -self.clip_reward, self.clip_reward).astype(np.float32)


class RelabelRollout(BaseCallback):
    """At each rollout end, before any other callback sees the rollout: PPO's buffer gets the learned reward
    of every step (LearnedReward.rollout_rewards, scaled by RolloutRewardNormalize) added to what it holds
    (the value bootstraps SB3 adds at time-limit truncations), and the returns and advantages that the buffer
    (RelabelledRolloutBuffer) deferred are computed. `episode_returns` then holds the learned returns of the
    episodes that ended in the rollout."""

    def __init__(self, reward: LearnedReward, norm: RolloutRewardNormalize):
        super().__init__()
        self.reward, self.norm = reward, norm
        self.episode_returns: list[float] = []

    def _on_rollout_start(self) -> None:
        self.reward.clear_log()  # steps taken outside PPO's rollouts (initial labels, evaluation) are not in it

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        rews, dones, self.episode_returns = self.reward.rollout_rewards()
        if rews.shape != buf.rewards.shape:
            raise RuntimeError(f"the learned reward logged {rews.shape} steps x envs but PPO's buffer holds "
                               f"{buf.rewards.shape}; attach RelabelRollout to every learn() call")
        if not isinstance(buf, RelabelledRolloutBuffer):
            raise RuntimeError("PPO's rollout buffer must be a RelabelledRolloutBuffer; build PPO with "
                               "prefrl.loop.make_ppo(cfg, venv, relabelled=True)")
        buf.rewards += self.norm.scale_rollout(rews, dones)
        buf.compute_deferred()


class RelabelledRolloutBuffer(RolloutBuffer):
    """PPO's rollout buffer when RelabelRollout writes the rewards (PPO(rollout_buffer_class=...)).

    collect_rollouts computes returns and advantages on the placeholder rewards just before RelabelRollout
    computes them again on the learned ones; here that first call only keeps its arguments (a Python loop over
    the rollout's steps: ~5 ms a Pendulum rollout). A buffer whose rewards never came refuses to hand PPO its
    batches rather than train it on placeholders."""

    _pending: Optional[tuple] = None

    def reset(self) -> None:
        self._pending = None
        super().reset()

    def compute_returns_and_advantage(self, last_values, dones: np.ndarray) -> None:
        self._pending = (last_values, dones)

    def compute_deferred(self) -> None:
        if self._pending is None:
            raise RuntimeError("no rollout to compute returns for: the buffer was not filled since its reset")
        last_values, dones = self._pending
        self._pending = None
        super().compute_returns_and_advantage(last_values=last_values, dones=dones)

    def get(self, batch_size: Optional[int] = None):
        if self._pending is not None:
            raise RuntimeError("PPO's rollout holds placeholder rewards: attach RelabelRollout (before any other "
                               "callback) to every learn() call of a per-rollout learned reward")
        yield from super().get(batch_size)
