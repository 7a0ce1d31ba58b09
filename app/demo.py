"""A small fake run folder to try the app (and to test it) without training.

    .venv/bin/python app/demo.py results/demo --pairs 6
    streamlit run app/Label.py --server.address 127.0.0.1 --server.headless true -- --run results/demo

Clips are short MP4s (a coloured square moving on a dark background, one motion per clip) written
by ``prefrl.clips.write_video``, the trainer's encoder. This module is never imported by the app's
pages: ``prefrl.clips`` pulls stable_baselines3 (and torch), so it is imported inside `make_run` only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

from prefrl.labels.store import LabelStore

PROGRESS_HEADER = ["env_steps", "true_episode_return", "learned_episode_return", "labels", "reward_model_version",
                   "rm_train_acc", "rm_val_acc", "rm_train_loss", "rm_val_loss", "l2", "reward_corr",
                   "wall_seconds"]
"""The columns of prefrl.loop.PROGRESS_COLUMNS (copied: importing prefrl.loop pulls torch)."""


def clip_frames(rng: np.random.Generator, length: int = 20, side: int = 64) -> np.ndarray:
    """(length, side, side, 3) uint8: a square of a random colour moving along a random direction."""
    frames = np.full((length, side, side, 3), 20, dtype=np.uint8)
    frames += rng.integers(0, 12, size=frames.shape, dtype=np.uint8)  # a little noise
    colour = rng.integers(80, 256, size=3, dtype=np.uint8)
    x, y = rng.uniform(0, side - 8, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    for t in range(length):
        cx = int(x + 2 * t * math.cos(angle)) % (side - 8)
        cy = int(y + 2 * t * math.sin(angle)) % (side - 8)
        frames[t, cy:cy + 8, cx:cx + 8] = colour
    return frames


def make_run(run: Path, pairs: int = 6, seed: int = 0, model_version: int = 3, rule: str = "disagreement",
             progress_rows: int = 5, length: int = 20, side: int = 64, video_for: str = "all") -> list[int]:
    """Write a run folder with `pairs` pending pairs over pairs + 1 clips; returns the pair ids.

    video_for: "all", or "none" (clips without a video path), used by tests of the error paths.
    """
    from prefrl.clips import write_video  # pulls stable_baselines3: never from the app's pages

    rng = np.random.default_rng(seed)
    (run / "clips").mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"env": {"env_id": "demo"}, "demo": True}, indent=2))
    ids: list[int] = []
    with LabelStore(run / "labels.sqlite") as store:
        for i in range(pairs + 1):
            clip_id = f"c{i:03d}"
            video = None
            if video_for == "all":
                video = f"clips/{clip_id}.mp4"
                write_video(clip_frames(rng, length, side), run / video)
            store.add_clip(clip_id, env_step=100 * i, true_return=float(rng.normal()), length=length,
                           npz=f"clips/{clip_id}.npz", video=video)
        if pairs:
            ids = store.add_pairs([(f"c{i:03d}", f"c{i + 1:03d}") for i in range(pairs)], rule,
                                  model_version=model_version, disagreement=[0.1 * i for i in range(pairs)])
    if progress_rows:
        with open(run / "progress.csv", "w") as fh:
            fh.write(",".join(PROGRESS_HEADER) + "\n")
            for k in range(progress_rows):
                acc = 0.5 + 0.08 * k
                fh.write(",".join(str(v) for v in (
                    1000 * (k + 1), -1200 + 200 * k, 0.3 * k - 1.0, 20 * k, min(k, model_version),
                    acc, acc - 0.05, 0.7 - 0.1 * k, 0.72 - 0.1 * k, 0.01, 0.2 * k, 10.0 * (k + 1))) + "\n")
    return ids


APP_DIR = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
"""Flags that work for Debian's chromium on these machines (see ../shared/STACK.md)."""


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log: Optional[Path] = None) -> None:
    """Block until the Streamlit server at `url` answers its health check; RuntimeError if it exits or
    stays silent for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log else ""
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"streamlit did not answer on {url} within {timeout:g} s; log: {log}")
        time.sleep(0.2)


@contextmanager
def open_page(pw, url: str) -> Iterator[tuple[object, list[str]]]:
    """Debian's chromium via Playwright `pw`, one page at `url`; yields (page, page errors seen); closes it."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url, wait_until="domcontentloaded")
        yield page, errors
    finally:
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(run: Path, log: Path, port: int | None = None, timeout: float = 60.0) -> Iterator[str]:
    """`streamlit run app/Label.py` on 127.0.0.1 for `run`; yields its URL; the server is always killed."""
    port = free_port() if port is None else port
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_DIR / "Label.py"), "--server.address", "127.0.0.1",
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--", "--run", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="folder to create (refused when it exists)")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.run.exists():
        raise SystemExit(f"{args.run} exists; pick a new folder (a run folder is never overwritten)")
    t = time.perf_counter()
    make_run(args.run, pairs=args.pairs, seed=args.seed)
    print(f"wrote {args.run} ({args.pairs} pairs) in {time.perf_counter() - t:.1f} s; start the app with\n"
          f"  streamlit run app/Label.py --server.address 127.0.0.1 --server.headless true -- --run {args.run}")


if __name__ == "__main__":
    main()
