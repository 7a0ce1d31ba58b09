"""Run configuration: frozen dataclasses, one docstring per field.

The CLI (``prefrl train --help``) is generated from these docstrings by tyro, and
the whole tree is saved as ``config.json`` in every run folder, so a run can be
resumed or reproduced from the folder alone. Values that follow from others are
properties, never fields "filled in at runtime".
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional


DEFAULT_OUTPUT_MEAN = -1.5
"""The learned reward's offset where episodes cannot end early (RewardConfig.output_mean)."""
PPO_VIEW_FIELDS = ("output_mean", "std_weight")
"""RewardConfig fields that shape what PPO sees of a trained ensemble (applied in LearnedReward), not the ensemble
itself: a run reusing another's model (--reward-model) keeps its own."""


class ConfigError(ValueError):
    """A bad setting; the message is one line that says how to fix it."""


@dataclass(frozen=True)
class EnvConfig:
    env: str = "Pendulum-v1"
    """Gymnasium id (Box observation; Box or Discrete actions), e.g. CartPole-v1, Acrobot-v1."""
    n_envs: int = 4
    """Parallel environment copies stepped by PPO."""
    vec_env: Literal["dummy", "subproc"] = "dummy"
    """VecEnv class: `dummy` steps envs in this process (best for cheap classic-control envs)."""
    fixed_horizon: bool = True
    """Hide episode ends from the reward: after termination the env sits in an absorbing
    state (last observation, reward 0) until the time limit, so every episode has the same length."""
    max_episode_steps: Optional[int] = None
    """Override the registered time limit (None keeps the env's own)."""
    normalize_obs: bool = True
    """Normalise PPO's observations with running statistics (VecNormalize); clips keep raw ones."""
    normalize_reward: bool = True
    """Scale the reward PPO sees by a running return std (VecNormalize), for true and learned reward alike."""
    continuous_episode: bool = False
    """No episode end reaches the agent: when the game ends the env resets underneath and the episode goes on
    (paper A.2, Atari preset), so episode ends leak nothing about the reward; each game's true return is
    still logged. Use instead of --fixed-horizon, for envs without a time limit."""
    frame_stack: int = 4
    """Atari (ALE/...): preprocessed frames per observation. Atari envs always get gymnasium's
    AtariPreprocessing (84x84 grey, frame skip 4, up to 30 no-op starts, no life-loss signal)."""
    sticky_actions: float = 0.0
    """Atari: chance that the previous action repeats (ALE v5's own default is 0.25; the paper's ALE had none)."""
    blank_score: bool = True
    """Atari: paint the score area black in what the agent, the reward model and people see (paper A.2)."""
    terminate_when_unhealthy: bool = True
    """MuJoCo (Hopper, Walker2d, Ant, Humanoid): False lets a fallen robot carry on, without its survive
    bonus, to the time limit: termination becomes a penalty the agent must learn (paper A.1)."""
    fallen_reward: Literal["kept", "zero"] = "kept"
    """MuJoCo with --no-terminate-when-unhealthy: what a fallen (unhealthy) robot earns. kept pays its
    step reward without the survive bonus, so forward progress on the ground still pays; zero pays
    nothing until it is healthy again, so a fall costs every later step's reward, as termination does
    (the paper does not size its penalty)."""
    hidden_reward_terms: tuple[str, ...] = ()
    """Info terms a person cannot see, taken out of the true reward (what the oracle labels, PPO-true trains
    on and evaluation scores), e.g. reward_ctrl: MuJoCo's torque cost (paper A.1; MuJoCo preset)."""
    reward_transform: str = "none"
    """A diagnostic for PPO-true (--reward-source true): PPO trains on f(r) of the true reward r, while
    progress.csv, plots and evaluation keep r. `symlog` (sign(r) log(1 + |r|)), `power:P` (sign(r) |r|^P, P > 0) or
    `affine:A,B` (A r + B, A > 0): each keeps the order of every step's reward and changes its shape, as a learned
    reward does. On Pendulum with 10 PPO epochs symlog made PPO-true fail 4 of 10 seeds and affine:0.2857,1.714
    none; with 5 epochs symlog failed none and power:2 scored -167 to -209 on all 10 (a per-step reshaping also
    changes which policy is best for the sum, so a lower true score is not by itself a PPO failure;
    results/bench/README.md)."""


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters; defaults are rl-zoo's tuned Pendulum-v1 settings with an entropy bonus, 5 epochs and
    a lower learning rate (results/bench/README.md)."""

    n_steps: int = 1024
    """Steps per env per rollout; the reward loop runs once per rollout."""
    minibatch_size: int = 64
    """Minibatch size of PPO updates."""
    n_epochs: int = 5
    """PPO epochs over each rollout. rl-zoo's Pendulum value is 10; with 5, PPO-true kept its score (-135.0, 10
    seeds) and preference runs failed less often with --val-split per_member (10 of 60 runs over seeds 0-29, 50
    and 200 labels, against 25-30% of runs for every other setting screened on 20 or more seeds; weak evidence,
    results/bench/README.md), and each run takes ~30% less time. The presets set their own."""
    learning_rate: float = 3e-4
    """Adam learning rate of the policy. rl-zoo's Pendulum value, 1e-3, left PPO-true itself unstable over 5 seeds
    (-209 +- 76, worst -330); 3e-4 gave -135.4 +- 1.2 in the same 122,880 steps, and preference runs more time
    before the policy settles on what an early reward model liked."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """`linear` decays the policy's learning rate from --learning-rate to 0 over the run (SB3's LinearSchedule, on
    PPO's own steps, so a resumed run picks up where it stopped); `constant` keeps it. On Pendulum, `--n-envs 8
    --n-steps 256 --learning-rate 1e-3 --lr-schedule linear` brought PPO-true's training return past -400 about twice
    as early (31-61k steps against 70-74k, seeds 0-3, same final score), but 50-label runs failed 10 of 20 seeds
    (100-119) against the defaults' 9 (results/bench/README.md, seventeenth session)."""
    gamma: float = 0.9
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO clipping range."""
    ent_coef: float = 0.01
    """Entropy bonus (rl-zoo's Pendulum setting is 0). With preferences PPO's action noise otherwise collapses
    at PPO-true's pace while the reward model still has a dozen labels, and the agent stays in the spin or
    half-swing the early model liked; 0.01 (the paper's MuJoCo value) raised Pendulum's 5-seed normalised mean
    from 0.60 to 0.71 (200 labels) and 0.11 to 0.52 (50), PPO-true -158 -> -173 (results/bench/README.md)."""
    target_kl: Optional[float] = None
    """Stop a rollout's PPO epochs early once the approximate KL between the old and the new policy passes 1.5x
    this (SB3's target_kl); None never stops early. 0.02 on Pendulum slowed 50-label runs (seeds 100-111: 6 of 12
    failed, 5 at the defaults)."""
    normalize_advantage: bool = True
    """Scale each minibatch's advantages to zero mean and unit std (SB3's default). Off, 50-label Pendulum runs
    learned more slowly (seeds 100-109: 6 of 10 failed, 4 at the defaults)."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Gradient clipping norm."""
    use_sde: bool = True
    """Generalised state-dependent exploration (Box actions only; ignored for Discrete)."""
    sde_sample_freq: int = 4
    """Resample the gSDE noise every this many steps."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the policy and value networks (after the CNN with CnnPolicy)."""
    policy: Literal["MlpPolicy", "CnnPolicy"] = "MlpPolicy"
    """SB3 policy: CnnPolicy (Nature CNN) for image observations such as Atari frame stacks."""


@dataclass(frozen=True)
class RewardConfig:
    """The reward predictor: a flat ensemble of MLPs fit with Bradley-Terry."""

    arch: Literal["mlp", "cnn"] = "mlp"
    """Member network: `mlp` (leaky ReLU, --hidden) on (obs[, action]), or `cnn`, the paper's Atari predictor on
    image stacks (conv 7x7/3, 5x5/2, 3x3/1, 3x3/1, 16 filters each, batch norm, --dropout, dense 64)."""
    ensemble_size: int = 3
    """Members of the ensemble, each fit on its own bootstrap resample of the labels."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of each member (leaky ReLU)."""
    use_actions: bool = False
    """Feed (observation, action) to the reward model, as the paper does (MuJoCo preset); the default feeds
    observations only. The policy sets its actions directly, so any liking for an action that a model fit on a
    dozen labels picks up by chance is the first thing PPO exploits: on Pendulum with (obs, action) 1-3 of 5
    seeds per setting ended spinning at full torque (about -1600, worse than random); MiniPong's paddle parked
    at a wall the same way (results/bench/README.md)."""
    dropout: float = 0.0
    """Dropout probability in each member's hidden layers."""
    random_answer_prob: float = 0.1
    """Chance that the labeler answered uniformly at random (the paper's 10% term)."""
    val_fraction: float = 1 / math.e
    """Share of labels held out for validation (the paper holds out 1/e), per member or shared (--val-split)."""
    val_split: Literal["shared", "per_member"] = "per_member"
    """`per_member`: each member trains on a Poisson(1) resample fixed per label and validates on the labels it
    left out (1/e, a bootstrap's out-of-bag set), so the ensemble uses ~95% of the labels; validation accuracy is
    then out-of-bag (each label judged by the members that left it out). `shared`: one 1/e validation split held
    out from every member, each member trained on a fresh bootstrap of the rest (with 50 labels a member then
    trains on ~40% of them and no member on 37%). With PPO's 5 epochs, 50 labels on Pendulum failed 6 of 30 seeds
    with `per_member` and 13 of 30 with `shared` (200 labels: 4 and 5 of 30; at 10 epochs the two splits did not
    differ), but those seeds chose the setting: on fresh seeds 30-49 `per_member` failed 8 of 20 at 50 labels and 3
    of 20 at 200. The Atari and own-task presets keep `shared`, which their committed results were measured
    with; the MuJoCo preset moved to `per_member` with cropping (prefrl.presets.MUJOCO_REWARD)."""
    l2: float = 1e-4
    """Initial L2 weight on the members' parameters."""
    adapt_l2: bool = True
    """Adapt the L2 weight so that validation loss stays 1.1-1.5x the training loss."""
    lr: float = 3e-3
    """Adam learning rate of the reward model."""
    batch_size: int = 32
    """Labels per minibatch."""
    epochs: int = 6
    """Epochs per refit over the current labels (the fit warm-starts from the previous weights). 10 before the ninth
    session: on fresh Pendulum seeds 30-49, 6 cut refit time by 25% (200 labels: 2.7 -> 2.0 s a run) and failed 9 of
    40 runs against 10's 11 (results/bench/README.md). The presets keep 10."""
    refit_growth: float = 0.2
    """Refit once the labels have grown by this fraction since the last fit (and after the last label);
    0 refits at every rollout that brought labels. Refits are most of the method's extra wall time."""
    pretrain_epochs: int = 100
    """Epochs of the first fit, on the labels from the initial policy."""
    output_std: float = 1.0
    """Each member's output is normalised to zero mean and this std before averaging."""
    output_mean: Optional[float] = None
    """Added to the ensemble mean before PPO sees it (the members stay zero-mean, so pair choice and the fit are
    unchanged). Unset: -1.5 where no episode ends early (a fixed horizon or one continuous episode: a constant then
    changes no policy's ranking, only PPO's optimisation), else 0 (a negative constant would pay the agent to end
    episodes). On Pendulum, PPO trained on fixed 200-label models failed 4 of 16 seeds at 0 and none at -1.5, and
    online runs failed less (results/bench/README.md, tenth session). The presets keep 0."""
    std_weight: float = 0.0
    """PPO's reward is the ensemble mean plus this many times the members' std at each step: > 0 a bonus where
    the members disagree (optimism, as RUNE does in PEBBLE, here constant), < 0 a penalty (pessimism); 0 the mean
    alone. On Pendulum with 50 labels, seeds 0-9: +1 failed 5 of 10 seeds (two worse than random), -1 failed 4,
    0 (then the default) 5 on the same machine (results/bench/README.md)."""
    crop_fraction: float = 0.0
    """Temporal cropping (SURF, Park et al. 2022): in training, each pair's clips are compared over windows of one
    random length between (1 - this) and all of the clip, placed independently in each clip, so one label
    teaches about shifted parts of its clips. 0 compares whole clips (the paper)."""
    semi_ratio: int = 0
    """SURF's semi-supervised fit (Park et al. 2022): with each minibatch of b labels, each member also sees this many
    times b random pairs of unlabelled clips from the recorder's pool (the recent rollouts' clips), and where it
    prefers one clip of such a pair with probability >= --semi-threshold it is trained to keep preferring it (loss
    weight --semi-weight), spreading a few labels over many clips. 0: labels only (the paper). Vector observations
    only; refits then cost about (1 + this) times as much. On Pendulum with 50 labels (seeds 100-119) it did not
    help: `--semi-ratio 4` failed 6 of 20 seeds, `--semi-ratio 1 --semi-threshold 0.99` 7, labels alone 5
    (results/bench/README.md, twentieth session)."""
    semi_threshold: float = 0.95
    """A member's confidence (sigmoid of its clip-return difference, before the random-answer term) above which
    an unlabelled pair becomes a pseudo-label for that member (SURF's tau)."""
    semi_weight: float = 1.0
    """Weight of the pseudo-label loss beside the labels' (SURF's lambda)."""
    label_buffer: Optional[int] = None
    """Train on only the newest this many labels (None: all)."""
    objective: Literal["preference", "target"] = "preference"
    """`preference`: Bradley-Terry on the labels. `target` (the paper's ablation): regress each labelled clip's
    TRUE return with the sum of predicted rewards (squared error); same ensemble, same output normalisation."""


@dataclass(frozen=True)
class FeedbackConfig:
    """Clips, pair choice, label schedule and the labeler."""

    labeler: Literal["oracle", "human"] = "oracle"
    """Who answers: `oracle` is a synthetic teacher on the true reward; `human` is a person in the app
    (`prefrl app RUN_DIR`): pairs wait in labels.sqlite and training picks up answers at each rollout end."""
    oracle_fill: bool = False
    """With --labeler human: the synthetic teacher answers pairs still pending one rollout after they were
    asked, so human and synthetic labels mix (for testing and demos)."""
    wait_labels: Optional[int] = None
    """With --labeler human: labels to wait for before PPO starts (None: all initial pairs). Training never
    waits on a person after that."""
    max_pending: int = 50
    """With --labeler human: at most this many unanswered pairs are queued; the schedule pauses above it."""
    teacher: Literal["oracle", "stochastic", "mistake", "skip", "equal", "myopic"] = "oracle"
    """Synthetic teacher (B-Pref): perfect oracle or one of its imperfect variants."""
    total_labels: int = 200
    """Labels to gather over the whole run."""
    schedule: Literal["online", "offline"] = "online"
    """`online`: labels throughout training at a decaying rate; `offline`: all from the initial policy."""
    initial_fraction: float = 0.25
    """Share of labels taken from the initial policy before PPO starts (online schedule)."""
    rate_constant: Optional[float] = None
    """c in the paper's label rate c/(T+c), in env steps (None: a fifth of the run)."""
    labels_done_fraction: float = 0.75
    """The online schedule hands out its last label at this fraction of the run."""
    clip_length: int = 15
    """Steps per clip; must not exceed an episode (the presets set their own: Atari 25 steps as in the paper,
    MuJoCo 1.5 s). On Pendulum 15-step clips (0.75 s) did no worse than 25-step ones (50 labels: 20 vs 28 of
    seeds 100-179 failing; 200 labels: 0 of 20) and cut the reward fits' cost by a third; 25-step clips of the
    initial policy did better than 100-step ones (results/bench/README.md, nineteenth and third sessions).
    People may want longer clips or a lower --video-fps to see them."""
    sampler: Literal["disagreement", "random"] = "disagreement"
    """Pair choice: random, or the pairs the ensemble members disagree on most."""
    prior_queries: bool = True
    """With --sampler disagreement: choose the initial pairs too by the ensemble's disagreement, before any
    fit (members differ by their random initial weights, so they disagree most on clips far apart in state),
    instead of at random. Random initial pairs on Pendulum mostly compare two clips of a hanging pendulum,
    and a dozen such labels gave models that liked the wrong states (results/bench/README.md)."""
    disagreement_scale: Literal["normalised", "trained"] = "normalised"
    """The member returns whose P(left) = sigmoid(R_left - R_right) the disagreement sampler compares: `normalised`,
    the output PPO sees (std --output-std a step); `trained`, each member's raw output, the scale its Bradley-Terry
    fit calibrated. On Pendulum's 25-step clips normalised clip returns spread wider than trained ones (sd 12.5-13.4
    against 2.5-11.3, two runs' final members), so most members' P(left) is 0 or 1 and the sampler picks at random
    among pairs whose winner the members dispute. `trained` keeps the choice graded, but did not lower the
    50-label failure rate on Pendulum seeds 50-69 (results/bench/README.md, fourteenth session)."""
    candidate_factor: int = 10
    """The disagreement sampler scores this many times more random pairs than it keeps."""
    clip_pool: int = 2000
    """Most recent clips kept in memory as pair candidates (older ones are dropped)."""
    tie_tolerance: float = 1e-6
    """Oracle: returns closer than this (relative to the clip's reward scale) are `equal`."""
    beta: float = 1.0
    """Stochastic teacher: Bradley-Terry rationality (higher is more decisive)."""
    mistake_prob: float = 0.1
    """Mistake teacher: chance of flipping the answer."""
    skip_quantile: float = 0.25
    """Skip teacher: answers `can't tell` when both clips' returns are below this quantile of the batch."""
    equal_fraction: float = 0.1
    """Equal teacher: `equal` when returns differ by less than this times the batch's return std."""
    myopic_gamma: float = 0.9
    """Myopic teacher: weight gamma^(T-1-t) on step t, so the end of the clip counts most."""
    video_fps: int = 20
    """Playback speed of clip videos for people (Atari preset: 15, the paper's 60 Hz with frame skip 4;
    MuJoCo preset: clip length / 1.5, so every clip plays the paper's 1.5 seconds)."""
    render_clips: bool = False
    """Render frames and write an H.264 MP4 beside each labelled clip (slower; always on for --labeler human)."""

    @property
    def render(self) -> bool:
        return self.render_clips or self.labeler == "human"


@dataclass(frozen=True)
class TrainConfig:
    """One run: `prefrl train` flags map one-to-one onto these fields."""

    env: EnvConfig = field(default_factory=EnvConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    exp_name: str = "prefs"
    """Experiment name, part of the run folder's name."""
    seed: int = 0
    """Seed of envs, PPO, the reward model and the teachers."""
    total_timesteps: int = 122_880
    """PPO env steps (label-collection steps of the initial policy are counted separately)."""
    reward_source: Literal["learned", "true"] = "learned"
    """`learned` trains PPO on the preference reward model; `true` is the PPO-true baseline."""
    labels: Optional[Path] = None
    """Train a new agent on the labels of an existing label DB (RUN_DIR/labels.sqlite); no new labels are asked."""
    reward_model: Optional[Path] = None
    """Train a new agent on a trained reward ensemble (a run folder, its checkpoint folder or ensemble.pt);
    the reward stays fixed and no labels are asked."""
    results_dir: Path = Path("results")
    """Folder that holds run folders."""
    run_dir: Optional[Path] = None
    """Exact run folder (default: results_dir/<env>__<exp>__<seed>__<time>). Never overwritten."""
    checkpoint_every: int = 5
    """Checkpoint PPO, the ensemble and the schedule every this many rollouts (and at the end)."""
    eval_episodes: int = 10
    """Deterministic episodes on the true reward for the final score (reset seeds 10000...)."""
    reward_per_rollout: bool = True
    """Compute the learned reward once per rollout, every step in one batched predict, and scale it as
    VecNormalize does step by step (the same numbers: the reward model only changes between rollouts).
    False predicts at every env step, as a plain VecEnvWrapper (results/bench/README.md: the per-step
    predict was about half of the learned reward's per-step cost on Pendulum)."""
    torch_threads: int = 1
    """torch threads in this process; more than 1 made PPO 30x slower on a busy 2-core machine."""
    device: str = "cpu"
    """torch device of PPO and the reward model."""
    progress_bar: bool = True
    """Show a progress bar."""

    @property
    def rollout_steps(self) -> int:
        """Env steps per PPO rollout across all envs."""
        return self.ppo.n_steps * self.env.n_envs

    @property
    def rate_constant(self) -> float:
        c = self.feedback.rate_constant
        return float(c) if c is not None else self.total_timesteps / 5

    @property
    def reward_offset(self) -> float:
        """What LearnedReward adds to the ensemble mean: --output-mean, or its default (see RewardConfig)."""
        m = self.reward.output_mean
        if m is not None:
            return float(m)
        return DEFAULT_OUTPUT_MEAN if self.env.fixed_horizon or self.env.continuous_episode else 0.0

    def validate(self) -> "TrainConfig":
        """Raise ConfigError (one line, with the fix) on settings that cannot work."""
        wrong = _type_error(self)  # first, so the checks below compare numbers (config.json may hold anything)
        if wrong:
            raise ConfigError(wrong)
        fb, rm, e = self.feedback, self.reward, self.env
        checks = [
            (fb.total_labels > 0 or self.reward_source == "true" or self.labels or self.reward_model,
             f"--total-labels must be > 0 (got {fb.total_labels}); use --reward-source true for PPO on the true reward"),
            (not (self.labels and self.reward_model), "--labels and --reward-model exclude each other; pass one"),
            (e.reward_transform == "none" or self.reward_source == "true",
             "--reward-transform only applies with --reward-source true (the oracle labels the true reward)"),
            (not ((self.labels or self.reward_model) and self.reward_source == "true"),
             "--labels/--reward-model train on a learned reward; drop --reward-source true"),
            (fb.max_pending >= 1, f"--max-pending must be >= 1 (got {fb.max_pending})"),
            (fb.wait_labels is None or fb.wait_labels >= 0, f"--wait-labels must be >= 0 (got {fb.wait_labels})"),
            (not fb.oracle_fill or fb.labeler == "human", "--oracle-fill only applies with --labeler human"),
            (fb.total_labels <= 1_000_000, f"--total-labels {fb.total_labels} is absurd; use at most 1,000,000"),
            (fb.clip_length >= 1, f"--clip-length must be >= 1 (got {fb.clip_length})"),
            (0.0 <= fb.initial_fraction <= 1.0, f"--initial-fraction must be in [0, 1] (got {fb.initial_fraction})"),
            (0.0 < fb.labels_done_fraction <= 1.0,
             f"--labels-done-fraction must be in (0, 1] (got {fb.labels_done_fraction})"),
            (fb.candidate_factor >= 1, f"--candidate-factor must be >= 1 (got {fb.candidate_factor})"),
            (fb.clip_pool >= 2, f"--clip-pool must be >= 2 (got {fb.clip_pool})"),
            (0.0 <= fb.mistake_prob <= 1.0, f"--mistake-prob must be in [0, 1] (got {fb.mistake_prob})"),
            (0.0 <= fb.skip_quantile <= 1.0, f"--skip-quantile must be in [0, 1] (got {fb.skip_quantile})"),
            (0.0 < fb.myopic_gamma <= 1.0, f"--myopic-gamma must be in (0, 1] (got {fb.myopic_gamma})"),
            (fb.beta > 0, f"--beta must be > 0 (got {fb.beta})"),
            (fb.rate_constant is None or fb.rate_constant > 0, f"--rate-constant must be > 0 (got {fb.rate_constant})"),
            (rm.ensemble_size >= 1, f"--ensemble-size must be >= 1 (got {rm.ensemble_size})"),
            (0.0 <= rm.dropout < 1.0, f"--dropout must be in [0, 1) (got {rm.dropout})"),
            (0.0 <= rm.random_answer_prob < 1.0,
             f"--random-answer-prob must be in [0, 1) (got {rm.random_answer_prob})"),
            (0.0 < rm.val_fraction < 1.0, f"--val-fraction must be in (0, 1) (got {rm.val_fraction})"),
            (rm.l2 >= 0, f"--l2 must be >= 0 (got {rm.l2})"),
            (rm.lr > 0, f"--lr must be > 0 (got {rm.lr})"),
            (rm.batch_size >= 1, f"--batch-size must be >= 1 (got {rm.batch_size})"),
            (rm.epochs >= 1 and rm.pretrain_epochs >= 1, "--epochs and --pretrain-epochs must be >= 1"),
            (rm.refit_growth >= 0, f"--refit-growth must be >= 0 (got {rm.refit_growth})"),
            (0.0 <= rm.crop_fraction < 1.0, f"--crop-fraction must be in [0, 1) (got {rm.crop_fraction})"),
            (rm.crop_fraction == 0 or rm.objective == "preference",
             "--crop-fraction applies to the preference objective (regression fits whole clips); set --crop-fraction 0"),
            (rm.output_std > 0, f"--output-std must be > 0 (got {rm.output_std})"),
            (rm.semi_ratio >= 0, f"--semi-ratio must be >= 0 (got {rm.semi_ratio})"),
            (0.5 < rm.semi_threshold < 1.0, f"--semi-threshold must be in (0.5, 1) (got {rm.semi_threshold})"),
            (rm.semi_weight > 0, f"--semi-weight must be > 0 (got {rm.semi_weight})"),
            (rm.semi_ratio == 0 or (rm.objective == "preference" and rm.arch == "mlp"),
             "--semi-ratio pseudo-labels pairs for the preference objective of an MLP reward model; set --semi-ratio 0"),
            (not (rm.arch == "cnn" and rm.use_actions),
             "--arch cnn sees observations only (the paper's Atari predictor); add --no-use-actions"),
            (not (e.continuous_episode and e.fixed_horizon),
             "--continuous-episode replaces --fixed-horizon (both hide episode ends); add --no-fixed-horizon"),
            (e.fallen_reward == "kept" or not e.terminate_when_unhealthy,
             "--fallen-reward zero applies to a robot that carries on after a fall; add --no-terminate-when-unhealthy"),
            (e.frame_stack >= 1, f"--frame-stack must be >= 1 (got {e.frame_stack})"),
            (0.0 <= e.sticky_actions <= 1.0, f"--sticky-actions must be in [0, 1] (got {e.sticky_actions})"),
            (not (self.ppo.policy == "CnnPolicy" and e.normalize_obs),
             "CnnPolicy scales image observations itself; add --no-normalize-obs"),
            (fb.video_fps >= 1, f"--video-fps must be >= 1 (got {fb.video_fps})"),
            (rm.label_buffer is None or rm.label_buffer >= 2, "--label-buffer must be >= 2 or None"),
            (rm.objective in ("preference", "target"),
             f"--objective must be preference or target (got {rm.objective!r})"),
            (e.n_envs >= 1, f"--n-envs must be >= 1 (got {e.n_envs})"),
            (e.n_envs <= 256, f"--n-envs {e.n_envs} is absurd on this machine; use at most 256"),
            (e.max_episode_steps is None or e.max_episode_steps >= 1, "--max-episode-steps must be >= 1"),
            (self.total_timesteps >= 1, f"--total-timesteps must be >= 1 (got {self.total_timesteps})"),
            (self.total_timesteps <= 10**10, f"--total-timesteps {self.total_timesteps} is absurd; use at most 1e10"),
            (self.ppo.n_steps >= 2, f"--n-steps must be >= 2 (got {self.ppo.n_steps})"),
            (self.ppo.minibatch_size >= 2, f"--minibatch-size must be >= 2 (got {self.ppo.minibatch_size})"),
            (0 < self.ppo.gamma <= 1, f"--gamma must be in (0, 1] (got {self.ppo.gamma})"),
            (self.ppo.learning_rate > 0, f"--learning-rate must be > 0 (got {self.ppo.learning_rate})"),
            (self.ppo.target_kl is None or self.ppo.target_kl > 0,
             f"--target-kl must be > 0 (got {self.ppo.target_kl})"),
            (self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1 (got {self.checkpoint_every})"),
            (re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", self.exp_name) is not None,
             f"--exp-name {self.exp_name!r} cannot name a run folder; use 1 to 64 letters, digits, '_', '-' "
             "or '.' (no '/', not starting with '.')"),
            (self.eval_episodes >= 0, f"--eval-episodes must be >= 0 (got {self.eval_episodes})"),
            (self.torch_threads >= 1, f"--torch-threads must be >= 1 (got {self.torch_threads})"),
        ]
        for name, value in _numbers(self):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number (got {value})")
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        reward_transform(e.reward_transform)  # raises on a bad spec
        return self

    # --- config.json -------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(_to_plain(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config.json") -> "TrainConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                              "restore it or start a new run") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must hold a JSON object; restore it or start a new run")
        return _from_plain(cls, data, source)


def reward_transform(spec: str) -> Optional[Callable[[float], float]]:
    """`--reward-transform` -> f (None for `none`); ConfigError (one line, with the fix) on a bad spec."""
    fix = "use none, symlog, power:P with P > 0, or affine:A,B with A > 0"
    if spec == "none":
        return None
    if spec == "symlog":
        return lambda r: math.copysign(math.log1p(abs(r)), r)
    if spec.startswith("power:"):
        (p,) = _spec_numbers(spec, "power:P", 1, fix)
        return lambda r: math.copysign(abs(r) ** p, r)
    if spec.startswith("affine:"):
        a, b = _spec_numbers(spec, "affine:A,B", 2, fix)
        return lambda r: a * r + b
    raise ConfigError(f"unknown --reward-transform {spec!r}; {fix}")


def _spec_numbers(spec: str, form: str, count: int, fix: str) -> list[float]:
    """`name:x[,y...]` -> its `count` finite numbers, the first > 0 (the slope that keeps the reward's order)."""
    try:
        values = [float(v) for v in spec.split(":", 1)[1].split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise ConfigError(f"--reward-transform {spec!r} is not {form}; {fix}")
    if not (values[0] > 0 and all(math.isfinite(v) for v in values)):
        slope = form.split(":")[1][0]  # P of power:P, A of affine:A,B
        raise ConfigError(f"--reward-transform {spec!r} needs a finite {slope} > 0 (order-keeping); {fix}")
    return values


def _type_error(obj: Any) -> Optional[str]:
    """The first field whose value does not fit its annotation (a hand-edited config.json), as a message."""
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            wrong = _type_error(value)
        elif not _fits(value, hints[f.name]):
            wrong = (f"--{f.name.replace('_', '-')} must be {_describe(hints[f.name])} (got {value!r}); fix it "
                     "on the command line or in config.json")
        else:
            wrong = None
        if wrong:
            return wrong
    return None


def _describe(hint: Any) -> str:
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _fits(value: Any, hint: Any) -> bool:
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, Path):
        return isinstance(value, hint)
    if origin is tuple:
        return isinstance(value, tuple) and all(_fits(v, args[0]) for v in value)
    return True


def _numbers(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += _numbers(v, f"{prefix}{f.name}.")
        else:
            out.append((f"--{f.name.replace('_', '-')}", v))
    return out


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def _from_plain(cls: type, data: dict, source: str) -> Any:
    hints = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(hints)
    if unknown:
        raise ConfigError(f"{source} has unknown setting(s) {sorted(unknown)}; remove them or upgrade prefrl")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: `{name}` must be an object; restore the file")
            kwargs[name] = _from_plain(type(default), value, source)
        elif isinstance(default, Path) or name in ("run_dir", "labels", "reward_model"):
            kwargs[name] = None if value is None else Path(value)
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# --- ablation presets (the paper's Section 3.3): `prefrl ablate --variants ...` ----------------------------------
# Each preset changes exactly the fields it names, on top of whatever config it is given (the train flags after
# `prefrl ablate ... --`), so a grid differs between variants in those fields only.

Variant = Callable[[TrainConfig], TrainConfig]


def _feedback(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(cfg, feedback=dataclasses.replace(cfg.feedback, **changes))


def _reward(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, **changes))


def _full(cfg: TrainConfig) -> TrainConfig:
    """The full method: online labels, disagreement queries, ensemble, L2, clips (the config as given)."""
    return cfg


def _random_queries(cfg: TrainConfig) -> TrainConfig:
    """Random pairs instead of the ones the ensemble disagrees on most."""
    return _feedback(cfg, sampler="random")


def _no_ensemble(cfg: TrainConfig) -> TrainConfig:
    """A single predictor, hence random pairs (there is no disagreement to measure)."""
    return _reward(_feedback(cfg, sampler="random"), ensemble_size=1)


def _offline(cfg: TrainConfig) -> TrainConfig:
    """Every label from the initial policy before PPO starts; none later (the Pong failure)."""
    return _feedback(cfg, schedule="offline")


def _no_regularization(cfg: TrainConfig) -> TrainConfig:
    """No L2 on the predictor and no L2 adaptation; dropout and the held-out split as given."""
    return _reward(cfg, l2=0.0, adapt_l2=False)


def _no_segments(cfg: TrainConfig) -> TrainConfig:
    """Length-1 clips: the same number of labels (two clips each), one step per clip instead of --clip-length."""
    return _feedback(cfg, clip_length=1)


def _target(cfg: TrainConfig) -> TrainConfig:
    """Regress each labelled clip's true return instead of learning from the comparison."""
    return _reward(cfg, objective="target", crop_fraction=0.0)  # cropping belongs to the comparison loss


def _teacher(name: str) -> Variant:
    def preset(cfg: TrainConfig) -> TrainConfig:
        return _feedback(cfg, teacher=name)

    preset.__name__ = name
    preset.__doc__ = f"B-Pref's `{name}` synthetic teacher (--teacher {name}; its own parameters as given)."
    return preset


TEACHERS = ("oracle", "stochastic", "mistake", "skip", "equal", "myopic")
VARIANTS: dict[str, Variant] = {
    "full": _full, "random_queries": _random_queries, "no_ensemble": _no_ensemble, "offline": _offline,
    "no_regularization": _no_regularization, "no_segments": _no_segments, "target": _target,
    **{t: _teacher(t) for t in TEACHERS},
}
"""Named presets: name -> function(TrainConfig) -> TrainConfig."""
VARIANT_GROUPS: dict[str, tuple[str, ...]] = {
    "paper": ("full", "random_queries", "no_ensemble", "offline", "no_regularization", "no_segments", "target"),
    "teachers": TEACHERS,
}
"""`--variants paper` and `--variants teachers`."""


def variant_names(spec: str) -> list[str]:
    """'paper', 'teachers' or a comma list of preset names (groups allowed inside) -> names, in order, once each."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in VARIANT_GROUPS.get(part, (part,)):
            if name not in VARIANTS:
                import difflib

                close = difflib.get_close_matches(name, [*VARIANT_GROUPS, *VARIANTS], n=2, cutoff=0.6)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise ConfigError(f"unknown variant '{name}'{hint}; use paper, teachers or names from "
                                  f"{', '.join(VARIANTS)}")
            if name not in names:
                names.append(name)
    return names
