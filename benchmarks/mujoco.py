"""MuJoCo benchmark (HalfCheetah-v5, Hopper-v5); same as `prefrl bench mujoco`. Run by hand, never in timed tests.

    python benchmarks/mujoco.py                      # 1M PPO steps, 3 seeds: PPO-true vs 700 and 350 labels
    python benchmarks/mujoco.py --steps 2048 --seeds 1 --envs Hopper-v5   # plumbing check
"""

import sys
from pathlib import Path

# `python benchmarks/mujoco.py` puts this folder first on sys.path, where this file would shadow the real
# `mujoco` package (here and in the spawned benchmark workers, which inherit sys.path): drop it.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

from prefrl.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["mujoco", *sys.argv[1:]]))
