"""The `imitation` library's preference comparisons on Pendulum-v1, scored the way `prefrl bench pendulum` scores.

Issue 2's Pendulum targets were taken from imitation measured on 3 seeds. This script measures imitation on more
seeds on the same machine as prefrl's runs, so the two can be set side by side. It does not import prefrl:
imitation 1.0.1 pins gymnasium 0.29 and stable-baselines3 2.2, so it runs in a venv of its own (~3 min to build):

    python3 -m venv /tmp/imvenv
    /tmp/imvenv/bin/pip install torch==2.13.0
    /tmp/imvenv/bin/pip install "numpy<2" imitation==1.0.1
    /tmp/imvenv/bin/python benchmarks/imitation_pendulum.py --seeds 10 --workers 2

Settings: the example in imitation's preference-comparisons docs (PPO with FeedForward32Policy, 8 envs x 256 steps,
lr 2e-3, clip 0.1, gamma 0.97, 10 epochs, entropy 0.01; one BasicRewardNet on (obs, action) with a RunningNorm input
layer; 100-step fragments, random pairs, 10% of the labels first, hyperbolic schedule, 3 reward epochs per iteration
and 4x that on the first). The budget is prefrl's: 122,880 PPO steps, in 30 iterations of 4,096 steps (imitation's
schedule runs num_iterations + 1 iterations, hence num_iterations=29). Scoring: the true reward over 10
deterministic episodes with reset seeds 10000-10009; random = uniform actions over the same episodes.

Rows go to OUT/imitation_pendulum.jsonl as each run ends; a later invocation with the same --out skips the
(method, seed) runs already there, so an interrupted measurement continues. The summary is
OUT/imitation_pendulum.md and .csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

STEPS = 122_880
ITERATION_STEPS = 4_096
EVAL_SEEDS = range(10_000, 10_010)
METHODS = ("ppo_true", "pref_200", "pref_50", "random")
COLUMNS = ["method", "seed", "labels", "steps", "true_return", "wall_seconds", "peak_rss_mb"]


def run_one(method: str, seed: int) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"
    import contextlib
    import io

    import numpy as np
    import torch

    torch.set_num_threads(1)  # as prefrl's runs: 1 thread per process
    if method == "random":  # a different random policy per run seed
        returns = _score(lambda env, obs: env.action_space.sample(), action_seed=seed * 100_000)
        return dict(method=method, seed=seed, labels=0, steps=0, true_return=returns, wall_seconds=0.0,
                    peak_rss_mb=_rss_mb())

    from imitation.algorithms import preference_comparisons as pc
    from imitation.policies.base import FeedForward32Policy, NormalizeFeaturesExtractor
    from imitation.rewards.reward_nets import BasicRewardNet
    from imitation.util.networks import RunningNorm
    from imitation.util.util import make_vec_env
    from stable_baselines3 import PPO

    rng = np.random.default_rng(seed)
    venv = make_vec_env("Pendulum-v1", rng=rng, n_envs=8)
    agent = PPO(policy=FeedForward32Policy,
                policy_kwargs=dict(features_extractor_class=NormalizeFeaturesExtractor,
                                   features_extractor_kwargs=dict(normalize_class=RunningNorm)),
                env=venv, seed=seed, n_steps=2048 // venv.num_envs, batch_size=64, ent_coef=0.01,
                learning_rate=2e-3, clip_range=0.1, gae_lambda=0.95, gamma=0.97, n_epochs=10)
    labels = 0 if method == "ppo_true" else int(method.split("_")[1])
    t0 = time.monotonic()
    quiet = io.StringIO()  # imitation logs every PPO update to stdout and a progress bar per fit to stderr
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        if method == "ppo_true":
            agent.learn(STEPS)
        else:
            net = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
            trainer = pc.BasicRewardTrainer(preference_model=pc.PreferenceModel(net), loss=pc.CrossEntropyRewardLoss(),
                                            epochs=3, rng=rng)
            iterations = STEPS // ITERATION_STEPS
            loop = pc.PreferenceComparisons(
                pc.AgentTrainer(algorithm=agent, reward_fn=net, venv=venv, exploration_frac=0.05, rng=rng), net,
                num_iterations=iterations - 1, fragmenter=pc.RandomFragmenter(warning_threshold=0, rng=rng),
                preference_gatherer=pc.SyntheticGatherer(rng=rng), reward_trainer=trainer, fragment_length=100,
                transition_oversampling=1, initial_comparison_frac=0.1, allow_variable_horizon=False,
                initial_epoch_multiplier=4, query_schedule="hyperbolic")
            loop.train(total_timesteps=(iterations - 1) * ITERATION_STEPS, total_comparisons=labels)
    wall = time.monotonic() - t0
    return dict(method=method, seed=seed, labels=labels, steps=int(agent.num_timesteps),
                true_return=_score(lambda env, obs: agent.predict(obs, deterministic=True)[0]),
                wall_seconds=round(wall, 1), peak_rss_mb=_rss_mb())


def _score(act, action_seed: Optional[int] = None) -> float:
    """Mean true return of act(env, obs) -> action over the EVAL_SEEDS episodes; action_seed + the reset seed seeds
    each episode's action space (for random actions)."""
    import gymnasium as gym
    import numpy as np

    returns = []
    for s in EVAL_SEEDS:
        env = gym.make("Pendulum-v1")
        if action_seed is not None:
            env.action_space.seed(action_seed + s)
        obs, _ = env.reset(seed=s)
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(act(env, obs))
            total, done = total + float(r), term or trunc
        returns.append(total)
    return float(np.mean(returns))


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def summarise(rows: list[dict], meta: dict) -> str:
    by = {m: [r for r in rows if r["method"] == m] for m in METHODS}
    def mean(rs: list[dict], key: str) -> float:
        return statistics.fmean(r[key] for r in rs)

    rand = mean(by["random"], "true_return") if by["random"] else None
    ppo = mean(by["ppo_true"], "true_return") if by["ppo_true"] else None
    ppo_wall = mean(by["ppo_true"], "wall_seconds") if by["ppo_true"] else None
    norm = (lambda x: (x - rand) / (ppo - rand)) if rand is not None and ppo is not None else None
    out = ["# imitation's preference comparisons on Pendulum-v1", "",
           f"Command: `{meta['command']}`  ",
           f"Machine: {meta['machine']}; load average at start {meta['load_start']}, at end {meta['load_end']}; "
           f"workers: {meta['workers']}; this invocation's wall {meta['total_wall']:.0f} s; "
           f"{meta['carried']} of the {len(rows)} rows came from earlier invocations into the same --out.  ",
           "Settings and scoring: this script's docstring. Normalised: random = 0, imitation's PPO-true = 1. "
           "A seed \"fails\" when its return is worse than -175 (as in results/bench/README.md).", "",
           "| method | seeds | true return mean ± sd | worst seed | seeds worse than -175 | normalised mean | "
           "normalised worst | wall s (mean) | wall / PPO-true |", "|---|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        rs = by[m]
        if not rs:
            continue
        v = [r["true_return"] for r in rs]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        worst = min(v)
        fails = f"{sum(x < -175 for x in v)} of {len(v)}" if m != "random" else "-"
        nm = f"{norm(statistics.fmean(v)):.3f}" if norm and m.startswith("pref") else "-"
        nw = f"{norm(worst):.3f}" if norm and m.startswith("pref") else "-"
        w = statistics.fmean(r["wall_seconds"] for r in rs)
        ratio = f"{w / ppo_wall:.2f}x" if ppo_wall and m != "random" else "-"
        out.append(f"| {m} | {len(rs)} | {statistics.fmean(v):.1f} ± {sd:.1f} | {worst:.1f} | {fails} | "
                   f"{nm} | {nw} | {w:.1f} | {ratio} |")
    out += ["", "Per seed (true return):", ""]
    for m in METHODS:
        if by[m]:
            out.append(f"- {m}: " + ", ".join(f"{r['seed']}: {r['true_return']:.1f}"
                                                for r in sorted(by[m], key=lambda r: r["seed"])))
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/bench"))
    args = ap.parse_args()
    try:
        import imitation  # noqa: F401
    except ImportError:
        print(f"{Path(__file__).name}: imitation is not installed in {sys.executable}; build its venv as this "
              "script's docstring says (python3 -m venv /tmp/imvenv, then pip install torch==2.13.0 and "
              "\"numpy<2\" imitation==1.0.1) and run it with /tmp/imvenv/bin/python", file=sys.stderr)
        return 2
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {','.join(METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "imitation_pendulum.jsonl"
    rows = read_rows(rows_file)
    done = {(r["method"], r["seed"]) for r in rows}
    jobs = [(m, s) for s in range(args.first_seed, args.first_seed + args.seeds) for m in methods if (m, s) not in done]
    meta = dict(command="benchmarks/imitation_pendulum.py " + " ".join(sys.argv[1:]), workers=args.workers,
                machine=f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
                load_start=" / ".join(f"{x:.2f}" for x in os.getloadavg()), carried=len(rows))
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.workers, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_one, m, s): (m, s) for m, s in jobs}
        for fut in as_completed(futures):
            row = fut.result()
            rows.append(row)
            with open(rows_file, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{row['method']} seed {row['seed']}: {row['true_return']:.1f}, {row['wall_seconds']:.0f} s",
                  flush=True)
    meta.update(total_wall=time.monotonic() - t0, load_end=" / ".join(f"{x:.2f}" for x in os.getloadavg()))
    rows.sort(key=lambda r: (METHODS.index(r["method"]), r["seed"]))
    with open(args.out / "imitation_pendulum.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (args.out / "imitation_pendulum.md").write_text(summarise(rows, meta))
    print((args.out / "imitation_pendulum.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
