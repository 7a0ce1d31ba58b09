"""Pendulum-v1 benchmark; same as `prefrl bench pendulum`. Run by hand, never in timed tests."""

import sys

from prefrl.bench import main

if __name__ == "__main__":
    raise SystemExit(main(["pendulum", *sys.argv[1:]]))
