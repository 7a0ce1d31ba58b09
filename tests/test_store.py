"""labels.sqlite: provenance, per-labeler queues, refusal of bad files, and two processes at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from prefrl.labels.store import (SCHEMA_VERSION, Answer, DuplicateLabel, LabelRecord, LabelStore, Pair,
                                 StoreError)


def _store_with_pairs(path: Path, n_pairs: int = 3) -> tuple[LabelStore, list[int]]:
    store = LabelStore(path)
    for i in range(n_pairs + 1):
        store.add_clip(f"c{i}", env_step=100 * i, true_return=float(i), length=25, npz=f"clips/c{i}.npz")
    ids = store.add_pairs([(f"c{i}", f"c{i + 1}") for i in range(n_pairs)], "disagreement", model_version=2,
                          disagreement=[0.5 + i for i in range(n_pairs)])
    return store, ids


def test_round_trip_keeps_full_provenance(tmp_path):
    store, (p0, p1, p2) = _store_with_pairs(tmp_path / "labels.sqlite")
    store.add_clip("c0", env_step=999, true_return=-1.0, length=1, npz="other.npz")  # same id: first row stands
    clip = store.clip("c0")
    assert (clip.env_step, clip.true_return, clip.length, clip.npz, clip.video) == (0, 0.0, 25, "clips/c0.npz", None)
    assert [c.id for c in store.clips()] == ["c0", "c1", "c2", "c3"]

    pair = store.get_pair(p1)
    assert isinstance(pair, Pair)
    assert (pair.left_clip, pair.right_clip, pair.rule, pair.model_version, pair.disagreement) == \
        ("c1", "c2", "disagreement", 2, 1.5)

    label_id = store.add_label(p1, "right", labeler="alice", seconds=3.5, model_version=4)
    [rec] = store.labels()
    assert isinstance(rec, LabelRecord)
    assert rec == LabelRecord(label_id, p1, "c1", "c2", Answer.RIGHT, "alice", 3.5, rec.created, 4, "disagreement")
    assert rec.answer is Answer.RIGHT and rec.answer.target == 0.0
    store.close()

    with LabelStore(tmp_path / "labels.sqlite") as reopened:  # survives a reopen
        assert reopened.labels() == [rec]
        assert reopened.count_pairs() == 3


def test_answer_targets():
    assert [a.target for a in Answer] == [1.0, 0.0, 0.5, None]
    assert Answer("cant_tell") is Answer.CANT_TELL


def test_pending_pairs_per_labeler(tmp_path):
    store, (p0, p1, p2) = _store_with_pairs(tmp_path / "labels.sqlite")
    assert [p.id for p in store.pending_pairs()] == [p0, p1, p2]
    assert [p.id for p in store.pending_pairs(limit=2)] == [p0, p1]
    store.add_label(p1, Answer.LEFT, labeler="alice", seconds=1.0, model_version=0)
    assert [p.id for p in store.pending_pairs()] == [p0, p2]
    assert [p.id for p in store.pending_pairs(labeler="alice")] == [p0, p2]
    assert [p.id for p in store.pending_pairs(labeler="bob")] == [p0, p1, p2]
    assert store.count_pending() == 2


def test_duplicate_label_by_same_labeler_only(tmp_path):
    store, (p0, *_) = _store_with_pairs(tmp_path / "labels.sqlite")
    store.add_label(p0, "left", labeler="alice", seconds=1.0, model_version=0)
    with pytest.raises(DuplicateLabel, match=f"pair {p0} was already answered by alice"):
        store.add_label(p0, "right", labeler="alice", seconds=1.0, model_version=0)
    store.add_label(p0, "right", labeler="bob", seconds=2.0, model_version=0)
    assert [(r.labeler, r.answer) for r in store.labels()] == [("alice", Answer.LEFT), ("bob", Answer.RIGHT)]


@pytest.mark.parametrize("kwargs, match", [
    (dict(pair_id=999), "pair 999 does not exist"),
    (dict(answer="maybe"), "left, right, equal, cant_tell"),
    (dict(labeler=" "), "labeler"),
    (dict(seconds=float("nan")), "seconds"),
    (dict(seconds=-1.0), "seconds"),
])
def test_add_label_rejects_bad_input(tmp_path, kwargs, match):
    store, (p0, *_) = _store_with_pairs(tmp_path / "labels.sqlite")
    args = dict(pair_id=p0, answer="left", labeler="alice", seconds=1.0, model_version=0) | kwargs
    with pytest.raises(StoreError, match=match):
        store.add_label(**args)
    assert store.count_labels() == 0


def test_missing_pair_and_clip(tmp_path):
    store, _ = _store_with_pairs(tmp_path / "labels.sqlite")
    with pytest.raises(StoreError, match="pair 42 does not exist"):
        store.get_pair(42)
    with pytest.raises(StoreError, match="clip nope does not exist"):
        store.add_pairs([("c0", "c1"), ("c0", "nope")], "random", 0)
    assert store.count_pairs() == 3  # the batch is one transaction: the good pair was rolled back too


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "labels.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=rf"newer prefrl \(schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}\); upgrade"):
        LabelStore(path)


def test_garbage_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "labels.sqlite"
    garbage = b"this is not sqlite\x00\xff" * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as info:
        LabelStore(path)
    msg = str(info.value)
    assert str(path) in msg and "restore" in msg and "new run" in msg and "\n" not in msg
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.sqlite"]


def test_wal_mode_and_busy_timeout(tmp_path):
    path = tmp_path / "labels.sqlite"
    LabelStore(path, timeout=12.5).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    store = LabelStore(path, timeout=12.5)
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 12500
    assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_reader_is_not_blocked_by_an_open_write(tmp_path):
    path = tmp_path / "labels.sqlite"
    writer, (p0, p1, p2) = _store_with_pairs(path)
    reader = LabelStore(path, timeout=0.1)
    assert reader.count_pending() == 3
    writer.add_label(p0, "equal", labeler="alice", seconds=1.0, model_version=0)
    assert reader.count_pending() == 2  # the other object sees the write at once

    other = sqlite3.connect(path, isolation_level=None)  # hold the write lock, as a slow writer would
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO meta VALUES ('k', 'v')")
    assert [p.id for p in reader.pending_pairs()] == [p1, p2]  # WAL: reads go on
    with pytest.raises(StoreError, match=r"labels.sqlite is locked by another process.*close the other process"):
        reader.add_label(p0, "left", labeler="bob", seconds=1.0, model_version=0)
    other.execute("ROLLBACK")
    reader.add_label(p0, "left", labeler="bob", seconds=1.0, model_version=0)  # usable again after the error
    assert writer.count_labels() == 2


def _label_everything(path: str, labeler: str, barrier) -> None:
    barrier.wait()
    with LabelStore(path) as store:
        for pair in store.pending_pairs(labeler=labeler):
            store.add_label(pair.id, "left", labeler=labeler, seconds=0.1, model_version=0)


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "labels.sqlite"
    store, _ = _store_with_pairs(path, n_pairs=40)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_label_everything, args=(str(path), name, barrier)) for name in ("alice", "bob")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert store.count_labels() == 80
    assert store.pending_pairs(labeler="alice") == [] and store.pending_pairs(labeler="bob") == []


def test_last_and_trainable_only(tmp_path):
    store, ids = _store_with_pairs(tmp_path / "labels.sqlite", n_pairs=5)
    answers = ["left", "cant_tell", "right", "equal", "cant_tell"]
    for pid, ans in zip(ids, answers):
        store.add_label(pid, ans, labeler="alice", seconds=1.0, model_version=0)
    assert [r.answer.value for r in store.labels()] == answers
    assert [r.answer.value for r in store.labels(last=2)] == ["equal", "cant_tell"]
    assert [r.answer.value for r in store.labels(trainable_only=True)] == ["left", "right", "equal"]
    assert [r.answer.value for r in store.labels(trainable_only=True, last=2)] == ["right", "equal"]
    assert (store.count_labels(), store.count_labels(trainable_only=True)) == (5, 3)


def test_delete_label_only_own(tmp_path):
    store, (p0, *_) = _store_with_pairs(tmp_path / "labels.sqlite")
    alice = store.add_label(p0, "left", labeler="alice", seconds=1.0, model_version=0)
    bob = store.add_label(p0, "right", labeler="bob", seconds=1.0, model_version=0)
    with pytest.raises(StoreError, match=f"label {alice} by bob does not exist"):
        store.delete_label(alice, "bob")
    store.delete_label(alice, "alice")
    assert [r.id for r in store.labels()] == [bob]
    again = store.add_label(p0, "equal", labeler="alice", seconds=1.0, model_version=0)  # undo, then re-answer
    assert again not in (alice, bob)  # ids are never reused


def test_meta(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    assert store.get_meta("env") is None and store.get_meta("env", "x") == "x"
    store.set_meta("env", "Pendulum-v1")
    store.set_meta("env", "CartPole-v1")
    assert store.get_meta("env") == "CartPole-v1"


def test_absolute_clip_path_refused(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    with pytest.raises(StoreError, match="relative to the run folder"):
        store.add_clip("c", 0, 0.0, 25, npz=tmp_path / "clips" / "c.npz")


def test_add_clips_writes_all_rows_in_one_transaction_or_none(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_clips([(f"c{i}", i, float(i), 25, f"clips/c{i}.npz", None) for i in range(3)])
    assert [c.id for c in store.clips()] == ["c0", "c1", "c2"]
    with pytest.raises(StoreError, match="inside it"):  # one bad path refuses the whole batch
        store.add_clips([("c3", 3, 0.0, 25, "clips/c3.npz", None), ("c4", 4, 0.0, 25, "../escape.npz", None)])
    assert [c.id for c in store.clips()] == ["c0", "c1", "c2"]


def test_add_labels_writes_all_rows_in_one_transaction_or_none(tmp_path):
    store, (p0, p1, p2) = _store_with_pairs(tmp_path / "labels.sqlite")
    ids = store.add_labels([(p0, "left", "oracle", 0.0, 2), (p1, Answer.EQUAL, "oracle", 0.0, 2)])
    assert [(r.id, r.pair_id, r.answer) for r in store.labels()] == [(ids[0], p0, Answer.LEFT),
                                                                    (ids[1], p1, Answer.EQUAL)]
    with pytest.raises(DuplicateLabel):  # the second row repeats an answer: the first is not written either
        store.add_labels([(p2, "right", "oracle", 0.0, 2), (p0, "right", "oracle", 0.0, 2)])
    with pytest.raises(StoreError, match="does not exist"):
        store.add_labels([(p2, "right", "oracle", 0.0, 2), (999, "right", "oracle", 0.0, 2)])
    assert store.count_labels() == 2 and [p.id for p in store.pending_pairs()] == [p2]
