"""How much of Hopper's survival bonus a policy keeps, and how much weight a learned reward gives it.

    .venv/bin/python benchmarks/hopper_survival.py RUN_DIR [RUN_DIR ...] [--episodes 3]

RUN_DIRs are finished Hopper-v5 run folders (e.g. a `prefrl bench mujoco` invocation's `runs/*/Hopper-v5__*`);
nothing is trained. For each run's final policy, deterministic episodes (reset seeds 10000...) give the true
return, forward speed, steps healthy (the bonus is paid) and torso angle. Then every run with a reward model is
fitted, by least squares over the steps of all the episodes above, as a * velocity + b * healthy + c: the preset's
true reward (torque cost hidden) is exactly velocity + 1 * healthy, so b / a = 1 for a model that weights the
bonus as the oracle's answers do. Runs with --fallen-reward zero (paid nothing while fallen) are fitted on the
velocity paid, velocity * healthy, instead, so their true reward fits exactly too; one call takes runs of one kind.
The twelfth session's Hopper diagnosis (results/bench/README.md) came from this.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
# `python benchmarks/hopper_survival.py` puts this folder first on sys.path, where benchmarks/mujoco.py would shadow
# the real `mujoco` package: drop it.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]


def rollouts(run_dir: Path, episodes: int) -> tuple[list[str], dict, Optional[Callable[[dict], np.ndarray]], str]:
    """Summary lines for the run's policy, its steps (obs, acts, velocity, healthy, true reward), its final
    reward model as steps -> per-step prediction (None for a PPO-true run) and its --fallen-reward."""
    import torch

    from prefrl.envs import make_env
    from prefrl.evaluate import EVAL_SEED, checkpoint_policy
    from prefrl.loop import ensemble_file
    from prefrl.reward.model import make_ensemble

    policy, cfg = checkpoint_policy(run_dir)
    env = make_env(cfg.env)
    sim = env.unwrapped
    if not hasattr(sim, "is_healthy"):
        env.close()
        raise SystemExit(f"hopper_survival: {run_dir} is a {cfg.env.env} run; pass Hopper run folders")
    model = None
    if cfg.reward_source != "true":
        ens = make_ensemble(env.observation_space, env.action_space, cfg.reward)
        ens.load_state_dict(torch.load(ensemble_file(run_dir), weights_only=True))
        use_actions = cfg.reward.use_actions

        def model(st: dict) -> np.ndarray:
            acts = np.asarray(st["acts"], dtype=np.float32) if use_actions else None
            return ens.predict(np.asarray(st["obs"], dtype=np.float32), acts, with_std=False)[0]

    steps: dict = {k: [] for k in ("obs", "acts", "vx", "healthy", "rew")}
    lines = []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=EVAL_SEED + ep)
            ret, first, angles, heights = 0.0, len(steps["vx"]), [], []
            done = False
            while not done:
                act = policy(obs)
                steps["obs"].append(obs)
                steps["acts"].append(act)
                obs, rew, terminated, truncated, info = env.step(act)
                steps["vx"].append(float(info["x_velocity"]))
                steps["healthy"].append(float(sim.is_healthy))
                steps["rew"].append(float(rew))
                angles.append(float(sim.data.qpos[2]))
                heights.append(float(sim.data.qpos[1]))
                ret += float(rew)
                done = terminated or truncated
            n = len(steps["vx"]) - first
            lines.append(f"  episode {ep}: true return {ret:.0f}, {np.mean(steps['vx'][first:]):.2f} m/s, healthy "
                         f"{int(sum(steps['healthy'][first:]))} of {n} steps, torso below 0.7 m on "
                         f"{np.mean(np.array(heights) < 0.7):.0%}, mean torso angle {np.mean(angles):+.2f} rad")
    finally:
        env.close()
    return lines, steps, model, cfg.env.fallen_reward


def fit_terms(steps: dict, y: np.ndarray, zero: bool) -> np.ndarray:
    """Least-squares (a, b, c) of y = a * velocity paid + b * healthy + c over `steps`; the velocity is paid
    only while healthy under --fallen-reward zero, always otherwise."""
    paid = steps["vx"] * steps["healthy"] if zero else steps["vx"]
    design = np.stack([paid, steps["healthy"], np.ones(len(y))], axis=1)
    return np.linalg.lstsq(design, y, rcond=None)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--episodes", type=int, default=3, help="deterministic episodes per policy")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        raise SystemExit(f"hopper_survival: --episodes must be >= 1 (got {args.episodes})")
    import torch

    torch.set_num_threads(1)
    pooled: dict = {}
    models = {}
    kinds = set()
    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            raise SystemExit(f"hopper_survival: no run folder {run_dir}; pass finished Hopper run folders")
        lines, steps, models[run_dir.name], kind = rollouts(run_dir, args.episodes)
        kinds.add(kind)
        if len(kinds) > 1:
            raise SystemExit("hopper_survival: runs with --fallen-reward kept and zero have different true rewards; "
                             "pass runs of one kind per call")
        print(run_dir.name, *lines, sep="\n")
        for k, v in steps.items():
            pooled.setdefault(k, []).extend(v)
    fit = {k: np.asarray(v) for k, v in pooled.items()}
    zero = "zero" in kinds
    velocity = "velocity paid while healthy" if zero else "velocity"
    a, b, c = fit_terms(fit, fit["rew"], zero)
    print(f"\nover {len(fit['vx'])} steps of all the policies (healthy on {fit['healthy'].mean():.0%}); the true "
          f"reward fits as {a:.3f} * {velocity} + {b:.3f} * healthy + {c:.3f}")
    for name, model in models.items():
        if model is None:
            print(f"{name}: PPO on the true reward, no reward model")
            continue
        pred = model(fit)
        a, b, _ = fit_terms(fit, pred, zero)
        corr = np.corrcoef(pred, fit["rew"])[0, 1]
        print(f"{name}: learned reward = {a:.3f} * {velocity} + {b:.3f} * healthy + c; bonus / velocity weight "
              f"{b / a:.2f} (true reward: 1.00); correlation with the true reward {corr:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
