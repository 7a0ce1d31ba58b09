"""Bad input, table-driven: every row is a mistake a user can make through the CLI, config.json, the label
store or the app. Each must end with a non-zero exit (or an in-app message) whose text is ONE line saying
what is wrong and how to fix it, no traceback, and nothing written or overwritten: the working folder is
fingerprinted before and after (SQLite files by their logical content, everything else byte for byte).

`benchmarks/reliability.py` imports CASES and run_case() to print this table with every message into
results/reliability.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import time
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from prefrl.labels.store import SCHEMA_VERSION, LabelStore, StoreError

APP = Path(__file__).resolve().parents[1] / "app"
LABEL_PAGE = str(APP / "Label.py")
RUNS_PAGE = str(APP / "pages" / "1_Runs.py")
TINY = ["--total-timesteps", "2048", "--n-steps", "256", "--n-envs", "2", "--total-labels", "24",
        "--clip-length", "20", "--eval-episodes", "2", "--epochs", "5", "--pretrain-epochs", "10",
        "--no-progress-bar"]


# --- tiny custom envs (registered here, as a user would register theirs) ------------------------------------

class TinyEnv(gym.Env):
    """2-d Box observations; optionally NaN observations or an inf reward from the env's `bad_at`-th step on
    (counted over the env's life, not per episode), or an action space prefrl does not support."""

    metadata = {"render_modes": []}

    def __init__(self, bad: str = "none", bad_at: int = 3, action: str = "box"):
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = (spaces.Box(-1.0, 1.0, (1,), np.float32) if action == "box"
                             else spaces.MultiDiscrete([2, 3]))
        self.bad, self.bad_at, self.steps = bad, bad_at, 0

    def _obs(self) -> np.ndarray:
        x = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        if self.bad == "obs" and self.steps >= self.bad_at:
            x[0] = np.nan
        return x

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        reward = math.inf if self.bad == "reward" and self.steps >= self.bad_at else 0.0
        return self._obs(), reward, False, False, {}


ENVS = {"BadInputNaNObs-v0": dict(bad="obs"), "BadInputInfReward-v0": dict(bad="reward"),
        "BadInputMultiDiscrete-v0": dict(action="multidiscrete"),
        "BadInputLateNaN-v0": dict(bad="obs", bad_at=600)}
for _id, _kwargs in ENVS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=TinyEnv, kwargs=_kwargs, max_episode_steps=50)


# --- running one case -------------------------------------------------------------------------------------

class Outcome(NamedTuple):
    code: Optional[int]
    """Exit code of the CLI; None for the store API and the app (they show a message instead)."""
    message: str
    """Everything the user sees: stderr of the CLI, the exception text of the store, the app's messages."""
    crashed: bool = False
    """An uncaught exception (a traceback) instead of a message."""


@dataclass(frozen=True)
class Case:
    id: str
    surface: str
    """cli | config | store | app"""
    bad_input: str
    """The mistake, in words (a column of results/reliability.md)."""
    expect: str
    """A piece of the message."""
    act: Callable[[Path, Path], Outcome]
    """act(workdir, source_run) -> Outcome; runs in a fresh workdir with its own copy of anything it changes."""


def cli(*argv: str) -> Outcome:
    """`prefrl ...` in this process (a subprocess would cost seconds of imports per row)."""
    from prefrl import cli as prefrl_cli

    out, err = io.StringIO(), io.StringIO()
    real_exec = os.execve
    os.execve = _no_exec  # `prefrl app` must refuse before it becomes the server
    try:
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a warning a real process would print counts as a line of output
            try:
                code = prefrl_cli.main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                if not isinstance(exc.code, int) and exc.code is not None:
                    print(exc.code, file=sys.stderr)
    finally:
        os.execve = real_exec
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return Outcome(code, shown + err.getvalue())


def _no_exec(*args: object) -> None:
    raise AssertionError("prefrl app started the server on bad input")


def store_call(fn: Callable[[], object]) -> Outcome:
    try:
        fn()
    except StoreError as exc:
        return Outcome(None, str(exc))
    return Outcome(None, "")


def app_page(run: Path, page: str = LABEL_PAGE, labeler: Optional[str] = "alice", query: Optional[dict] = None,
             labeler_input: Optional[str] = None) -> Outcome:
    """One run of a Streamlit page (AppTest, no browser): its error and warning texts."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(page, default_timeout=30)
    at.session_state["run_dir"] = str(run)
    if labeler is not None:
        at.session_state["labeler"] = labeler
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if labeler_input is not None and not at.exception:
        at.text_input(key="_labeler_input").input(labeler_input)
        at.button[0].click().run()
    if at.exception:
        return Outcome(None, " | ".join(str(e.value) for e in at.exception), crashed=True)
    return Outcome(None, " | ".join(str(e.value) for e in [*at.error, *at.warning]))


@contextmanager
def app_settings(address: Optional[str] = None, token: Optional[str] = None) -> Iterator[None]:
    """The server address the page sees and the access token in its environment, restored afterwards."""
    import streamlit.config as st_config

    old_address, old_token = st_config.get_option("server.address"), os.environ.get("PREFRL_APP_TOKEN")
    try:
        if address is not None:
            st_config.set_option("server.address", address)
        if token is not None:
            os.environ["PREFRL_APP_TOKEN"] = token
        yield
    finally:
        st_config.set_option("server.address", old_address)
        if old_token is None:
            os.environ.pop("PREFRL_APP_TOKEN", None)
        else:
            os.environ["PREFRL_APP_TOKEN"] = old_token


def fingerprint(root: Path) -> dict[str, str]:
    """Every file and folder under root: SQLite files by their logical content (so a WAL checkpoint on close
    does not count as a change), everything else by its bytes; -wal/-shm files are part of their database."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel + "/"] = "dir"
        elif p.name.endswith(("-wal", "-shm")):
            continue
        elif p.suffix == ".sqlite":
            out[rel] = _db_digest(p)
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _db_digest(path: Path) -> str:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            dump = "\n".join(con.iterdump())
            dump += f"\nuser_version={con.execute('PRAGMA user_version').fetchone()[0]}"
        finally:
            con.close()
        return hashlib.sha256(dump.encode()).hexdigest()
    except sqlite3.DatabaseError:
        return hashlib.sha256(path.read_bytes()).hexdigest()


FIX_MARKS = (";", "?", " must ")
"""A message names its fix after a semicolon ("...; use --env X"), as a question ("did you mean X?") or as the
rule to follow ("--n-envs must be >= 1")."""


class Result(NamedTuple):
    case: Case
    outcome: Outcome
    lines: int
    changed: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        o, c = self.outcome, self.case
        exit_ok = o.code is None or o.code != 0
        fix_ok = c.surface == "app" or any(m in o.message for m in FIX_MARKS)
        return (not o.crashed and exit_ok and self.lines == 1 and "Traceback" not in o.message
                and c.expect in o.message and fix_ok and not self.changed)


def run_case(case: Case, workdir: Path, source: Path) -> Result:
    """Run one case in workdir (set up by the case itself) and compare the folder before and after."""
    workdir.mkdir(parents=True, exist_ok=True)
    setup = SETUPS.get(case.id)
    if setup is not None:
        setup(workdir, source)
    before = fingerprint(workdir)
    t = time.perf_counter()
    outcome = case.act(workdir, source)
    seconds = time.perf_counter() - t
    after = fingerprint(workdir)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    lines = len([ln for ln in outcome.message.strip().splitlines() if ln.strip()])
    return Result(case, outcome, lines, changed, seconds)


# --- shared material: a finished tiny run and a fake app run -----------------------------------------------

def make_source_run(path: Path) -> Path:
    """A finished tiny Pendulum run (labels, clips, checkpoints): what --labels, --reward-model and --resume use."""
    from prefrl.cli import parse_train_config
    from prefrl.loop import train

    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        train(parse_train_config(["--run-dir", str(path), *TINY]))
    return path


def make_app_run(path: Path) -> Path:
    sys.path.insert(0, str(APP))
    import demo

    demo.make_run(path, pairs=2, length=4, side=16)
    return path


def _copy_run(source: Path, dest: Path) -> Path:
    return Path(shutil.copytree(source, dest))


def _unfinished_copy(source: Path, dest: Path) -> Path:
    """A copy of the finished run that looks killed before its end (no summary.json), so --resume would train."""
    run = _copy_run(source, dest)
    state = run / "checkpoints" / (run / "checkpoints" / "latest").read_text() / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "finished": False}))
    (run / "summary.json").unlink()
    return run


def _sql(db: Path, *statements: str) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        for s in statements:
            con.execute(s)
    finally:
        con.close()


def _newer_schema(db: Path) -> Path:
    db.parent.mkdir(parents=True, exist_ok=True)
    _sql(db, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    return db


def _not_sqlite(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"these are not the bytes of a database\n" * 50)
    return path


def _foreign_sqlite(db: Path) -> Path:
    db.parent.mkdir(parents=True, exist_ok=True)
    _sql(db, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)", "INSERT INTO invoices VALUES (1, 9.5)")
    return db


def _set_config(run: Path, **changes: object) -> None:
    """Edit a run's config.json by hand, as a user might."""
    data = json.loads((run / "config.json").read_text())
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (run / "config.json").write_text(json.dumps(data))


def _read_only_parent(workdir: Path) -> Path:
    """A folder this process cannot create anything in: chmod 555, or (as root, who ignores modes) /sys."""
    if os.geteuid() != 0:
        ro = workdir / "ro"
        ro.mkdir(exist_ok=True)
        ro.chmod(0o555)
        return ro
    return Path("/sys")


def _hold_lock(run: Path) -> None:
    """Another trainer on this run: a second open file description holding the folder's flock."""
    fd = os.open(run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD.append(fd)


_HELD: list[int] = []


def _release_locks() -> None:
    while _HELD:
        os.close(_HELD.pop())


def _with_lock_held(w: Path, s: Path) -> Outcome:
    _hold_lock(w / "run")
    try:
        return cli("train", "--resume", str(w / "run"))
    finally:
        _release_locks()


def _seed_store(w: Path, answered_by: Optional[str] = None) -> None:
    """labels.sqlite with two clips and pair 1 (answered by `answered_by`, if given)."""
    with LabelStore(w / "labels.sqlite") as store:
        for c in ("c0", "c1"):
            store.add_clip(c, 0, 0.0, 25, f"clips/{c}.npz")
        store.add_pairs([("c0", "c1")], "random", 0)
        if answered_by:
            store.add_label(1, "left", answered_by, 1.0, 0)


def _store_dup(w: Path) -> Outcome:
    with LabelStore(w / "labels.sqlite") as store:
        return store_call(lambda: store.add_label(1, "right", "alice", 1.0, 0))


def _store_locked(w: Path) -> Outcome:
    other = sqlite3.connect(w / "labels.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a writer that holds the lock longer than the timeout
    try:
        with LabelStore(w / "labels.sqlite", timeout=0.2) as store:
            return store_call(lambda: store.add_label(1, "left", "bob", 1.0, 0))
    finally:
        other.execute("ROLLBACK")
        other.close()


def _store_op(w: Path, op: Callable[[LabelStore], object]) -> Outcome:
    with LabelStore(w / "labels.sqlite") as store:
        return store_call(lambda: op(store))


def _open_store(path: Path) -> Outcome:
    return store_call(lambda: LabelStore(path).close())


def _app_with(address: Optional[str] = None, token: Optional[str] = None, **kwargs) -> Callable[[Path, Path], Outcome]:
    def act(w: Path, s: Path) -> Outcome:
        with app_settings(address, token):
            return app_page(w / "app", **kwargs)
    return act


SETUPS: dict[str, Callable[[Path, Path], object]] = {
    "existing_run_folder": lambda w, s: (w / "run").mkdir() or (w / "run" / "notes.txt").write_text("mine"),
    "results_dir_is_a_file": lambda w, s: (w / "results").write_text("a file, not a folder"),
    "labels_not_sqlite": lambda w, s: _not_sqlite(w / "other" / "labels.sqlite"),
    "labels_newer_schema": lambda w, s: _newer_schema(w / "other" / "labels.sqlite"),
    "labels_foreign_sqlite": lambda w, s: _foreign_sqlite(w / "other" / "labels.sqlite"),
    "labels_without_labels": lambda w, s: (_copy_run(s, w / "other"),
                                           _sql(w / "other" / "labels.sqlite", "DELETE FROM labels")),
    "labels_clip_outside_run": lambda w, s: (_copy_run(s, w / "other"), _sql(
        w / "other" / "labels.sqlite", "UPDATE clips SET npz = '../../../etc/passwd'")),
    "labels_clip_file_missing": lambda w, s: (_copy_run(s, w / "other"),
                                              [p.unlink() for p in (w / "other" / "clips").glob("*.npz")]),
    "labels_from_other_env": lambda w, s: _copy_run(s, w / "other"),
    "reward_model_garbage": lambda w, s: (_copy_run(s, w / "other"),
                                          (w / "other" / "ensemble.pt").write_bytes(b"\x80\x04not a model" * 10)),
    "reward_model_other_env": lambda w, s: _copy_run(s, w / "other"),
    "resume_corrupt_config": lambda w, s: (_copy_run(s, w / "run"),
                                           (w / "run" / "config.json").write_text('{"env": {"env": "Pendu')),
    "resume_config_not_object": lambda w, s: (_copy_run(s, w / "run"), (w / "run" / "config.json").write_text("[1]")),
    "resume_config_unknown_key": lambda w, s: (_copy_run(s, w / "run"), _set_config(w / "run", colour="blue")),
    "resume_config_bad_value": lambda w, s: (_copy_run(s, w / "run"), _set_config(w / "run", **{
        "feedback.total_labels": -5})),
    "resume_config_wrong_type": lambda w, s: (_copy_run(s, w / "run"), _set_config(w / "run", **{
        "env.n_envs": "four"})),
    "resume_config_unknown_teacher": lambda w, s: (_copy_run(s, w / "run"), _set_config(w / "run", **{
        "feedback.teacher": "nobody"})),
    "resume_config_nan": lambda w, s: (_copy_run(s, w / "run"), (w / "run" / "config.json").write_text(
        re.sub(r'"learning_rate": [-+0-9.eE]+', '"learning_rate": NaN', (w / "run" / "config.json").read_text()))),
    "resume_not_a_run": lambda w, s: (w / "run").mkdir(),
    "resume_newer_store": lambda w, s: (_unfinished_copy(s, w / "run"), _sql(
        w / "run" / "labels.sqlite", f"PRAGMA user_version = {SCHEMA_VERSION + 1}")),
    "resume_incomplete_checkpoint": lambda w, s: (_copy_run(s, w / "run"),
                                                  (w / "run" / "checkpoints" / "latest").write_text("step_gone")),
    "resume_in_use": lambda w, s: _unfinished_copy(s, w / "run"),
    "resume_with_flags": lambda w, s: _copy_run(s, w / "run"),
    "store_stale_pair": lambda w, s: _seed_store(w, answered_by="alice"),
    "store_missing_pair": lambda w, s: _seed_store(w),
    "store_bad_answer": lambda w, s: _seed_store(w),
    "store_bad_labeler": lambda w, s: _seed_store(w),
    "store_path_escape": lambda w, s: _seed_store(w),
    "store_bad_seconds": lambda w, s: _seed_store(w),
    "store_locked": lambda w, s: _seed_store(w),
    "store_not_sqlite": lambda w, s: _not_sqlite(w / "labels.sqlite"),
    "store_newer_schema": lambda w, s: _newer_schema(w / "labels.sqlite"),
    "store_foreign_sqlite": lambda w, s: _foreign_sqlite(w / "labels.sqlite"),
}
for _name in ("app_missing_video", "app_bad_labeler", "app_exposed_without_token", "app_wrong_token",
              "app_video_outside_run", "app_video_symlink_out", "app_runs_page_exposed"):
    SETUPS[_name] = lambda w, s: make_app_run(w / "app")
SETUPS["app_missing_video"] = lambda w, s: (make_app_run(w / "app"), (w / "app" / "clips" / "c000.mp4").unlink())
SETUPS["app_video_outside_run"] = lambda w, s: (make_app_run(w / "app"), _sql(
    w / "app" / "labels.sqlite", "UPDATE clips SET video = '../../secret.mp4' WHERE id = 'c000'"))
SETUPS["app_video_symlink_out"] = lambda w, s: (make_app_run(w / "app"), shutil.move(
    w / "app" / "clips" / "c000.mp4", w / "outside.mp4"), (w / "app" / "clips" / "c000.mp4").symlink_to(
    w / "outside.mp4"))
SETUPS["app_not_sqlite"] = lambda w, s: _not_sqlite(w / "app" / "labels.sqlite")
SETUPS["app_newer_schema"] = lambda w, s: _newer_schema(w / "app" / "labels.sqlite")
SETUPS["app_no_store"] = lambda w, s: (w / "app").mkdir()
SETUPS["app_cli_not_a_run"] = lambda w, s: (w / "empty").mkdir()

T = TINY

def _resume_run(w, s):
    """`prefrl train --resume` on the case's prepared run folder."""
    return cli("train", "--resume", str(w / "run"))

CASES: list[Case] = [
    # --- the CLI -------------------------------------------------------------------------------------------
    Case("unknown_env", "cli", "--env CartPol-v1 (typo)", "did you mean CartPole-v1",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--env", "CartPol-v1")),
    Case("unknown_atari_env", "cli", "--env ALE/Pongg-v5 (typo)", "did you mean ALE/Pong-v5",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--env", "ALE/Pongg-v5")),
    Case("discrete_observations", "cli", "--env FrozenLake-v1 (Discrete observations)", "needs a Box",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--env", "FrozenLake-v1")),
    Case("wrong_action_space", "cli", "a custom env with MultiDiscrete actions", "supports Box or Discrete",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--env", "BadInputMultiDiscrete-v0")),
    Case("nan_observation", "cli", "a custom env whose observations turn NaN", "NaN or inf in its observation",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--env", "BadInputNaNObs-v0")),
    Case("inf_reward", "cli", "a custom env whose reward turns inf", "NaN or inf reward",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--env", "BadInputInfReward-v0")),
    Case("zero_labels", "cli", "--total-labels 0", "--total-labels must be > 0",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--total-labels", "0")),
    Case("negative_labels", "cli", "--total-labels -3", "--total-labels must be > 0",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--total-labels", "-3")),
    Case("absurd_labels", "cli", "--total-labels 50000000", "is absurd",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--total-labels", "50000000")),
    Case("negative_steps", "cli", "--total-timesteps -5", "--total-timesteps must be >= 1",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--total-timesteps", "-5")),
    Case("absurd_steps", "cli", "--total-timesteps 10^12", "is absurd",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--total-timesteps", "1000000000000")),
    Case("zero_envs", "cli", "--n-envs 0", "--n-envs must be >= 1",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--n-envs", "0")),
    Case("absurd_envs", "cli", "--n-envs 100000", "is absurd",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--n-envs", "100000")),
    Case("clip_longer_than_episode", "cli", "--clip-length 500 on Pendulum (200-step episodes)",
         "longer than an episode", lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--clip-length", "500")),
    Case("nan_learning_rate", "cli", "--learning-rate nan", "must be a finite number",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--learning-rate", "nan")),
    Case("not_a_number", "cli", "--total-labels abc", "invalid literal",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--total-labels", "abc")),
    Case("unknown_teacher", "cli", "--teacher nobody", "invalid choice 'nobody'",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--teacher", "nobody")),
    Case("unknown_labeler", "cli", "--labeler bob", "invalid choice 'bob'",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--labeler", "bob")),
    Case("misspelt_flag", "cli", "--total-labe 3", "did you mean --total-labels",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--total-labe", "3")),
    Case("exp_name_escapes", "cli", "--exp-name ../../elsewhere", "cannot name a run folder",
         lambda w, s: cli("train", "--results-dir", str(w / "results"), *T, "--exp-name", "../../elsewhere")),
    Case("existing_run_folder", "cli", "--run-dir of a folder that exists", "exists; continue it with --resume",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T)),
    Case("read_only_results", "cli", "--results-dir in a folder that cannot be written", "pick a writable",
         lambda w, s: cli("train", "--results-dir", str(_read_only_parent(w) / "prefrl_results"), *T)),
    Case("results_dir_is_a_file", "cli", "--results-dir naming a file", "pick a writable",
         lambda w, s: cli("train", "--results-dir", str(w / "results"), *T)),
    Case("labels_missing", "cli", "--labels of a file that does not exist", "does not exist",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--labels", str(w / "nope.sqlite"))),
    Case("labels_not_sqlite", "cli", "--labels of a file that is not SQLite", "not a usable label database",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--labels", str(w / "other/labels.sqlite"))),
    Case("labels_newer_schema", "cli", "--labels of a store written by a newer prefrl", "upgrade prefrl",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--labels", str(w / "other/labels.sqlite"))),
    Case("labels_foreign_sqlite", "cli", "--labels of another program's SQLite file", "another program",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--labels", str(w / "other/labels.sqlite"))),
    Case("labels_without_labels", "cli", "--labels of a store with no labels", "holds no usable labels",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--labels", str(w / "other/labels.sqlite"))),
    Case("labels_clip_outside_run", "cli", "--labels of a crafted store whose clip paths leave its run",
         "points outside", lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--labels",
                                            str(w / "other/labels.sqlite"))),
    Case("labels_clip_file_missing", "cli", "--labels of a store whose clip files were deleted", "is missing",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--labels", str(w / "other/labels.sqlite"))),
    Case("labels_from_other_env", "cli", "--labels of a Pendulum run for CartPole", "use the same --env",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--env", "CartPole-v1", "--labels",
                          str(w / "other/labels.sqlite"))),
    Case("reward_model_missing", "cli", "--reward-model of a folder without one", "no reward model at",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--reward-model", str(w))),
    Case("reward_model_garbage", "cli", "--reward-model of a file that is not a state dict",
         "is not a prefrl reward model", lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--reward-model",
                                                          str(w / "other" / "ensemble.pt"))),
    Case("reward_model_other_env", "cli", "--reward-model of a Pendulum run for CartPole",
         "trained on Pendulum-v1, not CartPole-v1", lambda w, s: cli(
             "train", "--run-dir", str(w / "run"), *T, "--env", "CartPole-v1", "--reward-model", str(w / "other"))),
    Case("labels_and_reward_model", "cli", "--labels and --reward-model together", "exclude each other",
         lambda w, s: cli("train", "--run-dir", str(w / "run"), *T, "--labels", str(s / "labels.sqlite"),
                          "--reward-model", str(s))),
    Case("resume_not_a_run", "cli", "--resume of a folder that is not a run", "not a run folder",
         _resume_run),
    Case("resume_with_flags", "cli", "--resume RUN --env CartPole-v1", "takes no other flags",
         lambda w, s: cli("train", "--resume", str(w / "run"), "--env", "CartPole-v1")),
    Case("resume_in_use", "cli", "--resume of a run another trainer is running", "in use by another",
         _with_lock_held),
    Case("resume_newer_store", "cli", "--resume of a run whose labels.sqlite is from a newer prefrl",
         "upgrade prefrl", _resume_run),
    Case("resume_incomplete_checkpoint", "cli", "--resume when checkpoints/latest names a missing folder",
         "is incomplete", _resume_run),
    Case("app_cli_not_a_run", "cli", "prefrl app on a folder without labels.sqlite", "has no labels.sqlite",
         lambda w, s: cli("app", str(w / "empty"))),
    Case("app_cli_short_token", "cli", "prefrl app --address 0.0.0.0 --token abc", "--token must be",
         lambda w, s: cli("app", "--address", "0.0.0.0", "--token", "abc")),
    # --- config.json, read by --resume -----------------------------------------------------------------------
    Case("resume_corrupt_config", "config", "config.json cut short", "is not valid JSON",
         _resume_run),
    Case("resume_config_not_object", "config", "config.json holding a list", "must hold a JSON object",
         _resume_run),
    Case("resume_config_unknown_key", "config", "config.json with an unknown setting", "unknown setting(s)",
         _resume_run),
    Case("resume_config_bad_value", "config", "config.json with total_labels -5", "--total-labels must be > 0",
         _resume_run),
    Case("resume_config_wrong_type", "config", 'config.json with n_envs "four"', "--n-envs must be an integer",
         _resume_run),
    Case("resume_config_unknown_teacher", "config", 'config.json with teacher "nobody"', "--teacher must be one of",
         _resume_run),
    Case("resume_config_nan", "config", "config.json with learning_rate NaN", "must be a finite number",
         _resume_run),
    # --- the label store ------------------------------------------------------------------------------------
    Case("store_stale_pair", "store", "a label for a pair this labeler already answered (second tab)",
         "already answered by alice", lambda w, s: _store_dup(w)),
    Case("store_missing_pair", "store", "a label for a pair that does not exist", "pair 999 does not exist",
         lambda w, s: _store_op(w, lambda st: st.add_label(999, "left", "alice", 1.0, 0))),
    Case("store_bad_answer", "store", "answer 'maybe'", "use one of left, right, equal, cant_tell",
         lambda w, s: _store_op(w, lambda st: st.add_label(1, "maybe", "alice", 1.0, 0))),
    Case("store_bad_labeler", "store", "labeler name '../../etc'", "is not usable",
         lambda w, s: _store_op(w, lambda st: st.add_label(1, "left", "../../etc", 1.0, 0))),
    Case("store_path_escape", "store", "a clip whose video path is '../../x.mp4'", "stay inside it",
         lambda w, s: _store_op(w, lambda st: st.add_clip("c9", 0, 0.0, 25, "clips/c9.npz", "../../x.mp4"))),
    Case("store_bad_seconds", "store", "seconds = NaN", "seconds must be a finite number",
         lambda w, s: _store_op(w, lambda st: st.add_label(1, "left", "alice", math.nan, 0))),
    Case("store_locked", "store", "a write while another process holds the lock past the timeout",
         "locked by another process", lambda w, s: _store_locked(w)),
    Case("store_not_sqlite", "store", "opening a file that is not SQLite", "not a usable label database",
         lambda w, s: _open_store(w / "labels.sqlite")),
    Case("store_newer_schema", "store", "opening a store from a newer prefrl", "upgrade prefrl",
         lambda w, s: _open_store(w / "labels.sqlite")),
    Case("store_foreign_sqlite", "store", "opening another program's SQLite file", "not a prefrl label database",
         lambda w, s: _open_store(w / "labels.sqlite")),
    # --- the app --------------------------------------------------------------------------------------------
    Case("app_missing_video", "app", "a clip's video deleted", "c000.mp4 is missing", _app_with()),
    Case("app_video_outside_run", "app", "a crafted store whose video path leaves the run folder",
         "points outside its run folder", _app_with()),
    Case("app_video_symlink_out", "app", "a clip video that is a symlink out of the run folder",
         "points outside the run folder", _app_with()),
    Case("app_not_sqlite", "app", "labels.sqlite that is not SQLite", "not a usable label database", _app_with()),
    Case("app_newer_schema", "app", "labels.sqlite from a newer prefrl", "upgrade prefrl", _app_with()),
    Case("app_no_store", "app", "a run folder without labels.sqlite", "does not exist; choose a run folder",
         _app_with()),
    Case("app_bad_labeler", "app", "labeler name '../etc' typed in", "is not a usable labeler name",
         _app_with(labeler=None, labeler_input="../etc")),
    Case("app_exposed_without_token", "app", "the server bound to 0.0.0.0 with no access token",
         "without an access token", _app_with(address="0.0.0.0")),
    Case("app_wrong_token", "app", "a browser with the wrong ?token=", "needs its access token",
         _app_with(address="0.0.0.0", token="s3cret-token-0123456789", query={"token": "guess"})),
    Case("app_runs_page_exposed", "app", "the Runs page bound to 0.0.0.0 with no access token",
         "without an access token", _app_with(address="0.0.0.0", page=RUNS_PAGE)),
]


# --- the tests ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    return make_source_run(tmp_path_factory.mktemp("source") / "run")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, source_run: Path, tmp_path: Path):
    if case.surface == "app":
        pytest.importorskip("streamlit.testing.v1")
    if case.id == "read_only_results" and os.geteuid() == 0 and not _mkdir_fails(Path("/sys/prefrl_probe")):
        pytest.skip("running as root and /sys is writable: no read-only folder to test with")
    r = run_case(case, tmp_path / "work", source_run)
    o = r.outcome
    assert not o.crashed, o.message
    assert o.code is None or o.code != 0, f"exit code {o.code}: {o.message}"
    assert case.expect in o.message, o.message
    assert r.lines == 1 and "Traceback" not in o.message, o.message
    if case.surface != "app":
        assert any(m in o.message for m in FIX_MARKS), f"no fix named: {o.message}"
    if case.surface in ("cli", "config"):
        assert o.message.startswith("prefrl: error: "), o.message
    assert not r.changed, f"written or changed: {r.changed}"
    assert r.ok


def _mkdir_fails(path: Path) -> bool:
    try:
        path.mkdir()
    except OSError:
        return True
    path.rmdir()
    return False


def test_there_are_at_least_30_cases_on_every_surface():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert {c.surface for c in CASES} == {"cli", "config", "store", "app"}


def test_debug_shows_the_traceback(tmp_path):
    plain = cli("train", "--run-dir", str(tmp_path / "run"), *TINY, "--env", "CartPol-v1")
    debug = cli("train", "--run-dir", str(tmp_path / "run"), *TINY, "--env", "CartPol-v1", "--debug")
    assert "Traceback" not in plain.message and "Traceback" in debug.message
    assert debug.message.strip().splitlines()[-1] == plain.message.strip()
    box = cli("train", "--teacher", "nobody", "--debug")
    assert "For full helptext" in box.message  # tyro's own box too


def test_nan_late_in_a_run_stops_it_with_one_line(tmp_path):
    """NaN after the pre-flight probe: the run stops at that step with one line (its folder is kept)."""
    run = tmp_path / "run"
    o = cli("train", "--run-dir", str(run), *TINY, "--env", "BadInputLateNaN-v0")
    assert o.code == 1 and o.message.strip().count("\n") == 0, o.message
    assert "BadInputLateNaN-v0 returned nan in its observations (in a step)" in o.message
    assert (run / "config.json").exists()  # training had started: the folder and its labels stay


def test_a_second_trainer_on_the_same_run_is_refused_while_the_first_runs(tmp_path):
    import subprocess

    run = tmp_path / "run"
    long = [a if a != "2048" else "500000" for a in TINY]  # still running when the second one comes
    first = subprocess.Popen([sys.executable, "-m", "prefrl", "train", "--run-dir", str(run), *long],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 60
        while first.poll() is None and time.monotonic() < deadline and not (run / "checkpoints").exists():
            time.sleep(0.1)  # config.json is written, the folder locked, the trainer built
        assert first.poll() is None, first.stderr.read()
        before = fingerprint(run / "checkpoints")
        second = cli("train", "--resume", str(run))
        assert second.code == 1 and "in use by another prefrl train" in second.message, second.message
        assert second.message.count("\n") == 1
    finally:
        first.kill()
        first.wait()
    assert (run / "config.json").exists() and before is not None


def test_security_greps():
    """torch.load only with weights_only=True, no pickle (nor PPO.load, which unpickles), SQL only in the store
    with constants in its f-strings: the greps behind results/reliability.md's security section."""
    import importlib.util

    # by its path: benchmarks/ must not go on sys.path (benchmarks/mujoco.py would shadow the mujoco package)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability.py"
    spec = importlib.util.spec_from_file_location("prefrl_reliability_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    lines, ok = report.security()
    assert ok, "\n".join(lines)
    assert any("all with `weights_only=True`" in ln for ln in lines)
