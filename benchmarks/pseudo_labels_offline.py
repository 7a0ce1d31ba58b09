"""Do SURF's pseudo-labels (--semi-ratio) make a reward model rank unseen clip pairs better, without any RL?

    .venv/bin/python benchmarks/pseudo_labels_offline.py [--labels 8,16,32] [--seeds 6] [--ratios 0,4]

A known reward on 3-d observations and a 1-d action (r = -|obs|^2 - 0.1 a^2, the shape of the test suite's task),
random 10-step clips. For each label budget and seed: that many oracle-labelled pairs, a pool of 300 unlabelled
clips, one 100-epoch fit per --semi-ratio (the same seed, so the same initial weights and labels), then the share
of 2,000 fresh pairs each model orders as the true reward does. Prints the per-seed accuracies and their means;
nothing is written. The fits run one after another in one process (1 torch thread), so no ratio of times is
claimed: this is about accuracy only.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

from prefrl.config import RewardConfig
from prefrl.reward.model import RewardEnsemble
from prefrl.reward.train import PreferenceData, RewardTrainer

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
CLIP_STEPS = 10


def clips(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.normal(size=(n, CLIP_STEPS, 3)).astype(np.float32),
            rng.normal(size=(n, CLIP_STEPS, 1)).astype(np.float32))


def clip_return(obs: np.ndarray, acts: np.ndarray) -> np.ndarray:
    return (-(obs ** 2).sum(-1) - 0.1 * (acts ** 2).sum(-1)).sum(-1)


def pairs(rng: np.random.Generator, n: int) -> PreferenceData:
    (ol, al), (orr, ar) = clips(rng, n), clips(rng, n)
    target = (clip_return(ol, al) > clip_return(orr, ar)).astype(np.float32)
    return PreferenceData(np.arange(n), ol, al, orr, ar, target)


def accuracy(ens: RewardEnsemble, test: PreferenceData) -> float:
    left = ens.clip_returns(test.obs_left, test.acts_left)
    right = ens.clip_returns(test.obs_right, test.acts_right)
    return float(((left > right) == (test.target > 0.5)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", default="8,16,32", help="label budgets, comma-separated")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--ratios", default="0,4", help="--semi-ratio values to compare (0: labels only)")
    ap.add_argument("--threshold", type=float, default=0.95, help="--semi-threshold")
    args = ap.parse_args()
    torch.set_num_threads(1)
    test = pairs(np.random.default_rng(99), 2000)
    ratios = [int(r) for r in args.ratios.split(",")]
    for n in (int(x) for x in args.labels.split(",")):
        acc: dict[int, list[float]] = {r: [] for r in ratios}
        for seed in range(args.seeds):
            data = pairs(np.random.default_rng(seed), n)
            pool = clips(np.random.default_rng(100 + seed), 300)
            for ratio in ratios:
                cfg = RewardConfig(use_actions=True, semi_ratio=ratio, semi_threshold=args.threshold)
                ens = RewardEnsemble(OBS, ACT, cfg, seed=seed)
                RewardTrainer(ens, cfg, seed=seed).fit(data, epochs=100, unlabeled=pool)
                acc[ratio].append(accuracy(ens, test))
        means = ", ".join(f"ratio {r}: {np.mean(a):.3f}" for r, a in acc.items())
        rows = "; ".join(f"ratio {r}: " + " ".join(f"{x:.3f}" for x in a) for r, a in acc.items())
        print(f"{n} labels, {args.seeds} seeds, mean accuracy on 2,000 fresh pairs: {means}  ({rows})")


if __name__ == "__main__":
    main()
