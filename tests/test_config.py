import math
from dataclasses import replace

import pytest

from prefrl.config import ConfigError, EnvConfig, FeedbackConfig, PPOConfig, RewardConfig, TrainConfig


def test_json_round_trip():
    cfg = TrainConfig(seed=3, feedback=FeedbackConfig(total_labels=77, teacher="myopic"),
                      reward=RewardConfig(hidden=(32,)))
    assert TrainConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("change,match", [
    (dict(feedback=FeedbackConfig(total_labels=0)), "--total-labels must be > 0"),
    (dict(feedback=FeedbackConfig(total_labels=-5)), "--total-labels must be > 0"),
    (dict(feedback=FeedbackConfig(clip_length=0)), "--clip-length"),
    (dict(reward=RewardConfig(val_fraction=1.5)), "--val-fraction"),
    (dict(reward=RewardConfig(l2=math.nan)), "finite"),
    (dict(reward=RewardConfig(output_mean=math.inf)), "--output-mean must be a finite number"),
    (dict(total_timesteps=10**12), "absurd"),
    (dict(reward=RewardConfig(crop_fraction=1.0)), r"--crop-fraction must be in \[0, 1\)"),
    (dict(reward=RewardConfig(crop_fraction=0.2, objective="target")),
     "applies to the preference objective.*set --crop-fraction 0"),
    (dict(reward=RewardConfig(semi_ratio=-1)), "--semi-ratio must be >= 0"),
    (dict(reward=RewardConfig(semi_threshold=0.5)), r"--semi-threshold must be in \(0.5, 1\)"),
    (dict(reward=RewardConfig(semi_weight=0.0)), "--semi-weight must be > 0"),
    (dict(reward=RewardConfig(semi_ratio=2, arch="cnn", use_actions=False)), "MLP reward model; set --semi-ratio 0"),
    (dict(ppo=PPOConfig(target_kl=0.0)), "--target-kl must be > 0"),
    (dict(env=EnvConfig(reward_transform="symlog")), "--reward-transform only applies with --reward-source true"),
    (dict(env=EnvConfig(reward_transform="cube"), reward_source="true"), "unknown --reward-transform 'cube'"),
    (dict(env=EnvConfig(reward_transform="affine:1"), reward_source="true"), "is not affine:A,B"),
    (dict(env=EnvConfig(reward_transform="affine:-1,0"), reward_source="true"), "A > 0"),
    (dict(env=EnvConfig(reward_transform="power:x"), reward_source="true"), "is not power:P"),
    (dict(env=EnvConfig(reward_transform="power:0"), reward_source="true"), "P > 0"),
])
def test_bad_values_are_refused_with_the_flag_named(change, match):
    with pytest.raises(ConfigError, match=match):
        replace(TrainConfig(), **change).validate()


def test_corrupt_json_is_one_clear_line():
    with pytest.raises(ConfigError, match="not valid JSON") as e:
        TrainConfig.from_json("{not json", source="x/config.json")
    assert "\n" not in str(e.value)


def test_unknown_setting_refused():
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_json('{"bogus": 1}')


@pytest.mark.parametrize("env_id, val_split, crop, clip", [("ALE/Pong-v5", "shared", 0.0, 25),
                                                            ("Hopper-v5", "per_member", 0.3, 60),
                                                            ("prefrl/MiniPong-v0", "shared", 0.0, 25),
                                                            ("prefrl/LavaLedge-v0", "shared", 0.0, 25)])
def test_presets_keep_the_reward_settings_their_results_were_measured_with(env_id, val_split, crop, clip):
    """Classic-control defaults moved (refit epochs 10 -> 6, per_member validation, a -1.5 offset, 15-step
    clips); the presets must not, except MuJoCo's measured move to per_member validation with cropping."""
    from prefrl.presets import defaults

    cfg = defaults(env_id)
    base = TrainConfig().reward
    assert base.epochs == 6 and base.val_split == "per_member" and TrainConfig().reward_offset == -1.5
    assert base.crop_fraction == 0.0 and TrainConfig().feedback.clip_length == 15
    assert cfg.reward.epochs == 10 and cfg.reward_offset == 0.0
    assert cfg.reward.val_split == val_split and cfg.reward.crop_fraction == crop
    assert cfg.feedback.clip_length == clip


def test_the_target_objective_drops_a_presets_cropping_unless_asked_for():
    """The regression ablation fits whole clips; on MuJoCo (cropping by default) it must still start, from the
    CLI and as a sweep variant, while an explicit --crop-fraction with it stays an error."""
    from prefrl.cli import parse_train_config
    from prefrl.config import VARIANTS
    from prefrl.presets import defaults

    cfg = parse_train_config(["--env", "Hopper-v5", "--objective", "target"])
    assert cfg.reward.objective == "target" and cfg.reward.crop_fraction == 0.0
    cfg.validate()
    variant = VARIANTS["target"](defaults("Hopper-v5"))
    assert variant.reward.crop_fraction == 0.0
    variant.validate()
    asked = parse_train_config(["--env", "Hopper-v5", "--objective", "target", "--crop-fraction", "0.2"])
    with pytest.raises(ConfigError, match="set --crop-fraction 0"):
        asked.validate()


def test_the_reward_offset_defaults_to_a_shift_only_where_no_episode_ends_early():
    from dataclasses import replace

    cfg = TrainConfig()
    assert cfg.env.fixed_horizon and cfg.reward_offset == -1.5
    ends = replace(cfg, env=replace(cfg.env, fixed_horizon=False))  # a negative constant would pay for dying
    assert ends.reward_offset == 0.0
    endless = replace(ends, env=replace(ends.env, continuous_episode=True))
    assert endless.reward_offset == -1.5
    assert replace(ends, reward=replace(cfg.reward, output_mean=-2.0)).reward_offset == -2.0  # a flag always wins
    assert TrainConfig.from_json(cfg.to_json()).reward.output_mean is None  # config.json keeps "unset"


@pytest.mark.parametrize("ppo", [PPOConfig(),
                                 PPOConfig(lr_schedule="linear", target_kl=0.02, normalize_advantage=False)])
def test_ppo_gets_the_learning_rate_schedule_kl_stop_and_advantage_scaling_asked_for(ppo):
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    from prefrl.loop import make_ppo

    model = make_ppo(TrainConfig(ppo=ppo), DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
    assert model.target_kl == ppo.target_kl
    assert model.normalize_advantage == ppo.normalize_advantage
    # SB3 calls the schedule with the progress remaining: 1 at the start of learn(), 0 at its end
    half = ppo.learning_rate / 2 if ppo.lr_schedule == "linear" else ppo.learning_rate
    assert model.lr_schedule(1.0) == pytest.approx(ppo.learning_rate)
    assert model.lr_schedule(0.5) == pytest.approx(half)
