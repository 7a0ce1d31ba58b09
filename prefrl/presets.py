"""The paper's settings by env family (Christiano et al. 2017, appendix A), as `prefrl train` defaults.

`prefrl train --env ALE/Pong-v5` and `--env Hopper-v5` start from these; every flag given on the
command line still overrides them, and config.json records the result. Label counts and rates are
mapped onto prefrl's fields:

- the paper's "rate c/(T+c) after T frames" is --rate-constant in agent steps: Atari frames / 4
  (frame skip), MuJoCo frames = steps;
- Atari's "500 labels before training" is --initial-fraction 500 / --total-labels (recomputed for
  the --total-labels given, unless --initial-fraction is given too);
- MuJoCo's "1.5-second clips (15-60 steps by task)" is round(1.5 s / the env's dt) clamped to 15..60.

Both families step their envs in-process (DummyVecEnv): raw Pong runs ~4,000 steps/s and HalfCheetah
~13,000 on one core, against ~180 and ~1,000 steps/s for PPO itself, so worker processes would add IPC
and memory for at most a few percent.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from prefrl.config import EnvConfig, TrainConfig

ATARI_FRAME_SKIP = 4
ATARI_INITIAL_LABELS = 500
"""Labels from the initial policy before training starts (A.2)."""
ATARI_RATE_FRAMES = 5e6
MUJOCO_RATE_FRAMES = 2e6
CLIP_SECONDS = 1.5
MEASURED_REWARD = dict(val_split="shared", epochs=10, output_mean=0.0)
"""The reward settings the presets' committed results were measured with: a validation split shared by the members,
10 epochs per refit, and the learned reward unshifted. The classic-control defaults have since moved (per_member, 6,
-1.5); the Atari and own-task presets stay, MuJoCo's moved as measured (MUJOCO_REWARD)."""
MUJOCO_REWARD = dict(MEASURED_REWARD, val_split="per_member", crop_fraction=0.3)
"""MuJoCo's reward fit since the fifteenth session: members validated on their own out-of-bag labels, and SURF's
temporal cropping (--crop-fraction 0.3). With 350 labels, PPO-true beside them on one host class: HalfCheetah
seeds 0-4 2463 vs 2604 (0.95), Hopper seeds 5-8 2720 vs 2942 (0.92); benchmarks/mujoco.py's Hopper seeds 0-2:
2197 vs 2633 (0.83, seed 1 fails); Hopper seeds 0-14: 2658 vs 2845 (0.93, seed 1 the one failure). Before, with `shared` and no cropping: 0.80 and
0.76 (seeds 0-1, twelfth session; HalfCheetah's seed 0 1893 against 4491 here, same host and code); `per_member`
alone: Hopper 0.59-0.86, HalfCheetah 2076 over seeds 0-2 (results/bench/README.md)."""
CLIP_STEPS_RANGE = (15, 60)


def family(env_id: str) -> Optional[str]:
    """`atari`, `mujoco` or None (no preset; also for an unknown id, which check_run_config reports)."""
    from prefrl.envs import EnvError, env_family

    try:
        fam = env_family(env_id)
    except EnvError:
        return None
    return fam if fam in ("atari", "mujoco") else None


def defaults(env_id: str) -> TrainConfig:
    """prefrl's defaults with this env's family preset applied."""
    base = TrainConfig(env=EnvConfig(env=env_id))
    if env_id in OWN_TASKS:
        return OWN_TASKS[env_id](base)
    fam = family(env_id)
    if fam == "atari":
        return atari(base)
    if fam == "mujoco":
        return mujoco(base)
    return base


def atari(cfg: TrainConfig) -> TrainConfig:
    """Appendix A.2 on top of cfg: AtariPreprocessing + 4-frame stack, score blacked out, one continuous
    episode; the CNN predictor (dropout 0.5, outputs std 0.05, last 3,000 labels, 200 pretraining epochs);
    25-step clips shown at 15 fps; 500 initial labels of 5,500 (Fig. 3's middle curve), rate 5e6/(T+5e6)
    frames over 10M frames. PPO: rl-zoo's Atari settings (the paper used A2C) with entropy 0.01."""
    env = replace(cfg.env, n_envs=8, vec_env="dummy", fixed_horizon=False, continuous_episode=True,
                  normalize_obs=False, normalize_reward=False, frame_stack=4, sticky_actions=0.0, blank_score=True)
    ppo = replace(cfg.ppo, policy="CnnPolicy", n_steps=128, minibatch_size=256, n_epochs=4, learning_rate=2.5e-4,
                  gamma=0.99, gae_lambda=0.95, clip_range=0.1, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5,
                  use_sde=False, net_arch=())
    reward = replace(cfg.reward, arch="cnn", use_actions=False, dropout=0.5, output_std=0.05, label_buffer=3000,
                     pretrain_epochs=200, lr=3e-4, batch_size=16, **MEASURED_REWARD)
    total = 5500
    feedback = replace(cfg.feedback, clip_length=25, total_labels=total, initial_fraction=ATARI_INITIAL_LABELS / total,
                       rate_constant=ATARI_RATE_FRAMES / ATARI_FRAME_SKIP, video_fps=60 // ATARI_FRAME_SKIP,
                       prior_queries=False)
    return replace(cfg, env=env, ppo=ppo, reward=reward, feedback=feedback,
                   total_timesteps=int(10e6) // ATARI_FRAME_SKIP)


def mujoco(cfg: TrainConfig) -> TrainConfig:
    """Appendix A.1 on top of cfg: 1.5-second clips, 25% of 700 labels from the initial policy, rate
    2e6/(T+2e6), a 2x64 leaky-ReLU MLP on (obs, action) normalised to std 1, entropy bonus 0.01; the
    torque cost out of the true reward; a fallen robot carries on without its survive bonus to the fixed
    horizon (1,000 steps). PPO: 4 envs x 512 steps, gamma 0.995 and lambda 0.97 as the paper's TRPO. Two
    departures from the paper, measured to help at 350 labels (MUJOCO_REWARD): per-member validation splits
    and temporal cropping of the compared clips."""
    env_id = cfg.env.env
    clip = mujoco_clip_length(env_id, cfg.env.max_episode_steps)
    env = replace(cfg.env, n_envs=4, vec_env="dummy", fixed_horizon=True, terminate_when_unhealthy=False,
                  hidden_reward_terms=("reward_ctrl",) if _reports(env_id, "reward_ctrl") else (),
                  normalize_obs=True, normalize_reward=True)
    ppo = replace(cfg.ppo, policy="MlpPolicy", n_steps=512, minibatch_size=64, n_epochs=10, learning_rate=3e-4,
                  gamma=0.995, gae_lambda=0.97, clip_range=0.2, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5,
                  use_sde=False, net_arch=(64, 64))
    reward = replace(cfg.reward, arch="mlp", hidden=(64, 64), use_actions=True, output_std=1.0, dropout=0.0,
                     **MUJOCO_REWARD)
    feedback = replace(cfg.feedback, clip_length=clip, total_labels=700, initial_fraction=0.25,
                       rate_constant=MUJOCO_RATE_FRAMES, video_fps=max(1, round(clip / CLIP_SECONDS)),
                       prior_queries=False)
    return replace(cfg, env=env, ppo=ppo, reward=reward, feedback=feedback, total_timesteps=1_000_000)


def minipong(cfg: TrainConfig) -> TrainConfig:
    """prefrl/MiniPong-v0 (issue 5): settings under which PPO learns to score in ~400k steps on one CPU
    core; observations only for the reward model, since (obs, action) models fit on random clips latched
    onto one action and parked the paddle at a wall."""
    env = replace(cfg.env, n_envs=8)
    ppo = replace(cfg.ppo, n_steps=256, minibatch_size=256, n_epochs=4, learning_rate=3e-4, gamma=0.99,
                  ent_coef=0.01)
    reward = replace(cfg.reward, use_actions=False, **MEASURED_REWARD)
    feedback = replace(cfg.feedback, total_labels=200, clip_length=25, prior_queries=False)
    return replace(cfg, env=env, ppo=ppo, reward=reward, feedback=feedback, total_timesteps=400_000)


def lava_ledge(cfg: TrainConfig) -> TrainConfig:
    """prefrl/LavaLedge-v0: PPO on the true reward reaches the optimum (~5.5) in 100k steps with these;
    the reward model needs actions (progress belongs to a move, not a state)."""
    env = replace(cfg.env, n_envs=8)
    ppo = replace(cfg.ppo, n_steps=128, n_epochs=10, learning_rate=1e-3, gamma=0.99, ent_coef=0.01)
    reward = replace(cfg.reward, use_actions=True, **MEASURED_REWARD)
    feedback = replace(cfg.feedback, total_labels=200, clip_length=25, prior_queries=False)
    return replace(cfg, env=env, ppo=ppo, reward=reward, feedback=feedback, total_timesteps=100_000)


OWN_TASKS = {"prefrl/MiniPong-v0": minipong, "prefrl/LavaLedge-v0": lava_ledge}
"""Our envs/ tasks' defaults, measured when each task was written (flags still override). The presets pin the
reward inputs, fit and offset (MEASURED_REWARD) and initial-pair rule (random initial pairs) their committed
results were measured with, so changes of the classic-control defaults do not move them; the same for Atari and
MuJoCo."""


def mujoco_clip_length(env_id: str, max_episode_steps: Optional[int] = None) -> int:
    """Steps in 1.5 seconds of simulated time, clamped to the paper's 15..60 and to the episode length."""
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        dt = float(env.unwrapped.dt)
        limit = max_episode_steps or env.spec.max_episode_steps
    finally:
        env.close()
    lo, hi = CLIP_STEPS_RANGE
    steps = min(hi, max(lo, round(CLIP_SECONDS / dt)))
    return min(steps, limit) if limit else steps


def _reports(env_id: str, term: str) -> bool:
    """Whether the env's step info carries `term` (one step of a fresh env)."""
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        env.reset(seed=0)
        return term in env.step(env.action_space.sample())[4]
    finally:
        env.close()


def finish(cfg: TrainConfig, argv: list[str]) -> TrainConfig:
    """After parsing: `--objective target` drops a preset's cropping (a regression fits whole clips) unless
    --crop-fraction was given too; Atari keeps its 500 initial labels for a --total-labels other than the
    preset's, unless --initial-fraction was given."""
    if cfg.reward.objective == "target" and not _given(argv, "--crop-fraction"):
        cfg = replace(cfg, reward=replace(cfg.reward, crop_fraction=0.0))
    if family(cfg.env.env) != "atari" or _given(argv, "--initial-fraction"):
        return cfg
    fraction = min(1.0, ATARI_INITIAL_LABELS / max(1, cfg.feedback.total_labels))
    return replace(cfg, feedback=replace(cfg.feedback, initial_fraction=fraction))


def env_from_argv(argv: list[str]) -> Optional[str]:
    """The value of --env in a `prefrl train` command line (last one wins, as in the parser)."""
    env = None
    for i, arg in enumerate(argv):
        if arg == "--env" and i + 1 < len(argv):
            env = argv[i + 1]
        elif arg.startswith("--env="):
            env = arg.split("=", 1)[1]
    return env


def _given(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)
