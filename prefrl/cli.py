"""`prefrl train | bench`: flags come from the config dataclasses' docstrings (tyro)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

USAGE = """usage: prefrl {train,app,bench} ...

  prefrl train [FLAGS]          start a run (prefrl train --help lists every flag)
  prefrl train --resume RUN_DIR continue a stopped run from its latest checkpoint
  prefrl app [RUN_DIR]          the labeling app in a browser (default: the newest run)
  prefrl bench pendulum [...]   the Pendulum-v1 benchmark (prefrl bench pendulum --help)

Add --debug to see a traceback on errors."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    from prefrl.config import ConfigError
    from prefrl.envs import EnvError
    from prefrl.labels.store import StoreError
    from prefrl.loop import RunError

    return (ConfigError, EnvError, RunError, StoreError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        if command == "train":
            return _train(rest)
        if command == "app":
            return _app(rest)
        if command == "bench":
            from prefrl.bench import main as bench_main

            return bench_main(rest)
        print(f"prefrl: unknown command '{command}'; use train or bench", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nprefrl: interrupted; continue with prefrl train --resume RUN_DIR", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for users, the traceback with --debug
        if debug:
            traceback.print_exc()
        expected = isinstance(exc, _expected_errors())
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "" if expected or debug else " (unexpected; rerun with --debug for the traceback)"
        print(f"prefrl: error: {msg}{hint}", file=sys.stderr)
        return 1


def _train(argv: list[str]) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--resume", type=Path)
    known, rest = pre.parse_known_args(argv)

    from prefrl.loop import resume, train

    if known.resume is not None:
        if rest and rest != ["--no-progress-bar"]:
            raise SystemExit(f"prefrl: error: --resume takes no other flags (got {' '.join(rest)}); "
                             "a run continues with its own config.json")
        result = resume(known.resume, progress_bar=False if rest else None)
    else:
        result = train(parse_train_config(argv))
    _report(result)
    return 0


def _app(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefrl app", description="Open the Streamlit labeling app on a run folder.")
    ap.add_argument("run_dir", nargs="?", type=Path, help="run folder (default: the newest under --results)")
    ap.add_argument("--results", type=Path, default=Path("results"), help="folder of run folders")
    ap.add_argument("--port", type=int, default=8501, help="local port (default 8501)")
    ap.add_argument("--address", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    args = ap.parse_args(argv)
    script = Path(__file__).resolve().parents[1] / "app" / "Label.py"
    if not script.exists():
        raise SystemExit(f"prefrl: error: the app is not installed beside the package ({script} is missing); "
                         "use a source checkout (pip install -e .)")
    if args.run_dir is not None and not (args.run_dir / "labels.sqlite").exists():
        raise SystemExit(f"prefrl: error: {args.run_dir} has no labels.sqlite; pass a run folder made by prefrl train")
    app_args = ["--results", str(args.results)] + (["--run", str(args.run_dir)] if args.run_dir else [])
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", args.address,
           "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", *app_args]
    print(f"labeling app: http://{args.address}:{args.port}  (Ctrl+C to stop)", flush=True)
    os.execv(sys.executable, cmd)  # become the server, so a signal to this process stops it
    return 0


def parse_train_config(argv: list[str]):
    import tyro

    from prefrl.config import TrainConfig

    return tyro.cli(TrainConfig, args=argv, prog="prefrl train", config=(tyro.conf.OmitArgPrefixes,),
                    description="Train PPO on a reward learned from preferences (or on the true reward). "
                                "Add --resume RUN_DIR to continue a stopped run; --debug shows tracebacks.")


def _report(r) -> None:
    print(f"run folder:        {r.run_dir}")
    print(f"final true return: {r.true_return:.1f} ± {r.true_return_std:.1f} (deterministic, true reward)")
    print(f"labels used:       {r.labels}")
    print(f"reward-model val accuracy: {r.val_acc:.3f}" if r.val_acc == r.val_acc else
          "reward-model val accuracy: n/a")
    print(f"env steps: {r.steps}   wall: {r.wall_seconds:.0f} s   peak RSS: {r.peak_rss_mb:.0f} MB")
