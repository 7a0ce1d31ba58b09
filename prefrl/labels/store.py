"""labels.sqlite: clips, pairs and labels of one run; the only SQL in prefrl.

The trainer (writes clips and pairs, reads labels) and the labeling app (reads pending
pairs, writes labels) are separate processes that share nothing but this file. So the
database runs in WAL mode (readers never wait for the writer), every write is one short
``BEGIN IMMEDIATE`` transaction (writers queue on the busy timeout instead of failing
half-way), and every label is written once with its provenance.
"""

from __future__ import annotations

import enum
import math
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NamedTuple, Optional

from prefrl.reliability import fault_point

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the schema below; bump it (and add a migration) on any change."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS clips (
        id TEXT PRIMARY KEY,
        env_step INTEGER NOT NULL,
        true_return REAL NOT NULL,
        length INTEGER NOT NULL,
        npz TEXT NOT NULL,
        video TEXT,
        created REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pairs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        left_clip TEXT NOT NULL REFERENCES clips(id),
        right_clip TEXT NOT NULL REFERENCES clips(id),
        rule TEXT NOT NULL,
        model_version INTEGER NOT NULL,
        disagreement REAL,
        created REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS labels (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pair_id INTEGER NOT NULL REFERENCES pairs(id),
        answer TEXT NOT NULL CHECK (answer IN ('left', 'right', 'equal', 'cant_tell')),
        labeler TEXT NOT NULL,
        seconds REAL NOT NULL,
        created REAL NOT NULL,
        model_version INTEGER NOT NULL,
        UNIQUE (pair_id, labeler))""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    # UNIQUE(pair_id, labeler) already indexes labels by pair; these serve the joins and FKs.
    "CREATE INDEX IF NOT EXISTS pairs_left ON pairs(left_clip)",
    "CREATE INDEX IF NOT EXISTS pairs_right ON pairs(right_clip)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


class StoreError(Exception):
    """labels.sqlite cannot do what was asked; the message is one line that says what to do."""


class DuplicateLabel(StoreError):
    """This labeler already answered this pair (e.g. two app tabs); callers just move on."""


class StoreBusy(StoreError):
    """Another process held the write lock for the whole busy timeout; nothing was written, retrying is safe."""


LABELER_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""Labeler names: people (the app allows a subset) and synthetic teachers (e.g. `teacher:mistake`)."""


def check_labeler(name: str) -> str:
    """The name itself, or StoreError: names are shown in the app and must never look like paths or markup."""
    if not isinstance(name, str) or not LABELER_RE.fullmatch(name) or name.strip(".") == "":
        raise StoreError(f"labeler name {name!r} is not usable; use 1 to 64 letters, digits, '_', '.', ':' or '-'")
    return name


def inside_run(rel: str | Path) -> bool:
    """True for a non-empty relative path that stays inside its run folder (no '..', no drive, no root)."""
    text = str(rel)
    if not text.strip() or "\x00" in text:
        return False
    posix, win = PurePosixPath(text.replace("\\", "/")), PureWindowsPath(text)
    return not (posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts)


def run_file(run_dir: Path, rel: str | Path) -> Path:
    """`run_dir / rel`, refusing paths (or symlinks) that lead outside the run folder: clip paths come from
    labels.sqlite, which a user may have been handed."""
    root = Path(run_dir).resolve()
    path = (root / str(rel)).resolve() if inside_run(rel) else None
    if path is None or not path.is_relative_to(root):
        raise StoreError(f"{rel} points outside the run folder {run_dir}; this labels.sqlite was not written by "
                         "prefrl for this run, do not use it")
    return path


class Answer(str, enum.Enum):
    """A labeler's answer to "which clip is better?"."""

    LEFT = "left"
    RIGHT = "right"
    EQUAL = "equal"
    CANT_TELL = "cant_tell"

    @property
    def target(self) -> Optional[float]:
        """Training target P(left preferred); None for cant_tell, which is kept but never trained on."""
        return _TARGETS[self]


_TARGETS = {Answer.LEFT: 1.0, Answer.RIGHT: 0.0, Answer.EQUAL: 0.5, Answer.CANT_TELL: None}


class ClipRow(NamedTuple):
    id: str
    env_step: int
    true_return: float
    length: int
    npz: str
    """Path of the clip's arrays, relative to the run folder."""
    video: Optional[str]
    """Path of the clip's MP4, relative to the run folder (None when not rendered)."""
    created: float


class Pair(NamedTuple):
    id: int
    left_clip: str
    right_clip: str
    rule: str
    """Which sampler chose the pair, e.g. random or disagreement."""
    model_version: int
    """Reward-model version when the pair was chosen."""
    disagreement: Optional[float]
    created: float


class LabelRecord(NamedTuple):
    """A label with its provenance (pair, clips, rule)."""

    id: int
    pair_id: int
    left_clip: str
    right_clip: str
    answer: Answer
    labeler: str
    seconds: float
    created: float
    model_version: int
    """Reward-model version when the label was given."""
    rule: str


_LABEL_QUERY = """
    SELECT l.id, l.pair_id, p.left_clip, p.right_clip, l.answer, l.labeler, l.seconds,
           l.created, l.model_version, p.rule
    FROM labels l JOIN pairs p ON p.id = l.pair_id"""
_PAIR_COLUMNS = "p.id, p.left_clip, p.right_clip, p.rule, p.model_version, p.disagreement, p.created"
_VALID_ANSWERS = ", ".join(a.value for a in Answer)
_EXCLUDED = {True: Answer.CANT_TELL.value, False: ""}  # answer value that trainable_only leaves out


class LabelStore:
    """One connection to a run's labels.sqlite; creates the schema when the file is new.

    Not to be shared across threads or forked processes: open one per process (or per
    Streamlit script run); opening is cheap.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path} ({exc}); check that its folder exists and is writable") from None
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        # Read the version before anything that writes, so a foreign or newer file stays untouched.
        version = self._version()
        if version == 0:
            with self._errors():
                tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            foreign = sorted(tables - {"clips", "pairs", "labels", "meta", "sqlite_sequence"})
            if foreign:
                raise StoreError(f"{self.path} is an SQLite file of another program (tables {', '.join(foreign[:3])}), "
                                 "not a prefrl label database; pass RUN_DIR/labels.sqlite of a prefrl run")
        with self._errors():
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA journal_mode = WAL")
        if version == 0:
            with self._write() as cur:
                if cur.execute("PRAGMA user_version").fetchone()[0] == 0:  # another process may have won
                    for statement in _SCHEMA:
                        cur.execute(statement)

    def _version(self) -> int:
        with self._errors():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"labels.sqlite was written by a newer prefrl (schema {version} > {SCHEMA_VERSION}); "
                             "upgrade prefrl")
        return version

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transactions and errors ---------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn sqlite3 errors into one-line StoreErrors that name the file and the fix."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreBusy(f"{self.path} is locked by another process (waited {self.timeout:g} s); "
                                 "close the other process or retry") from None
            raise StoreError(f"{self.path}: {exc}") from None
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable label database ({exc}); "
                             "restore it from a backup or start a new run") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One short write transaction; the write lock is taken up front so it never fails midway."""
        with self._errors():
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._errors():
            return self._conn.execute(sql, params).fetchall()

    # --- clips -----------------------------------------------------------------------

    def add_clip(self, clip_id: str, env_step: int, true_return: float, length: int, npz: str | Path,
                 video: str | Path | None = None) -> None:
        """Record a clip; adding the same id again is a no-op (the first row stands)."""
        self.add_clips([(clip_id, env_step, true_return, length, npz, video)])

    def add_clips(self, clips: Sequence[tuple[str, int, float, int, str | Path, str | Path | None]]) -> None:
        """add_clip for many (clip_id, env_step, true_return, length, npz, video) rows in one transaction: a
        commit costs ~1 ms, and the trainer stores up to two clips per pair it asks."""
        rows = []
        for clip_id, env_step, true_return, length, npz, video in clips:
            for name, p in (("npz", npz), ("video", video)):
                if p is not None and not inside_run(p):
                    raise StoreError(f"clip {clip_id}: {name} path {p} must be relative to the run folder "
                                     "and stay inside it (no '..')")
            rows.append((clip_id, int(env_step), float(true_return), int(length), str(npz),
                         None if video is None else str(video), time.time()))
        with self._write() as cur:
            cur.executemany("INSERT OR IGNORE INTO clips VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def clip(self, clip_id: str) -> ClipRow:
        rows = self._read("SELECT * FROM clips WHERE id = ?", (clip_id,))
        if not rows:
            raise StoreError(f"clip {clip_id} does not exist in {self.path}")
        return self._checked(ClipRow._make(rows[0]))

    def clips(self) -> list[ClipRow]:
        return [self._checked(ClipRow._make(r)) for r in self._read("SELECT * FROM clips ORDER BY created, id")]

    def _checked(self, row: ClipRow) -> ClipRow:
        """Refuse rows whose files lie outside the run folder (a crafted database), before anyone opens them."""
        for p in (row.npz, row.video):
            if p is not None and not inside_run(p):
                raise StoreError(f"{self.path}: clip {row.id} points outside its run folder ({p}); this file was "
                                 "not written by prefrl, do not use it")
        return row

    # --- pairs -----------------------------------------------------------------------

    def add_pairs(self, pairs: Sequence[tuple[str, str]], rule: str, model_version: int,
                  disagreement: Sequence[Optional[float]] | None = None) -> list[int]:
        """Queue pairs for labeling in one transaction; returns their ids in order."""
        if disagreement is not None and len(disagreement) != len(pairs):
            raise StoreError(f"got {len(disagreement)} disagreement values for {len(pairs)} pairs")
        if not rule:
            raise StoreError("a pair needs the rule that chose it (e.g. random)")
        scores = disagreement if disagreement is not None else [None] * len(pairs)
        now = time.time()
        ids = []
        with self._write() as cur:
            for (left, right), score in zip(pairs, scores):
                if left == right:
                    raise StoreError(f"pair of clip {left} with itself; pick two different clips")
                for clip_id in (left, right):
                    if cur.execute("SELECT 1 FROM clips WHERE id = ?", (clip_id,)).fetchone() is None:
                        raise StoreError(f"clip {clip_id} does not exist; add_clip it before pairing it")
                cur.execute("INSERT INTO pairs (left_clip, right_clip, rule, model_version, disagreement, created) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (left, right, rule, int(model_version), None if score is None else float(score), now))
                ids.append(cur.lastrowid)
        return ids

    def get_pair(self, pair_id: int) -> Pair:
        rows = self._read(f"SELECT {_PAIR_COLUMNS} FROM pairs p WHERE p.id = ?", (int(pair_id),))
        if not rows:
            raise StoreError(f"pair {pair_id} does not exist")
        return Pair._make(rows[0])

    def pending_pairs(self, labeler: Optional[str] = None, limit: Optional[int] = None) -> list[Pair]:
        """Pairs nobody answered (labeler None) or that labeler has not answered; oldest first."""
        if labeler is None:
            where, params = "NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id)", []
        else:
            where, params = "NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.labeler = ?)", [labeler]
        rows = self._read(f"SELECT {_PAIR_COLUMNS} FROM pairs p WHERE {where} ORDER BY p.id LIMIT ?",
                          [*params, -1 if limit is None else int(limit)])
        return [Pair._make(r) for r in rows]

    def count_pairs(self) -> int:
        return self._read("SELECT COUNT(*) FROM pairs")[0][0]

    def count_pending(self) -> int:
        """Pairs with no label from anyone."""
        return self._read("SELECT COUNT(*) FROM pairs p WHERE NOT EXISTS "
                          "(SELECT 1 FROM labels l WHERE l.pair_id = p.id)")[0][0]

    # --- labels ----------------------------------------------------------------------

    def add_label(self, pair_id: int, answer: Answer | str, labeler: str, seconds: float, model_version: int) -> int:
        """Write one label (once; never overwritten); returns its id."""
        return self.add_labels([(pair_id, answer, labeler, seconds, model_version)])[0]

    def add_labels(self, rows: Sequence[tuple[int, Answer | str, str, float, int]]) -> list[int]:
        """add_label for many (pair_id, answer, labeler, seconds, model_version) rows in one transaction: all or
        none are written. A synthetic teacher answers a batch of pairs at once, and a commit costs ~1 ms."""
        checked = []
        for pair_id, answer, labeler, seconds, model_version in rows:
            try:
                answer = Answer(answer)
            except ValueError:
                raise StoreError(f"answer {answer!r} is unknown; use one of {_VALID_ANSWERS}") from None
            if not isinstance(labeler, str) or not labeler.strip():
                raise StoreError("a label needs a labeler name")
            check_labeler(labeler)
            if not math.isfinite(seconds) or seconds < 0:
                raise StoreError(f"seconds must be a finite number >= 0 (got {seconds})")
            checked.append((int(pair_id), answer.value, labeler, float(seconds), int(model_version)))
        ids = []
        with self._write() as cur:
            for pair_id, answer, labeler, seconds, model_version in checked:
                if cur.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone() is None:
                    raise StoreError(f"pair {pair_id} does not exist; it may belong to another run's labels.sqlite")
                if cur.execute("SELECT 1 FROM labels WHERE pair_id = ? AND labeler = ?",
                               (pair_id, labeler)).fetchone() is not None:
                    raise DuplicateLabel(f"pair {pair_id} was already answered by {labeler}; moving on")
                cur.execute("INSERT INTO labels (pair_id, answer, labeler, seconds, created, model_version) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (pair_id, answer, labeler, seconds, time.time(), model_version))
                fault_point("label_write")  # fault tests: killed inside the transaction, the labels must vanish whole
                ids.append(cur.lastrowid)
        return ids

    def delete_label(self, label_id: int, labeler: str) -> None:
        """Undo a label; only the labeler who gave it may, so one person cannot erase another's."""
        with self._write() as cur:
            cur.execute("DELETE FROM labels WHERE id = ? AND labeler = ?", (int(label_id), labeler))
            if cur.rowcount == 0:
                raise StoreError(f"label {label_id} by {labeler} does not exist; nothing to undo")

    def labels(self, trainable_only: bool = False, last: Optional[int] = None) -> list[LabelRecord]:
        """Labels with provenance, oldest first; `last=N` keeps the newest N."""
        rows = self._read(f"{_LABEL_QUERY} WHERE l.answer != ? ORDER BY l.id DESC LIMIT ?",
                          (_EXCLUDED[trainable_only], -1 if last is None else int(last)))
        return [LabelRecord(*r[:4], Answer(r[4]), *r[5:]) for r in reversed(rows)]

    def count_labels(self, trainable_only: bool = False) -> int:
        return self._read("SELECT COUNT(*) FROM labels WHERE answer != ?", (_EXCLUDED[trainable_only],))[0][0]

    # --- meta ------------------------------------------------------------------------

    def get_meta(self, key: str, default: Optional[str] = None) -> Optional[str]:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        """Small run-level facts shared with the app (e.g. env id); the last write wins."""
        with self._write() as cur:
            cur.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))
