"""`train(cfg)`: one run, as the named phases of ../shared/DESIGN.md.

    set up run folder -> initial labels from the initial policy -> pretrain reward
    -> PPO.learn() once; at each rollout end: harvest clips -> choose pairs -> label
       -> refit -> (the ensemble is updated in place, so LearnedReward uses it at once)
    -> final checkpoint, evaluation on the true reward, learning-curve PNG.

Checkpoints are taken at rollout start (after PPO's update, so the policy and the
step count agree) into a fresh folder that is renamed into place, then pointed to by
`checkpoints/latest`: a kill at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import csv
import json
import math
import os
import resource
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from prefrl.clips import Clip, ClipRecorder, load_clip_arrays, save_clip
from prefrl.config import ConfigError, TrainConfig
from prefrl.envs import EnvError, episode_limit, make_env, make_vec_env
from prefrl.evaluate import evaluate
from prefrl.labels.oracle import make_teacher
from prefrl.labels.store import Answer, DuplicateLabel, LabelStore, StoreError
from prefrl.reward.model import RewardEnsemble
from prefrl.reward.train import FitStats, PreferenceData, RewardTrainer
from prefrl.reward.wrapper import LearnedReward
from prefrl.sampling import make_sampler
from prefrl.schedule import LabelSchedule

PROGRESS_COLUMNS = [
    "env_steps", "true_episode_return", "learned_episode_return", "labels", "reward_model_version",
    "rm_train_acc", "rm_val_acc", "rm_train_loss", "rm_val_loss", "l2", "reward_corr", "wall_seconds",
]
NO_FIT = FitStats(0, math.nan, math.nan, math.nan, math.nan, math.nan)


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

        fb = cfg.feedback
        self.human = self.learned and fb.labeler == "human" and not (cfg.labels or cfg.reward_model)
        venv: VecEnv = make_vec_env(cfg.env, cfg.seed, render=fb.render and self.learned)
        self.recorder: Optional[ClipRecorder] = None
        self.ensemble: Optional[RewardEnsemble] = None
        if self.learned:
            self.store = LabelStore(run_dir / "labels.sqlite")
            self.recorder = ClipRecorder(venv, fb.clip_length, fb.clip_pool, record_frames=fb.render)
            self.ensemble = RewardEnsemble(venv.observation_space, venv.action_space, cfg.reward, seed=cfg.seed)
            if cfg.reward_model and not resuming:
                self.ensemble.load_state_dict(torch.load(ensemble_file(cfg.reward_model), weights_only=True))
            if cfg.labels and not resuming:
                import_labels(cfg.labels, self.store, run_dir, venv.observation_space.shape)
            self.reward_trainer = RewardTrainer(self.ensemble, cfg.reward, seed=cfg.seed)
            self.teacher = make_teacher(cfg.feedback, seed=cfg.seed)
            self.sampler = make_sampler(cfg.feedback.sampler, self.ensemble.clip_returns,
                                        cfg.feedback.candidate_factor, ready=self._disagreement_ready)
            if cfg.labels or cfg.reward_model:  # a fixed label set (or none): the schedule asks for nothing
                n = self.store.count_pairs()
                self.schedule = LabelSchedule(n, n, 1.0, 1)
            else:
                self.schedule = LabelSchedule.from_config(cfg)
            venv = LearnedReward(self.recorder, self.ensemble)
        self.venv = VecNormalize(venv, norm_obs=cfg.env.normalize_obs, norm_reward=cfg.env.normalize_reward,
                                 gamma=cfg.ppo.gamma)
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
        p = self.cfg.ppo
        box = not hasattr(self.venv.action_space, "n")
        return PPO("MlpPolicy", self.venv, n_steps=p.n_steps, batch_size=p.minibatch_size, n_epochs=p.n_epochs,
                   learning_rate=p.learning_rate, gamma=p.gamma, gae_lambda=p.gae_lambda, clip_range=p.clip_range,
                   ent_coef=p.ent_coef, vf_coef=p.vf_coef, max_grad_norm=p.max_grad_norm,
                   use_sde=p.use_sde and box, sde_sample_freq=p.sde_sample_freq,
                   policy_kwargs=dict(net_arch=list(p.net_arch)), seed=self.cfg.seed, device=self.cfg.device,
                   verbose=0)

    def _disagreement_ready(self) -> bool:
        return self.ensemble is not None and self.ensemble.fitted  # the sampler itself handles a 1-member ensemble

    # --- phases -------------------------------------------------------------------

    def run(self) -> RunResult:
        state = self._read_state()
        if state.get("finished"):
            print(f"run {self.run_dir} already finished; nothing to do", file=sys.stderr)
        else:
            if self.learned:
                self.initial_labels()
            remaining = self.cfg.total_timesteps - self.model.num_timesteps
            if remaining > 0:
                self.model.learn(remaining, callback=_LoopCallback(self), progress_bar=self.cfg.progress_bar,
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
            self.gather(due, candidates=list(self.recorder.pool))
        if self.human:
            self._wait_for_first_labels()
        if not self.ensemble.fitted and self.store.count_labels(trainable_only=True) > 0:
            self.refit(self.cfg.reward.pretrain_epochs)

    def _wait_for_first_labels(self) -> None:
        """The one time training waits on a person: until the first labels are in."""
        fb = self.cfg.feedback
        want = min(self.schedule.initial, fb.wait_labels if fb.wait_labels is not None else self.schedule.initial)
        have = self.store.count_labels(trainable_only=True)
        if have >= want:
            return
        print(f"\nWaiting for {want} labels. Open the labeling app in a browser with:\n\n"
              f"    prefrl app {self.run_dir}\n", file=sys.stderr, flush=True)
        from tqdm import tqdm

        with tqdm(total=want, initial=have, desc="labels", unit="label", file=sys.stderr,
                  disable=not self.cfg.progress_bar) as bar:
            while have < want:
                if fb.oracle_fill:
                    self._fill_pending()
                time.sleep(0.5)
                now = self.store.count_labels(trainable_only=True)
                bar.update(now - have)
                have = now

    def _rollout_initial_policy(self, clips_wanted: int) -> None:
        """Step the untrained policy (PPO's own initial weights) until enough clips exist."""
        self.venv.training = False  # keep these steps out of PPO's normalisation statistics
        obs = self.venv.reset()
        min_steps = self.cfg.rollout_steps
        steps = 0
        while steps < min_steps or len(self.recorder.pool) < clips_wanted:
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
        for c in {i for ch in choices for i in (ch.left, ch.right)}:
            clip = candidates[c]
            npz, video = save_clip(clip, self.run_dir)
            self.store.add_clip(clip.id, clip.env_step, clip.true_return, len(clip), npz, video)
        rules: dict[str, list] = {}
        for ch in choices:
            rules.setdefault(ch.rule, []).append(ch)
        for rule, chs in rules.items():
            pair_ids = self.store.add_pairs([(candidates[c.left].id, candidates[c.right].id) for c in chs], rule,
                                            version, [c.disagreement for c in chs] if rule != "random" else None)
            if self.human:
                continue  # pending in labels.sqlite until someone answers in the app
            answers = self.teacher.answer(np.stack([candidates[c.left].rews for c in chs]),
                                          np.stack([candidates[c.right].rews for c in chs]))
            for pid, ans in zip(pair_ids, answers):
                self.store.add_label(pid, ans, labeler=self.teacher.name, seconds=0.0, model_version=version)
        return len(choices)

    def _fill_pending(self) -> int:
        """--oracle-fill: the synthetic teacher answers every pair nobody has answered yet."""
        pending = self.store.pending_pairs()
        if not pending:
            return 0
        answers = self.teacher.answer(np.stack([self._clip_arrays(p.left_clip)[2] for p in pending]),
                                      np.stack([self._clip_arrays(p.right_clip)[2] for p in pending]))
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
            with self.timed("refit"):
                self.fit = self.reward_trainer.fit(data, epochs)
            self.store.set_meta("reward_model_version", str(self.ensemble.version))  # the app stamps labels with it
        return self.fit

    def _preference_data(self) -> Optional[PreferenceData]:
        records = self.store.labels(trainable_only=True, last=self.cfg.reward.label_buffer)
        if not records:
            return None
        left = [self._clip_arrays(r.left_clip) for r in records]
        right = [self._clip_arrays(r.right_clip) for r in records]
        target = np.array([Answer(r.answer).target for r in records], dtype=np.float32)
        return PreferenceData(np.array([r.id for r in records]), np.stack([c[0] for c in left]),
                              np.stack([c[1] for c in left]), np.stack([c[0] for c in right]),
                              np.stack([c[1] for c in right]), target)

    def _clip_arrays(self, clip_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(obs, acts, true rews) of a stored clip, read once."""
        if clip_id not in self._clip_cache:
            self._clip_cache[clip_id] = load_clip_arrays(self.run_dir / self.store.clip(clip_id).npz)
        return self._clip_cache[clip_id]

    def on_rollout_end(self, true_returns: list[float], learned_returns: list[float]) -> None:
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
        self.pending_rows.append(row)
        log = self.model.logger
        log.record("charts/true_episode_return", row["true_episode_return"])
        log.record("charts/learned_episode_return", row["learned_episode_return"])
        log.record("reward/labels", labels)
        for k in ("rm_train_acc", "rm_val_acc", "rm_train_loss", "rm_val_loss", "l2", "reward_corr"):
            log.record(f"reward/{k[3:] if k.startswith('rm_') else k}", row[k])

    def _reward_corr(self, clips: list[Clip]) -> float:
        """Pearson correlation of learned vs true per-step reward on this rollout's clips: how well
        the reward model tracks the truth where the agent is now (reward hacking shows up here)."""
        if not self.ensemble.fitted or not clips:
            return math.nan
        clips = clips[-64:]
        pred, _ = self.ensemble.predict(np.concatenate([c.obs for c in clips]),
                                        np.concatenate([c.acts for c in clips]))
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
        np.savez(tmp / "vecnormalize.npz", **_rms_arrays(self.venv))
        if self.learned:
            torch.save(self.ensemble.state_dict(), tmp / "ensemble.pt")
            torch.save(self.reward_trainer.state_dict(), tmp / "reward_trainer.pt")
        state = dict(env_steps=step, rollouts=self.rollouts, wall_seconds=self.wall_seconds, finished=finished,
                     labels=self.store.count_labels() if self.learned else 0,
                     rng=self.rng.bit_generator.state, fit=self.fit._asdict(),
                     labels_at_fit=self.labels_at_fit, initial_policy_steps=self.initial_policy_steps)
        (tmp / "state.json").write_text(json.dumps(state, default=float))
        if final.exists():  # same step checkpointed twice (e.g. the final one): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write(self.ckpt_dir / "latest", final.name)
        for old in sorted(self.ckpt_dir.glob("step_*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _latest(self) -> Optional[Path]:
        pointer = self.ckpt_dir / "latest"
        if not pointer.exists():
            return None
        path = self.ckpt_dir / pointer.read_text().strip()
        if not (path / "state.json").exists():
            raise RunError(f"checkpoint {path} is incomplete; delete {pointer} to restart the run from its labels")
        return path

    def _read_state(self) -> dict:
        latest = self._latest()
        return json.loads((latest / "state.json").read_text()) if latest else {}

    def _restore(self) -> None:
        latest = self._latest()
        if latest is None:  # killed before the first checkpoint: start PPO again, keep every label
            self._truncate_progress(0)
            return
        state = json.loads((latest / "state.json").read_text())
        self.model = PPO.load(latest / "ppo.zip", env=self.venv, device=self.cfg.device)
        self.model.set_logger(configure(str(self.run_dir / "tb"), ["tensorboard"]))
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
            w = csv.DictWriter(fh, PROGRESS_COLUMNS)
            if new:
                w.writeheader()
            w.writerows(self.pending_rows)
            fh.flush()
            os.fsync(fh.fileno())
        self.pending_rows.clear()

    def _truncate_progress(self, env_steps: int) -> None:
        """Drop rows logged after the checkpoint we resume from: they will be logged again."""
        if not self.progress_path.exists():
            return
        with open(self.progress_path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["env_steps"]) <= env_steps]
        tmp = self.progress_path.with_name(".progress.csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, PROGRESS_COLUMNS)
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


class _LoopCallback(BaseCallback):
    """Drives the reward loop from inside the one PPO.learn() call."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.trainer = trainer
        self.true_returns: list[float] = []
        self.learned_returns: list[float] = []
        self.started = False

    def _on_rollout_start(self) -> None:
        # Here PPO has just updated on the previous rollout: policy and step count agree.
        t = self.trainer
        if self.started and t.rollouts % t.cfg.checkpoint_every == 0:
            t.checkpoint()
        self.started = True

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self.true_returns.append(info["episode"]["r"])
            if "learned_episode_return" in info:
                self.learned_returns.append(info["learned_episode_return"])
        return True

    def _on_rollout_end(self) -> None:
        self.trainer.on_rollout_end(self.true_returns, self.learned_returns)
        self.true_returns, self.learned_returns = [], []


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else math.nan


def _rms_arrays(venv: VecNormalize) -> dict[str, np.ndarray]:
    return dict(obs_mean=venv.obs_rms.mean, obs_var=venv.obs_rms.var, obs_count=venv.obs_rms.count,
                ret_mean=venv.ret_rms.mean, ret_var=venv.ret_rms.var, ret_count=venv.ret_rms.count)


def _set_rms(venv: VecNormalize, d) -> None:
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
    """--reward-model: build the ensemble exactly as the run that trained it did."""
    src_file = ensemble_file(path)
    src = TrainConfig.from_json((_source_run(src_file) / "config.json").read_text())
    if src.env.env != cfg.env.env:
        raise ConfigError(f"the reward model at {path} was trained on {src.env.env}, not {cfg.env.env}; "
                          f"use --env {src.env.env}")
    return replace(cfg, reward=src.reward)


def import_labels(db: Path, store: LabelStore, run_dir: Path, obs_shape: tuple[int, ...]) -> int:
    """Copy the trainable labels of another run (clips, pairs, labels, provenance) into this run's store."""
    src_dir = _source_run(db)
    with LabelStore(db) as src:
        records = src.labels(trainable_only=True)
        if not records:
            raise RunError(f"{db} holds no usable labels (left/right/equal); label some pairs first")
        clip_ids = {c for r in records for c in (r.left_clip, r.right_clip)}
        for cid in sorted(clip_ids):
            row = src.clip(cid)
            if not (src_dir / row.npz).exists():
                raise RunError(f"clip file {src_dir / row.npz} is missing; restore it or use another label DB")
            obs, _, _ = load_clip_arrays(src_dir / row.npz)
            if obs.shape[1:] != tuple(obs_shape):
                raise RunError(f"labels in {db} were recorded on observations {obs.shape[1:]}, this env has "
                               f"{tuple(obs_shape)}; use the same --env as that run")
            (run_dir / "clips").mkdir(exist_ok=True)
            shutil.copy2(src_dir / row.npz, run_dir / "clips" / Path(row.npz).name)
            video = None
            if row.video and (src_dir / row.video).exists():
                shutil.copy2(src_dir / row.video, run_dir / "clips" / Path(row.video).name)
                video = f"clips/{Path(row.video).name}"
            store.add_clip(cid, row.env_step, row.true_return, row.length, f"clips/{Path(row.npz).name}", video)
        for r in records:
            (pid,) = store.add_pairs([(r.left_clip, r.right_clip)], r.rule, r.model_version)
            store.add_label(pid, r.answer, r.labeler, r.seconds, r.model_version)
        store.set_meta("imported_from", str(db))
    return len(records)


# --- entry points -------------------------------------------------------------------


def check_run_config(cfg: TrainConfig) -> None:
    """Checks that need the env: raise ConfigError/EnvError with a one-line fix."""
    cfg.validate()
    if cfg.labels is not None and not cfg.labels.is_file():
        raise ConfigError(f"--labels {cfg.labels} does not exist; pass RUN_DIR/labels.sqlite of an earlier run")
    if cfg.reward_model is not None:
        ensemble_file(cfg.reward_model)
    make_env(cfg.env).close()  # unknown id, unsupported spaces, no time limit: fail before writing anything
    limit = episode_limit(cfg.env)
    if cfg.reward_source == "learned" and limit is not None and cfg.feedback.clip_length > limit:
        raise ConfigError(f"--clip-length {cfg.feedback.clip_length} is longer than an episode of {cfg.env.env} "
                          f"({limit} steps); use --clip-length <= {limit}")


def train(cfg: TrainConfig) -> RunResult:
    """Start a new run; its folder must not exist."""
    check_run_config(cfg)
    if cfg.reward_model is not None:
        cfg = reward_config_of(cfg.reward_model, cfg)
    if cfg.labels is not None:
        LabelStore(cfg.labels).close()  # not a store, or a newer schema: say so before making a folder
    run_dir = cfg.run_dir or cfg.results_dir / run_name(cfg)
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
    except FileExistsError:
        raise RunError(f"run folder {run_dir} exists; continue it with --resume {run_dir} "
                       "or pick another --run-dir") from None
    except PermissionError:
        raise RunError(f"cannot create {run_dir} (permission denied); pick a writable --results-dir") from None
    cfg = replace(cfg, run_dir=run_dir)
    _atomic_write(run_dir / "config.json", cfg.to_json())
    return Trainer(cfg, run_dir, resuming=False).run()


def resume(run_dir: Path, progress_bar: Optional[bool] = None) -> RunResult:
    """Continue a stopped run from its latest checkpoint, with its own config.json."""
    path = run_dir / "config.json"
    if not path.exists():
        raise RunError(f"{run_dir} is not a run folder (no config.json); pass a folder made by prefrl train")
    cfg = TrainConfig.from_json(path.read_text(), source=str(path))
    if progress_bar is not None:
        cfg = replace(cfg, progress_bar=progress_bar)
    check_run_config(cfg)
    return Trainer(cfg, run_dir, resuming=True).run()


__all__ = ["train", "resume", "RunResult", "RunError", "Trainer", "EnvError", "ConfigError"]
