"""`prefrl train | app | bench | ablate | plot`: train flags come from the config dataclasses' docstrings (tyro)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import secrets
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

USAGE = """usage: prefrl {train,app,bench,ablate,plot} ...

  prefrl train [FLAGS]          start a run (prefrl train --help lists every flag)
  prefrl train --resume RUN_DIR continue a stopped run from its latest checkpoint
  prefrl app [RUN_DIR]          the labeling app in a browser (default: the newest run)
  prefrl bench pendulum [...]   the Pendulum-v1 benchmark (prefrl bench pendulum --help)
  prefrl bench mujoco|pong      HalfCheetah/Hopper and Pong: PPO-true vs synthetic labels (--budget cpu|paper)
  prefrl bench throughput       env steps/s, prefrl vs PPO-true, Pong and HalfCheetah
  prefrl ablate --env ENV [...] the paper's ablation grid, resumable (prefrl ablate --help)
  prefrl plot DIR... [--out D]  curves, CIs and reward-hacking views from run or grid folders

Add --debug to see a traceback on errors."""


_DEBUG = False


def _expected_errors() -> tuple[type[BaseException], ...]:
    from prefrl.config import ConfigError
    from prefrl.envs import EnvError
    from prefrl.labels.store import StoreError
    from prefrl.loop import RunError
    from prefrl.plots import PlotError
    from prefrl.sweep import SweepError

    return (ConfigError, EnvError, RunError, StoreError, PlotError, SweepError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    global _DEBUG
    _DEBUG = debug  # parse_train_config then shows tyro's full error box too
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
        if command == "ablate":
            from prefrl.sweep import main as ablate_main

            return ablate_main(rest)
        if command == "plot":
            from prefrl.plots import main as plot_main

            return plot_main(rest)
        print(f"prefrl: unknown command '{command}'; use train, app, bench, ablate or plot", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nprefrl: interrupted; continue with prefrl train --resume RUN_DIR", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
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

    from prefrl.loop import resume, stop_on_sigint, train

    stop_on_sigint()
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
    ap.add_argument("--address", default="127.0.0.1",
                    help="bind address (default 127.0.0.1: this machine only); any other address needs the token")
    ap.add_argument("--token", default=None,
                    help="shared access token, required in the URL (?token=...) when --address is not 127.0.0.1 "
                         "(default there: a new random one, printed with the URL)")
    args = ap.parse_args(argv)
    if args.token is not None and not re.fullmatch(r"[A-Za-z0-9_-]{16,128}", args.token):
        raise SystemExit("prefrl: error: --token must be 16 to 128 letters, digits, '_' or '-'; "
                         "leave it out to get a random one")
    local = args.address in ("127.0.0.1", "localhost", "::1")
    token = args.token or (None if local else secrets.token_urlsafe(24))
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
    env = {k: v for k, v in os.environ.items() if k != "PREFRL_APP_TOKEN"}
    if token:  # in the environment, not on the command line, where other users could read it (ps)
        env["PREFRL_APP_TOKEN"] = token
    host = args.address if args.address not in ("0.0.0.0", "::", "") else "<this machine's address>"
    print(f"labeling app: http://{host}:{args.port}/{'?token=' + token if token else ''}  (Ctrl+C to stop)",
          flush=True)
    if not local:
        print(f"listening on {args.address}: only browsers that open the URL with its token can label; "
              "share it with your labelers only", flush=True)
    os.execve(sys.executable, cmd, env)  # become the server, so a signal to this process stops it
    return 0


def parse_train_config(argv: list[str]):
    """TrainConfig from `prefrl train` flags; a bad flag raises ConfigError with tyro's message on one line
    (tyro's full box is printed too with --debug). An Atari or MuJoCo --env starts from the paper's settings
    for that family (prefrl.presets); flags given still override them."""
    import tyro

    from prefrl import presets
    from prefrl.config import ConfigError, TrainConfig

    env_id = presets.env_from_argv(argv)
    default = presets.defaults(env_id) if env_id else None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cfg = tyro.cli(TrainConfig, args=argv, default=default, prog="prefrl train",
                           config=(tyro.conf.OmitArgPrefixes,),
                           description="Train PPO on a reward learned from preferences (or on the true reward). "
                                       "Add --resume RUN_DIR to continue a stopped run; --debug shows tracebacks.")
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            raise
        if _DEBUG:
            sys.stderr.write(err.getvalue())
        msg = _one_line(err.getvalue())
        raise ConfigError(msg + (" (see prefrl train --help)" if msg.endswith("?") else "; see prefrl train --help")) \
            from None
    sys.stderr.write(err.getvalue())  # warnings, if any
    return presets.finish(cfg, argv)


def _one_line(box: str) -> str:
    """tyro's boxed error as one line: the message and any suggested flags, without the frame and help text."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", box)
    message: list[str] = []
    similar: list[str] = []
    section = "message"
    for line in text.splitlines()[1:]:  # the first line is the frame with the title
        line = line.strip(" |\u2502\u256d\u256e\u2570\u256f")  # the frame (unicode, or ASCII when piped)
        if set(line) <= set("-+=\u2500"):  # a rule between sections
            line = ""
        if line.startswith(("For full helptext", "Argument helptext")):
            section = "skip"
        elif line.startswith(("Perhaps you meant", "Arguments similar")):
            section = "similar"
        elif line and section == "message":
            message.append(line)
        elif line.startswith("-") and section == "similar":
            similar.append(line.split()[0].rstrip(","))
    out = " ".join(message).rstrip(".") or "bad flags"
    if similar:
        out += f"; did you mean {' or '.join(dict.fromkeys(similar))}?"
    return out


def _report(r) -> None:
    print(f"run folder:        {r.run_dir}")
    print(f"final true return: {r.true_return:.1f} ± {r.true_return_std:.1f} (deterministic, true reward)")
    print(f"labels used:       {r.labels}")
    print(f"reward-model val accuracy: {r.val_acc:.3f}" if r.val_acc == r.val_acc else
          "reward-model val accuracy: n/a")
    print(f"env steps: {r.steps}   wall: {r.wall_seconds:.0f} s   peak RSS: {r.peak_rss_mb:.0f} MB")
