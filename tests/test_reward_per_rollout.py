"""The per-rollout learned reward must give PPO the same rollout as the per-step one, only cheaper."""

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from prefrl.config import EnvConfig, PPOConfig, TrainConfig
from prefrl.loop import Trainer


class _Grab(BaseCallback):
    """Copies of PPO's buffer at each rollout end, after every callback listed before this one."""

    def __init__(self):
        super().__init__()
        self.rollouts: list[dict[str, np.ndarray]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        b = self.model.rollout_buffer
        self.rollouts.append(dict(rewards=b.rewards.copy(), advantages=b.advantages.copy(), returns=b.returns.copy(),
                                  ret_var=np.array(self.model.get_env().ret_rms.var, dtype=np.float64)))


def _rollouts(tmp_path, per_rollout: bool, env_id: str, learned_returns: list, n_rollouts: int = 2):
    torch.manual_seed(0)
    # 160 steps x 2 envs a rollout; Pendulum's 200-step episodes end inside the second rollout, so the value
    # bootstrap at truncation and the carried discounted return are both exercised
    cfg = TrainConfig(env=EnvConfig(env=env_id, n_envs=2), ppo=PPOConfig(n_steps=160, minibatch_size=64, n_epochs=2),
                      seed=3, results_dir=tmp_path, progress_bar=False, reward_per_rollout=per_rollout).validate()
    run = tmp_path / f"run_{per_rollout}"
    run.mkdir()
    t = Trainer(cfg, run, resuming=False)
    t.ensemble.version = 1  # "fitted": random weights, the same for both (seeded)
    if not per_rollout:  # the per-step path reports learned returns in infos
        class Infos(BaseCallback):
            def _on_step(self) -> bool:
                learned_returns.extend(i["learned_episode_return"] for i in self.locals["infos"]
                                       if "learned_episode_return" in i)
                return True
        extra = [Infos()]
    else:
        extra = []
    grab = _Grab()
    t.model.learn(n_rollouts * cfg.rollout_steps, callback=[c for c in (t.relabel, grab, *extra) if c is not None])
    if per_rollout:
        learned_returns.extend(t.relabel.episode_returns)  # (the last rollout's; the first ends no episode)
    t.close()
    return grab.rollouts


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_per_rollout_reward_matches_per_step(tmp_path, env_id):
    step_returns: list[float] = []
    roll_returns: list[float] = []
    per_step = _rollouts(tmp_path, False, env_id, step_returns)
    per_roll = _rollouts(tmp_path, True, env_id, roll_returns)
    assert len(per_step) == len(per_roll) == 2
    for a, b in zip(per_step, per_roll):
        assert np.abs(a["rewards"]).max() > 0  # a real learned reward, not the unfitted 0
        for k in ("rewards", "advantages", "returns", "ret_var"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    if env_id == "Pendulum-v1":
        assert len(roll_returns) == 2 and step_returns[-2:] == pytest.approx(roll_returns, rel=1e-4)


def _small_trainer(tmp_path) -> tuple[TrainConfig, Trainer]:
    """A per-rollout (default) Pendulum trainer with 64-step rollouts of 2 envs."""
    cfg = TrainConfig(env=EnvConfig(env="Pendulum-v1", n_envs=2), ppo=PPOConfig(n_steps=64, minibatch_size=64,
                      n_epochs=1), seed=0, results_dir=tmp_path, progress_bar=False).validate()
    run = tmp_path / "run"
    run.mkdir()
    return cfg, Trainer(cfg, run, resuming=False)


def test_without_relabel_the_buffer_would_hold_only_placeholders(tmp_path):
    """The check above can fail: PPO's buffer without RelabelRollout holds no learned reward at all."""
    cfg, t = _small_trainer(tmp_path)
    assert cfg.reward_per_rollout  # the default
    t.ensemble.version = 1
    grab = _Grab()
    with pytest.raises(RuntimeError, match="placeholder rewards"):  # and PPO refuses to train on them
        t.model.learn(cfg.rollout_steps, callback=grab)
    assert np.all(grab.rollouts[0]["rewards"] == 0)
    t.model.learn(cfg.rollout_steps, callback=[t.relabel, grab], reset_num_timesteps=False)
    assert np.abs(grab.rollouts[1]["rewards"]).max() > 0
    t.close()


def test_steps_the_relabel_did_not_see_are_an_error(tmp_path):
    """A learn() call without RelabelRollout leaves its steps logged; a relabel that then finds more steps than
    PPO's buffer holds must say so instead of writing rewards against the wrong steps."""
    cfg, t = _small_trainer(tmp_path)
    with pytest.raises(RuntimeError, match="placeholder rewards"):  # no relabel: 64 steps stay logged
        t.model.learn(cfg.rollout_steps)

    class SkipStartClear(type(t.relabel)):
        def _on_rollout_start(self) -> None:
            pass

    with pytest.raises(RuntimeError, match="attach RelabelRollout"):
        t.model.learn(cfg.rollout_steps, callback=SkipStartClear(t.relabel.reward, t.relabel.norm),
                      reset_num_timesteps=False)
    t.close()


def test_relabel_needs_the_deferring_buffer(tmp_path):
    """A PPO built without make_ppo(..., relabelled=True) would compute its returns twice: refused by name."""
    from prefrl.loop import make_ppo

    cfg, t = _small_trainer(tmp_path)
    plain = make_ppo(cfg, t.venv)
    with pytest.raises(RuntimeError, match="relabelled=True"):
        plain.learn(cfg.rollout_steps, callback=t.relabel)
    t.close()
