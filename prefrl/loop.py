"""`train(cfg)`: one run, as the named phases of ../shared/DESIGN.md.

    set up run folder -> initial labels from the initial policy -> pretrain reward
    -> PPO.learn() once; at each rollout end: the rollout's learned reward in one batch (RelabelRollout)
       -> harvest clips -> choose pairs -> label
       -> refit -> (the ensemble is updated in place, so LearnedReward uses it from the next rollout)
    -> final checkpoint, evaluation on the true reward, learning-curve PNG.

Checkpoints are taken at rollout start (after PPO's update, so the policy and the
step count agree) into a fresh folder that is renamed into place, then pointed to by
`checkpoints/latest`: a kill at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import resource
import shutil
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecCheckNan, VecEnv, VecNormalize

from prefrl.clips import (SPILL_BYTES, Clip, ClipObsArray, ClipRecorder, load_clip_acts_rews, load_clip_arrays,
                          save_clip)
from prefrl.config import PPO_VIEW_FIELDS, ConfigError, TrainConfig
from prefrl.envs import (EnvError, env_family, episode_limit, episode_metrics, make_env, make_vec_env,
                         render_backend, state_renderer)
from prefrl.evaluate import evaluate
from prefrl.labels.oracle import make_teacher
from prefrl.labels.store import Answer, DuplicateLabel, LabelStore, StoreError, check_labeler, run_file
from prefrl.reliability import fault_point
from prefrl.reward.model import Ensemble, make_ensemble
from prefrl.reward.train import FitStats, PreferenceData, RewardTrainer, UnlabeledClips
from prefrl.reward.wrapper import LearnedReward, RelabelledRolloutBuffer, RelabelRollout, RolloutRewardNormalize
from prefrl.sampling import make_sampler
from prefrl.schedule import LabelSchedule

PROGRESS_COLUMNS = [
    "env_steps", "true_episode_return", "learned_episode_return", "labels", "reward_model_version",
    "rm_train_acc", "rm_val_acc", "rm_train_loss", "rm_val_loss", "l2", "reward_corr", "wall_seconds",
]
EPISODE_METRIC_PREFIX = "ep_"
"""progress.csv also gets one column `ep_<name>` per episode metric the env declares (prefrl.envs.episode_metrics,
e.g. ep_points_won): its mean over the episodes that ended in the rollout (true env numbers, like the true return)."""
NO_FIT = FitStats(0, math.nan, math.nan, math.nan, math.nan, math.nan)


_INTERRUPTED = threading.Event()


def stop_on_sigint() -> None:
    """Ctrl+C raises KeyboardInterrupt as usual and is also remembered, so the loop stops at its next env step
    even when the interpreter swallowed the exception: a SIGINT that lands while the process forks (ffmpeg for
    each clip video) is raised inside an at-fork hook and only printed ("Exception ignored in ... _releaseLock"),
    and the run carried on until killed. Main thread only (the CLI)."""

    def handler(signum: int, frame: object) -> None:
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def _check_interrupt() -> None:
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says how to fix it."""


class RunResult(NamedTuple):
    run_dir: Path
    true_return: float  # mean over the evaluation episodes
    true_return_std: float
    labels: int
    val_acc: float
    steps: int
    wall_seconds: float
    peak_rss_mb: float


def run_name(cfg: TrainConfig) -> str:
    return f"{cfg.env.env.replace('/', '_')}__{cfg.exp_name}__{cfg.seed}__{int(time.time())}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Trainer:
    """Owns one run folder and every object of the loop."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resuming: bool):
        self.cfg, self.run_dir = cfg, run_dir
        torch.set_num_threads(cfg.torch_threads)
        self.rng = np.random.default_rng(cfg.seed)
        self.learned = cfg.reward_source == "learned"
        self.ckpt_dir = run_dir / "checkpoints"
        self.ckpt_dir.mkdir(exist_ok=True)
        self.wall_before = 0.0
        self.t0 = time.monotonic()
        self.fit = NO_FIT
        self.labels_at_fit = 0
        self.rollouts = 0
        self.pending_rows: list[dict] = []
        self._clip_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.phase_seconds: dict[str, float] = {}
        self.initial_policy_steps = 0  # env steps of the untrained policy for the first clips (not PPO steps)
        self.episode_metrics = episode_metrics(cfg.env.env)
        self.columns = PROGRESS_COLUMNS + [EPISODE_METRIC_PREFIX + m for m in self.episode_metrics]

        fb = cfg.feedback
        self.human = self.learned and fb.labeler == "human" and not (cfg.labels or cfg.reward_model)
        venv: VecEnv = _FiniteCheck(make_vec_env(cfg.env, cfg.seed, render=fb.render and self.learned), cfg.env.env)
        self.recorder: Optional[ClipRecorder] = None
        self.ensemble: Optional[Ensemble] = None
        if self.learned:
            self.store = LabelStore(run_dir / "labels.sqlite")
            # big clips (Atari stacks, frames) wait on disk while in the pool; MuJoCo renders only labelled clips
            self.recorder = ClipRecorder(venv, fb.clip_length, fb.clip_pool, record_frames=fb.render,
                                         spill_dir=run_dir / "clip_pool", renderer=state_renderer(cfg.env))
            self.ensemble = make_ensemble(venv.observation_space, venv.action_space, cfg.reward, seed=cfg.seed)
            if cfg.reward_model and not resuming:
                self.ensemble.load_state_dict(torch.load(ensemble_file(cfg.reward_model), weights_only=True))
            if cfg.labels and not resuming:
                import_labels(cfg.labels, self.store, run_dir, venv.observation_space.shape)
            self.reward_trainer = RewardTrainer(self.ensemble, cfg.reward, seed=cfg.seed)
            self.teacher = make_teacher(cfg.feedback, seed=cfg.seed)
            scorer = partial(self.ensemble.clip_returns, normalised=cfg.feedback.disagreement_scale == "normalised")
            self.sampler = make_sampler(cfg.feedback.sampler, scorer, cfg.feedback.candidate_factor,
                                        ready=self._disagreement_ready)
            if cfg.labels or cfg.reward_model:  # a fixed label set (or none): the schedule asks for nothing
                n = self.store.count_pairs()
                self.schedule = LabelSchedule(n, n, 1.0, 1)
            else:
                self.schedule = LabelSchedule.from_config(cfg)
            venv = LearnedReward(self.recorder, self.ensemble, per_rollout=cfg.reward_per_rollout,
                                 offset=cfg.reward_offset, std_weight=cfg.reward.std_weight)
        per_rollout = self.learned and cfg.reward_per_rollout
        self.venv = (RolloutRewardNormalize if per_rollout else VecNormalize)(
            venv, norm_obs=cfg.env.normalize_obs, norm_reward=cfg.env.normalize_reward, gamma=cfg.ppo.gamma)
        # the learned reward of each rollout, written into PPO's buffer before any other callback runs
        self.relabel: Optional[RelabelRollout] = RelabelRollout(venv, self.venv) if per_rollout else None
        self.model = self._make_ppo()
        self.model.set_logger(configure(str(run_dir / "tb"), ["tensorboard"]))
        if resuming:
            self._restore()

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add this block's wall time to phase_seconds (reported in summary.json)."""
        t = time.monotonic()
        try:
            yield
        finally:
            self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + time.monotonic() - t

    # --- set-up -------------------------------------------------------------------

    def _make_ppo(self) -> PPO:
        return make_ppo(self.cfg, self.venv, relabelled=self.relabel is not None)

    def _disagreement_ready(self) -> bool:
        # the sampler itself handles a 1-member ensemble
        return self.ensemble is not None and (self.ensemble.fitted or self.cfg.feedback.prior_queries)

    # --- phases -------------------------------------------------------------------

    def run(self) -> RunResult:
        state = self._read_state()
        if state.get("finished"):
            print(f"run {self.run_dir} already finished; nothing to do", file=sys.stderr)
        else:
            if self.learned:
                if not self.human:
                    self._fill_pending()  # pairs stored just before a kill, never answered: answer them now
                self.initial_labels()
            remaining = self.cfg.total_timesteps - self.model.num_timesteps
            if remaining > 0:
                loop = _LoopCallback(self)
                self.model.learn(remaining, callback=[self.relabel, loop] if self.relabel else loop,
                                 progress_bar=self.cfg.progress_bar,
                                 reset_num_timesteps=self.model.num_timesteps == 0)
            self._flush_rows()
            self.checkpoint(finished=True)
        return self.finish()

    def initial_labels(self) -> None:
        """Labels from the initial policy, then the (longer) first fit of the reward model."""
        due = self.schedule.due(0, self.store.count_pairs()) if self.model.num_timesteps == 0 else 0
        if due > 0:
            with self.timed("initial_rollout"):
                self._rollout_initial_policy(clips_wanted=max(2, min(self.cfg.feedback.clip_pool, due)))
            pool = list(self.recorder.pool)
            if self.cfg.feedback.prior_queries and not self.ensemble.fitted and self.cfg.reward.arch == "mlp":
                # the input scale the first fit would set (the CNN scales pixels by a constant)
                self.ensemble.set_input_stats(np.stack([c.obs for c in pool[:256]]),
                                              np.stack([c.acts for c in pool[:256]]))
            self.gather(due, candidates=pool)
        if self.human:
            self._wait_for_first_labels()
        if not self.ensemble.fitted and self.store.count_labels(trainable_only=True) > 0:
            self.refit(self.cfg.reward.pretrain_epochs)

    def _wait_for_first_labels(self) -> None:
        """The one time training waits on a person: until the first labels are in."""
        fb = self.cfg.feedback
        want = min(self.schedule.initial, fb.wait_labels if fb.wait_labels is not None else self.schedule.initial)
        # Only pairs that exist can be answered (max_pending may hold fewer than `initial`), and any answer
        # counts, can't-tell included: otherwise the wait could never end.
        want = min(want, self.store.count_pairs())
        have = self._answered_pairs()
        if have >= want:
            return
        print(f"\nWaiting for {want} labels. Open the labeling app in a browser with:\n\n"
              f"    prefrl app {self.run_dir}\n", file=sys.stderr, flush=True)
        from tqdm import tqdm

        with tqdm(total=want, initial=have, desc="labels", unit="label", file=sys.stderr,
                  disable=not self.cfg.progress_bar) as bar:
            while have < want:
                _check_interrupt()
                if fb.oracle_fill:
                    self._fill_pending()
                time.sleep(0.5)
                now = self._answered_pairs()
                bar.update(now - have)
                have = now

    def _answered_pairs(self) -> int:
        return self.store.count_pairs() - self.store.count_pending()

    def _rollout_initial_policy(self, clips_wanted: int) -> None:
        """Step the untrained policy (PPO's own initial weights) until enough clips exist."""
        self.venv.training = False  # keep these steps out of PPO's normalisation statistics
        obs = self.venv.reset()
        min_steps = self.cfg.rollout_steps
        steps = 0
        sde, freq = self.model.use_sde, self.model.sde_sample_freq
        while steps < min_steps or len(self.recorder.pool) < min(clips_wanted, self.recorder.pool.maxlen):
            _check_interrupt()
            # gSDE's exploration matrix is drawn once at PPO's construction; `predict` never redraws it, so without
            # this the "random" policy is one fixed function of the state (on Pendulum: ~+1.5 torque in every
            # clip) and the first labels teach the reward model that torque or spin direction is good. Redraw as
            # PPO's own rollouts do (SB3 collect_rollouts): per env, every sde_sample_freq steps, or per rollout.
            step = steps // self.venv.num_envs
            if sde and (step % (freq if freq > 0 else self.cfg.ppo.n_steps) == 0):
                self.model.policy.reset_noise(self.venv.num_envs)
            actions, _ = self.model.predict(obs, deterministic=False)
            obs, _, _, _ = self.venv.step(actions)
            steps += self.venv.num_envs
        self.recorder.take_new()
        self.venv.training = True
        self.initial_policy_steps = steps

    def gather(self, n: int, candidates: list[Clip]) -> int:
        """Choose n pairs among candidates, store them, and have the teacher answer them."""
        if n <= 0 or len(candidates) < 2:
            return 0
        with self.timed("gather"):
            return self._gather(n, candidates)

    def _gather(self, n: int, candidates: list[Clip]) -> int:
        if self.human:
            n = min(n, self.cfg.feedback.max_pending - self.store.count_pending())
            if n <= 0:
                return 0
        choices = self.sampler.select(candidates, n, self.rng)
        version = self.ensemble.version
        rows = []
        for c in sorted({i for ch in choices for i in (ch.left, ch.right)}):
            clip = candidates[c]
            npz, video = save_clip(clip, self.run_dir, fps=self.cfg.feedback.video_fps)
            rows.append((clip.id, clip.env_step, clip.true_return, len(clip), npz, video))
        self.store.add_clips(rows)
        rules: dict[str, list] = {}
        for ch in choices:
            rules.setdefault(ch.rule, []).append(ch)
        for rule, chs in rules.items():
            pair_ids = self.store.add_pairs([(candidates[c.left].id, candidates[c.right].id) for c in chs], rule,
                                            version, [c.disagreement for c in chs] if rule != "random" else None)
            fault_point("gather")
            if self.human:
                continue  # pending in labels.sqlite until someone answers in the app
            answers = self.teacher.answer(np.stack([candidates[c.left].rews for c in chs]),
                                          np.stack([candidates[c.right].rews for c in chs]))
            self.store.add_labels([(pid, ans, self.teacher.name, 0.0, version) for pid, ans in zip(pair_ids, answers)])
        return len(choices)

    def _fill_pending(self) -> int:
        """--oracle-fill: the synthetic teacher answers every pair nobody has answered yet."""
        pending = self.store.pending_pairs()
        if not pending:
            return 0
        answers = self.teacher.answer(np.stack([self._clip_rews(p.left_clip) for p in pending]),
                                      np.stack([self._clip_rews(p.right_clip) for p in pending]))
        filled = 0
        for pair, ans in zip(pending, answers):
            try:
                self.store.add_label(pair.id, ans, labeler=self.teacher.name, seconds=0.0,
                                     model_version=self.ensemble.version)
                filled += 1
            except DuplicateLabel:  # a person answered it meanwhile; theirs stands beside ours
                pass
        return filled

    def _refit_due(self) -> bool:
        grown = self.store.count_labels(trainable_only=True) - self.labels_at_fit
        last_label = self.store.count_pairs() >= self.schedule.total
        return grown > 0 and (grown >= self.cfg.reward.refit_growth * self.labels_at_fit or last_label)

    def refit(self, epochs: int) -> FitStats:
        data = self._preference_data()
        if data is not None:
            self.labels_at_fit = self.store.count_labels(trainable_only=True)
            fault_point("refit")
            with self.timed("refit"):
                self.fit = self.reward_trainer.fit(data, epochs, self._unlabeled_clips())
            self.store.set_meta("reward_model_version", str(self.ensemble.version))  # the app stamps labels with it
        return self.fit

    def _unlabeled_clips(self) -> Optional[UnlabeledClips]:
        """The recorder's pool (the recent rollouts' clips, labelled or not) for --semi-ratio's pseudo-labels;
        None when that is off, so the fit stacks nothing (RewardTrainer decides whether there are enough clips to
        pair). Vector observations only (config validation), so the pool is in memory."""
        if self.cfg.reward.semi_ratio == 0 or self.recorder is None or not self.recorder.pool:
            return None
        pool = list(self.recorder.pool)
        return np.stack([c.obs for c in pool]), np.stack([c.acts for c in pool])

    def _preference_data(self) -> Optional[PreferenceData]:
        """The labels to fit on. Small clips (MLP envs) are stacked in memory; image clips, whose observations
        exceed SPILL_BYTES (Atari: ~0.7 MB a clip), stay on disk as ClipObsArrays that the fit reads a minibatch
        at a time, so memory stays flat as labels accumulate. Only their actions and true rewards are read here."""
        records = self.store.labels(trainable_only=True, last=self.cfg.reward.label_buffer)
        if not records:
            return None
        label_ids = np.array([r.id for r in records])
        target = np.array([Answer(r.answer).target for r in records], dtype=np.float32)
        first_obs = self._clip_arrays(records[0].left_clip)[0]
        if first_obs.nbytes <= SPILL_BYTES:
            left = [self._clip_arrays(r.left_clip) for r in records]
            right = [self._clip_arrays(r.right_clip) for r in records]
            true_returns = np.array([[lc[2].sum(), rc[2].sum()] for lc, rc in zip(left, right)])  # objective "target"
            return PreferenceData(label_ids, np.stack([c[0] for c in left]), np.stack([c[1] for c in left]),
                                  np.stack([c[0] for c in right]), np.stack([c[1] for c in right]), target,
                                  true_returns)

        def on_disk(clip_ids: list[str]) -> tuple[ClipObsArray, np.ndarray, np.ndarray]:
            paths = [self.run_dir / self.store.clip(c).npz for c in clip_ids]
            acts, rews = zip(*(load_clip_acts_rews(p) for p in paths))
            returns = np.array([r.sum() for r in rews])  # objective "target"
            return ClipObsArray(paths, first_obs.shape, first_obs.dtype), np.stack(acts), returns

        obs_l, acts_l, ret_l = on_disk([r.left_clip for r in records])
        obs_r, acts_r, ret_r = on_disk([r.right_clip for r in records])
        return PreferenceData(label_ids, obs_l, acts_l, obs_r, acts_r, target, np.stack([ret_l, ret_r], axis=1))

    def _clip_rews(self, clip_id: str) -> np.ndarray:
        """A stored clip's true rewards, without reading an image clip's observations."""
        if clip_id in self._clip_cache:
            return self._clip_cache[clip_id][2]
        return load_clip_acts_rews(self.run_dir / self.store.clip(clip_id).npz)[1]

    def _clip_arrays(self, clip_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(obs, acts, true rews) of a stored clip; small clips are read once and kept, image clips at every call."""
        if clip_id in self._clip_cache:
            return self._clip_cache[clip_id]
        arrays = load_clip_arrays(self.run_dir / self.store.clip(clip_id).npz)
        if arrays[0].nbytes <= SPILL_BYTES:  # image clips are never kept, so memory stays flat
            self._clip_cache[clip_id] = arrays
        return arrays

    def on_rollout_end(self, true_returns: list[float], learned_returns: list[float],
                       metrics: Optional[dict[str, list[float]]] = None) -> None:
        self.rollouts += 1
        step = self.model.num_timesteps
        if self.learned:
            new = self.recorder.take_new()
            pool = list(self.recorder.pool)
            candidates = pool[-new:] if new >= 2 else pool  # this rollout's clips: the current policy
            corr = self._reward_corr(candidates)
            if self.cfg.feedback.oracle_fill and self.human:
                self._fill_pending()  # pairs asked at an earlier rollout end that nobody answered
            self.gather(self.schedule.due(step, self.store.count_pairs()), candidates)
            if self._refit_due():
                self.refit(self.cfg.reward.epochs)
        else:
            corr = math.nan
        labels = self.store.count_labels() if self.learned else 0
        row = dict(reward_corr=corr, env_steps=step, true_episode_return=_mean(true_returns),
                   learned_episode_return=_mean(learned_returns), labels=labels,
                   reward_model_version=self.ensemble.version if self.learned else 0,
                   rm_train_acc=self.fit.train_acc, rm_val_acc=self.fit.val_acc, rm_train_loss=self.fit.train_loss,
                   rm_val_loss=self.fit.val_loss, l2=self.fit.l2, wall_seconds=round(self.wall_seconds, 2))
        for name in self.episode_metrics:
            row[EPISODE_METRIC_PREFIX + name] = _mean((metrics or {}).get(name, []))
        self.pending_rows.append(row)
        log = self.model.logger
        log.record("charts/true_episode_return", row["true_episode_return"])
        for name in self.episode_metrics:
            log.record(f"episode/{name}", row[EPISODE_METRIC_PREFIX + name])
        log.record("charts/learned_episode_return", row["learned_episode_return"])
        log.record("reward/labels", labels)
        for k in ("rm_train_acc", "rm_val_acc", "rm_train_loss", "rm_val_loss", "l2", "reward_corr"):
            log.record(f"reward/{k[3:] if k.startswith('rm_') else k}", row[k])

    def _reward_corr(self, clips: list[Clip]) -> float:
        """Pearson correlation of learned vs true per-step reward on this rollout's clips: how well
        the reward model tracks the truth where the agent is now (reward hacking shows up here)."""
        if not self.ensemble.fitted or not clips:
            return math.nan
        clips = clips[-(64 if self.cfg.reward.arch == "mlp" else 8):]  # a CNN costs ~0.1 ms an image and member
        pred, _ = self.ensemble.predict(np.concatenate([c.obs for c in clips]),
                                        np.concatenate([c.acts for c in clips]), with_std=False)
        true = np.concatenate([c.rews for c in clips])
        if pred.std() == 0 or true.std() == 0:
            return math.nan
        return float(np.corrcoef(pred, true)[0, 1])

    # --- checkpoints and resume ---------------------------------------------------

    @property
    def wall_seconds(self) -> float:
        return self.wall_before + time.monotonic() - self.t0

    def checkpoint(self, finished: bool = False) -> Path:
        """Write a complete checkpoint folder, then point `latest` at it; older ones are pruned."""
        with self.timed("checkpoint"):
            return self._checkpoint(finished)

    def _checkpoint(self, finished: bool) -> Path:
        self._flush_rows()
        step = self.model.num_timesteps
        final = self.ckpt_dir / f"step_{step:010d}"
        tmp = self.ckpt_dir / f".tmp_{step:010d}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.model.save(tmp / "ppo.zip")
        fault_point("checkpoint")
        np.savez(tmp / "vecnormalize.npz", **_rms_arrays(self.venv))
        if self.learned:
            torch.save(self.ensemble.state_dict(), tmp / "ensemble.pt")
            torch.save(self.reward_trainer.state_dict(), tmp / "reward_trainer.pt")
        state = dict(env_steps=step, rollouts=self.rollouts, wall_seconds=self.wall_seconds, finished=finished,
                     labels=self.store.count_labels() if self.learned else 0,
                     rng=self.rng.bit_generator.state, fit=self.fit._asdict(),
                     labels_at_fit=self.labels_at_fit, initial_policy_steps=self.initial_policy_steps,
                     ppo_updates=self.model._n_updates,
                     # the label schedule is a function of (env step, pairs asked); both are kept here
                     schedule=dict(asked=self.store.count_pairs(), target=self.schedule.target(step),
                                   total=self.schedule.total) if self.learned else None)
        (tmp / "state.json").write_text(json.dumps(state, default=float))
        if final.exists():  # same step checkpointed twice (e.g. the final one): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        fault_point("checkpoint_pointer")
        _atomic_write(self.ckpt_dir / "latest", final.name)
        for old in sorted(self.ckpt_dir.glob("step_*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _latest(self) -> Optional[Path]:
        return latest_checkpoint(self.run_dir)

    def _read_state(self) -> dict:
        return read_state(self.run_dir)

    def _restore(self) -> None:
        for tmp in self.ckpt_dir.glob(".tmp_*"):  # a checkpoint that a kill cut short
            shutil.rmtree(tmp, ignore_errors=True)
        latest = self._latest()
        if latest is None:  # killed before the first checkpoint: start PPO again, keep every label
            self._truncate_progress(0)
            return
        state = json.loads((latest / "state.json").read_text())
        # Weights only (torch.load weights_only=True inside): PPO.load would unpickle ppo.zip's `data`, and a run
        # folder may have been handed over. Everything else PPO needs is in state.json.
        self.model.set_parameters(str(latest / "ppo.zip"), exact_match=True, device=self.cfg.device)
        self.model.num_timesteps = state["env_steps"]
        self.model._n_updates = state.get("ppo_updates", 0)
        with np.load(latest / "vecnormalize.npz") as rms:
            _set_rms(self.venv, rms)
        if self.learned:
            self.ensemble.load_state_dict(torch.load(latest / "ensemble.pt", weights_only=True))
            self.reward_trainer.load_state_dict(torch.load(latest / "reward_trainer.pt", weights_only=True))
            self.fit = FitStats(**state["fit"])
            self.labels_at_fit = state["labels_at_fit"]
        self.initial_policy_steps = state.get("initial_policy_steps", 0)
        self.rng.bit_generator.state = state["rng"]
        self.rollouts = state["rollouts"]
        self.wall_before = state["wall_seconds"]
        self._truncate_progress(state["env_steps"])

    # --- progress.csv -------------------------------------------------------------

    @property
    def progress_path(self) -> Path:
        return self.run_dir / "progress.csv"

    def _flush_rows(self) -> None:
        if not self.pending_rows:
            return
        new = not self.progress_path.exists()
        with open(self.progress_path, "a", newline="") as fh:
            w = csv.DictWriter(fh, self.columns)
            if new:
                w.writeheader()
            half = len(self.pending_rows) // 2
            w.writerows(self.pending_rows[:half])
            fh.flush()
            fault_point("progress")
            w.writerows(self.pending_rows[half:])
            fh.flush()
            os.fsync(fh.fileno())
        self.pending_rows.clear()

    def _truncate_progress(self, env_steps: int) -> None:
        """Drop rows logged after the checkpoint we resume from: they will be logged again."""
        if not self.progress_path.exists():
            return
        with open(self.progress_path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if _row_step(r) <= env_steps]
        tmp = self.progress_path.with_name(".progress.csv.tmp")
        with open(tmp, "w", newline="") as fh:  # with this code's columns, so the rows appended next line up
            w = csv.DictWriter(fh, self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.progress_path)

    # --- the end ------------------------------------------------------------------

    def finish(self) -> RunResult:
        from prefrl.plots import learning_curve

        returns = evaluate(self.policy(), self.cfg.env, self.cfg.eval_episodes) if self.cfg.eval_episodes else \
            np.array([math.nan])
        labels = self.store.count_labels() if self.learned else 0
        result = RunResult(self.run_dir, float(returns.mean()), float(returns.std()), labels, self.fit.val_acc,
                           self.model.num_timesteps, self.wall_seconds, peak_rss_mb())
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in result._asdict().items()}
        summary["eval_returns"] = returns.tolist()
        summary["initial_policy_steps"] = self.initial_policy_steps
        summary["phase_seconds"] = {k: round(v, 2) for k, v in self.phase_seconds.items()}
        _atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=float))
        if self.progress_path.exists():
            learning_curve(self.progress_path, self.run_dir / "learning_curve.png", title=self.run_dir.name)
        self.close()
        return result

    def policy(self):
        """Deterministic policy on raw observations (normalised with PPO's frozen statistics)."""
        def act(obs: np.ndarray) -> np.ndarray:
            return self.model.predict(self.venv.normalize_obs(obs), deterministic=True)[0]
        return act

    def close(self) -> None:
        self.venv.close()
        if self.learned:
            self.store.close()
        unlock_run(self.run_dir)


class _LoopCallback(BaseCallback):
    """Drives the reward loop from inside the one PPO.learn() call."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.trainer = trainer
        self.true_returns: list[float] = []
        self.learned_returns: list[float] = []
        self.metrics: dict[str, list[float]] = {name: [] for name in trainer.episode_metrics}
        self.started = False

    def _on_rollout_start(self) -> None:
        # Here PPO has just updated on the previous rollout: policy and step count agree.
        t = self.trainer
        if self.started and t.rollouts % t.cfg.checkpoint_every == 0:
            t.checkpoint()
        self.started = True

    def _on_step(self) -> bool:
        _check_interrupt()
        for info in self.locals["infos"]:
            if "episode" in info:
                self.true_returns.append(info["episode"]["r"])
                for name, values in self.metrics.items():
                    values.append(float(info["episode"][name]))
            if "learned_episode_return" in info:
                self.learned_returns.append(info["learned_episode_return"])
        return True

    def _on_rollout_end(self) -> None:
        if self.trainer.relabel is not None:  # per-rollout learned reward: the returns are known only now
            self.learned_returns.extend(self.trainer.relabel.episode_returns)
        self.trainer.on_rollout_end(self.true_returns, self.learned_returns, self.metrics)
        fault_point("ppo_update")
        self.true_returns, self.learned_returns = [], []
        self.metrics = {name: [] for name in self.metrics}


class _FiniteCheck(VecCheckNan):
    """SB3's VecCheckNan on the env's observations and rewards (and PPO's actions), as one EnvError line."""

    def __init__(self, venv: VecEnv, env_id: str):
        super().__init__(venv, raise_exception=True)
        self.env_id = env_id

    def _check_val(self, event: str, **kwargs) -> None:
        for name, value in kwargs.items():
            value = np.asarray(value)
            # one isfinite pass per array (integer frames cannot hold NaN: skipped); the details only on failure
            if name == "dones" or value.dtype.kind not in "fc" or np.isfinite(value).all():
                continue
            kind = " and ".join(k for _, k in self.check_array_value(name, value))
            if event == "step_async":
                raise RunError(f"PPO produced {kind} in its {name} (training diverged); "
                               "lower --learning-rate or --max-grad-norm and start a new run")
            raise EnvError(f"{self.env_id} returned {kind} in its {name} "
                           f"({'at reset' if event == 'reset' else 'in a step'}); "
                           "fix the env so its observations and rewards stay finite")


def _row_step(row: dict) -> float:
    """env_steps of a progress.csv row; +inf for a row a kill cut short (missing fields or a torn number)."""
    if None in row.values() or None in row:
        return math.inf
    try:
        return int(row["env_steps"])
    except (KeyError, TypeError, ValueError):
        return math.inf


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else math.nan


def _rms_arrays(venv: VecNormalize) -> dict[str, np.ndarray]:
    d = dict(ret_mean=venv.ret_rms.mean, ret_var=venv.ret_rms.var, ret_count=venv.ret_rms.count)
    if venv.norm_obs:  # without it (image observations) VecNormalize keeps no observation statistics
        d.update(obs_mean=venv.obs_rms.mean, obs_var=venv.obs_rms.var, obs_count=venv.obs_rms.count)
    return d


def _set_rms(venv: VecNormalize, d) -> None:
    if venv.norm_obs:
        venv.obs_rms.mean, venv.obs_rms.var, venv.obs_rms.count = d["obs_mean"], d["obs_var"], float(d["obs_count"])
    venv.ret_rms.mean, venv.ret_rms.var, venv.ret_rms.count = d["ret_mean"], d["ret_var"], float(d["ret_count"])


# --- reusing labels and reward models ---------------------------------------------


def ensemble_file(path: Path) -> Path:
    """ensemble.pt from a run folder (its latest checkpoint), a checkpoint folder, or the file itself."""
    if path.is_file():
        return path
    if (path / "ensemble.pt").exists():
        return path / "ensemble.pt"
    pointer = path / "checkpoints" / "latest"
    if pointer.exists() and (path / "checkpoints" / pointer.read_text().strip() / "ensemble.pt").exists():
        return path / "checkpoints" / pointer.read_text().strip() / "ensemble.pt"
    raise RunError(f"no reward model at {path}; pass a run folder with checkpoints, a checkpoint folder or ensemble.pt")


def _source_run(path: Path) -> Path:
    """The run folder that holds a label DB or an ensemble file."""
    for p in [path, *path.parents]:
        if (p / "config.json").exists():
            return p
    raise RunError(f"{path} is not inside a run folder (no config.json above it); pass a file made by prefrl train")


def reward_config_of(path: Path, cfg: TrainConfig) -> TrainConfig:
    """--reward-model: build the ensemble exactly as the run that trained it did; how PPO sees its output
    (PPO_VIEW_FIELDS: --output-mean, --std-weight) is this run's to choose."""
    src_file = ensemble_file(path)
    src = TrainConfig.from_json((_source_run(src_file) / "config.json").read_text())
    if src.env.env != cfg.env.env:
        raise ConfigError(f"the reward model at {path} was trained on {src.env.env}, not {cfg.env.env}; "
                          f"use --env {src.env.env}")
    return replace(cfg, reward=replace(src.reward, **{f: getattr(cfg.reward, f) for f in PPO_VIEW_FIELDS}))


def check_label_db(db: Path, obs_shape: tuple[int, ...]) -> tuple[Path, list, list]:
    """--labels: check another run's label DB before anything is written or copied: a prefrl store with usable
    labels whose clip files exist inside that run and hold observations of this env's shape.
    Returns (its run folder, its trainable label records, their clip rows)."""
    with LabelStore(db) as src:  # first: is it a label store at all
        records = src.labels(trainable_only=True)
        if not records:
            raise RunError(f"{db} holds no usable labels (left/right/equal); label some pairs first")
        rows = [src.clip(c) for c in sorted({c for r in records for c in (r.left_clip, r.right_clip)})]
    for name in {r.labeler for r in records}:
        check_labeler(name)
    src_dir = _source_run(db)
    for row in rows:
        npz = run_file(src_dir, row.npz)
        if not npz.is_file():
            raise RunError(f"clip file {npz} is missing; restore it or use another label DB")
        try:
            obs, _, _ = load_clip_arrays(npz)
        except Exception as exc:  # noqa: BLE001 - numpy raises many types for a damaged file
            raise RunError(f"clip file {npz} is unreadable ({type(exc).__name__}); restore it or use another "
                           "label DB") from None
        if obs.shape[1:] != tuple(obs_shape):
            raise RunError(f"labels in {db} were recorded on observations {obs.shape[1:]}, this env has "
                           f"{tuple(obs_shape)}; use the same --env as that run")
    return src_dir, records, rows


def import_labels(db: Path, store: LabelStore, run_dir: Path, obs_shape: tuple[int, ...]) -> int:
    """Copy the trainable labels of another run (clips, pairs, labels, provenance) into this run's store."""
    src_dir, records, rows = check_label_db(db, obs_shape)
    (run_dir / "clips").mkdir(exist_ok=True)
    for row in rows:
        shutil.copy2(run_file(src_dir, row.npz), run_dir / "clips" / Path(row.npz).name)
        video = None
        if row.video and run_file(src_dir, row.video).is_file():
            shutil.copy2(run_file(src_dir, row.video), run_dir / "clips" / Path(row.video).name)
            video = f"clips/{Path(row.video).name}"
        store.add_clip(row.id, row.env_step, row.true_return, row.length, f"clips/{Path(row.npz).name}", video)
    for r in records:
        (pid,) = store.add_pairs([(r.left_clip, r.right_clip)], r.rule, r.model_version)
        store.add_label(pid, r.answer, r.labeler, r.seconds, r.model_version)
    store.set_meta("imported_from", str(db))
    return len(records)


def check_reward_model(cfg: TrainConfig) -> None:
    """--reward-model: load it (weights only) into an ensemble shaped for this env before anything is written."""
    path = ensemble_file(cfg.reward_model)
    env = make_env(cfg.env)
    try:
        ensemble = make_ensemble(env.observation_space, env.action_space, cfg.reward, seed=cfg.seed)
    finally:
        env.close()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols; the error says enough
            ensemble.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not a state dict
        reason = ("not a weights-only state dict" if "Weights only load failed" in str(exc) else
                  (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100])
        raise RunError(f"{path} is not a prefrl reward model for {cfg.env.env} ({reason}); pass the run folder "
                       "or ensemble.pt of a run on this env") from None


PROBE_STEPS = 200
"""Random steps taken by check_run_config before a run folder exists."""


def probe_env(cfg: TrainConfig) -> None:
    """Build the env and take a few random steps before anything is written: an unknown id, unsupported spaces
    and NaN/inf observations or rewards stop here with one line, not in the middle of a run."""
    env = make_env(cfg.env)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium's env checker warns about NaN as well; we say it in one line
            env.action_space.seed(cfg.seed)
            obs, _ = env.reset(seed=cfg.seed)
            where = "at reset"
            for t in range(PROBE_STEPS + 1):
                obs = np.asarray(obs)
                if obs.dtype.kind in "fc" and not np.isfinite(obs).all():
                    raise EnvError(f"{cfg.env.env} returned NaN or inf in its observation {where}; fix the env so "
                                   "its observations stay finite")
                if t == PROBE_STEPS:
                    break
                obs, rew, terminated, truncated, _ = env.step(env.action_space.sample())
                where = f"at step {t + 1} of random actions"
                if not np.isfinite(np.asarray(rew, dtype=np.float64)).all():
                    raise EnvError(f"{cfg.env.env} returned a NaN or inf reward {where}; fix the env so its rewards "
                                   "stay finite")
                if terminated or truncated:
                    obs, _ = env.reset()
                    where = "at reset"
    finally:
        env.close()


_RUN_LOCKS: dict[Path, int] = {}


def lock_run(run_dir: Path) -> None:
    """One trainer per run folder: a second `prefrl train --resume` on a running run stops with one line.
    An flock on the folder itself (nothing is written), released by unlock_run or by the kernel when the
    process dies, kill -9 included."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(f"run folder {run_dir} is in use by another prefrl train; wait for it to finish or "
                       "stop it, then --resume") from None
    _RUN_LOCKS[run_dir.resolve()] = fd


def unlock_run(run_dir: Path) -> None:
    fd = _RUN_LOCKS.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


# --- entry points -------------------------------------------------------------------


def check_run_config(cfg: TrainConfig) -> None:
    """Checks that need the env: raise ConfigError/EnvError with a one-line fix."""
    cfg.validate()
    if cfg.labels is not None and not cfg.labels.is_file():
        raise ConfigError(f"--labels {cfg.labels} does not exist; pass RUN_DIR/labels.sqlite of an earlier run")
    if cfg.reward_model is not None:
        ensemble_file(cfg.reward_model)
    probe_env(cfg)  # unknown id, unsupported spaces, no time limit, NaN/inf: fail before writing anything
    if cfg.reward_source == "learned" and cfg.feedback.render and env_family(cfg.env.env) == "mujoco":
        render_backend()  # no display, no GL library: say so before a run folder exists
    limit = episode_limit(cfg.env)
    if cfg.reward_source == "learned" and limit is not None and cfg.feedback.clip_length > limit:
        raise ConfigError(f"--clip-length {cfg.feedback.clip_length} is longer than an episode of {cfg.env.env} "
                          f"({limit} steps); use --clip-length <= {limit}")


def train(cfg: TrainConfig) -> RunResult:
    """Start a new run; its folder must not exist."""
    check_run_config(cfg)
    if cfg.reward_model is not None:
        cfg = reward_config_of(cfg.reward_model, cfg)
        check_reward_model(cfg)
    if cfg.labels is not None:  # not a store, a newer schema, no labels, missing clips: say so before making a folder
        env = make_env(cfg.env)
        env.close()
        check_label_db(cfg.labels, env.observation_space.shape)
    run_dir = cfg.run_dir or cfg.results_dir / run_name(cfg)
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # permission denied, read-only file system, a file where a folder should be...
        raise RunError(f"cannot create {run_dir.parent} ({(exc.strerror or str(exc)).lower()}); "
                       "pick a writable --results-dir") from None
    cfg = replace(cfg, run_dir=run_dir)
    # The folder appears whole, config.json inside, or not at all: a kill in between leaves no folder that
    # neither `train` (it exists) nor `--resume` (no config.json) would take, only a hidden temp folder.
    tmp = run_dir.parent / f".{run_dir.name}.{os.getpid()}.tmp"
    try:
        if run_dir.exists():
            raise FileExistsError
        tmp.mkdir()
        (tmp / "config.json").write_text(cfg.to_json())
        if run_dir.exists():
            raise FileExistsError
        os.rename(tmp, run_dir)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"run folder {run_dir} exists; continue it with --resume {run_dir} "
                       "or pick another --run-dir") from None
    except OSError as exc:  # permission denied, read-only file system, a file where a folder should be...
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"cannot create {run_dir} ({(exc.strerror or str(exc)).lower()}); "
                       "pick a writable --results-dir") from None
    lock_run(run_dir)
    try:
        return Trainer(cfg, run_dir, resuming=False).run()
    finally:
        unlock_run(run_dir)


def make_ppo(cfg: TrainConfig, venv: VecEnv, relabelled: bool = False) -> PPO:
    """PPO as the config says; checkpoints are loaded into it with set_parameters (weights only, no pickle).
    relabelled: RelabelRollout writes each rollout's rewards, so the buffer defers returns and advantages."""
    p = cfg.ppo
    box = not hasattr(venv.action_space, "n")
    lr = LinearSchedule(p.learning_rate, 0.0, 1.0) if p.lr_schedule == "linear" else p.learning_rate
    return PPO(p.policy, venv, n_steps=p.n_steps, batch_size=p.minibatch_size, n_epochs=p.n_epochs,
               learning_rate=lr, gamma=p.gamma, gae_lambda=p.gae_lambda, clip_range=p.clip_range,
               ent_coef=p.ent_coef, vf_coef=p.vf_coef, max_grad_norm=p.max_grad_norm, target_kl=p.target_kl,
               normalize_advantage=p.normalize_advantage,
               use_sde=p.use_sde and box, sde_sample_freq=p.sde_sample_freq,
               policy_kwargs=dict(net_arch=list(p.net_arch)), seed=cfg.seed, device=cfg.device, verbose=0,
               rollout_buffer_class=RelabelledRolloutBuffer if relabelled else None)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The folder `checkpoints/latest` points to (None before the first checkpoint); RunError when damaged."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise RunError(f"checkpoint {path} is incomplete; delete {pointer} to restart the run from its labels")
    return path


def read_state(run_dir: Path) -> dict:
    """state.json of the latest checkpoint ({} before the first one)."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return {}
    try:
        state = json.loads((latest / "state.json").read_text())
    except json.JSONDecodeError:
        state = None
    if not isinstance(state, dict) or "env_steps" not in state:
        raise RunError(f"{latest / 'state.json'} is damaged; delete {run_dir / 'checkpoints' / 'latest'} to restart "
                       "the run from its labels")
    return state


def finished_result(run_dir: Path) -> Optional[RunResult]:
    """The result of a run that already finished (summary.json written), so resuming it changes nothing."""
    if not read_state(run_dir).get("finished") or not (run_dir / "summary.json").is_file():
        return None
    try:
        s = json.loads((run_dir / "summary.json").read_text())
        return RunResult(run_dir, *(s[k] for k in RunResult._fields[1:]))
    except (json.JSONDecodeError, KeyError, TypeError):
        return None  # killed while writing the summary: finish() writes it again


def resume(run_dir: Path, progress_bar: Optional[bool] = None) -> RunResult:
    """Continue a stopped run from its latest checkpoint, with its own config.json."""
    path = run_dir / "config.json"
    if not path.exists():
        raise RunError(f"{run_dir} is not a run folder (no config.json); pass a folder made by prefrl train")
    cfg = TrainConfig.from_json(path.read_text(), source=str(path))
    if progress_bar is not None:
        cfg = replace(cfg, progress_bar=progress_bar)
    check_run_config(cfg)
    done = finished_result(run_dir)  # also checks the checkpoint before anything is written
    if done is not None:
        print(f"run {run_dir} already finished; nothing to do", file=sys.stderr)
        return done
    lock_run(run_dir)
    try:
        return Trainer(cfg, run_dir, resuming=True).run()
    finally:
        unlock_run(run_dir)


__all__ = ["train", "resume", "RunResult", "RunError", "Trainer", "EnvError", "ConfigError"]
