"""Pong-from-pixels benchmark; same as `prefrl bench pong`. Run by hand, never in timed tests.

    python benchmarks/pong.py                        # CPU budget: 500k agent steps, PPO-true vs 1,000 labels
    python benchmarks/pong.py --budget paper -- --device cuda   # the paper's 10M frames, 5,500 labels
"""

import sys

from prefrl.bench import main

if __name__ == "__main__":
    raise SystemExit(main(["pong", *sys.argv[1:]]))
