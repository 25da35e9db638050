"""The detection cache lives on the same SQLite owner as the mask cache: a locked file is a
bounded, clear error, an unwritable place says what to do, a forked child opens its own
connection, and shards merge without duplicates."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sqlite3
from pathlib import Path

import pytest

from cogseg_ml.detect.detection_cache import DetectionCache, detection_key, detections_file
from cogseg_ml.detect.detections import Detection
from cogseg_ml.errors import CacheError
from tests.cache.lock_waits import recorded_lock_waits


def _dets(n: int) -> list[Detection]:
    return [Detection(box=(float(i), float(i), float(i + 5), float(i + 5)), score=0.5 + i / 100,
                      label=f"class{i}", class_score=0.4) for i in range(n)]


def _row(i: int) -> tuple[str, str, str, list[str], list[Detection]]:
    key = detection_key(f"file-{i}", f"digest-{i}", ["valve", "pipe"], "detector-x")
    return key, f"file-{i}", "detector-x", ["valve", "pipe"], _dets(i % 3 + 1)


def test_rows_come_back_as_they_were_stored(tmp_path: Path) -> None:
    cache = DetectionCache(detections_file(tmp_path / "masks.sqlite"))
    assert cache.put_many([_row(i) for i in range(5)]) == 5
    for i in range(5):
        assert cache.get(_row(i)[0]) == _row(i)[4]
    assert cache.get("absent") is None and len(cache) == 5


def test_a_held_write_lock_is_a_bounded_clear_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "masks.detections.sqlite"
    cache = DetectionCache(path, busy_timeout_s=0.5)
    cache.put_many([_row(0)])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with recorded_lock_waits(cache.db, monkeypatch) as waits, \
                pytest.raises(CacheError) as info:
            cache.put_many([_row(1)])
        # Ended by its own deadline (all its waits together: 0.5 s), not SQLite's 30 s default.
        assert waits.grants_ms and waits.total_s <= 0.5, waits
        assert "detection cache" in str(info.value) and "write lock" in str(info.value)
        assert cache.get(_row(0)[0]) == _row(0)[4]  # reads do not wait for the writer (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cache.put_many([_row(1)]) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_says_what_to_do(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CacheError, match="choose a writable cache path"):
            DetectionCache(folder / "sub" / "d.sqlite").put_many([_row(0)])
    finally:
        folder.chmod(0o700)


def test_a_file_that_is_not_sqlite_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(CacheError, match="not a cogseg detection cache"):
        len(DetectionCache(path))
    assert path.read_bytes() == b"not a database at all" * 100


def _child(cache: DetectionCache, out: mp.Queue) -> None:  # type: ignore[type-arg]
    cache.put_many([_row(7)])
    out.put(len(cache))


def test_a_forked_child_and_a_pickled_copy_open_their_own_connections(tmp_path: Path) -> None:
    cache = DetectionCache(tmp_path / "d.sqlite")
    cache.put_many([_row(0)])  # the parent holds an open connection now
    queue: mp.Queue = mp.get_context("fork").Queue()  # type: ignore[type-arg]
    proc = mp.get_context("fork").Process(target=_child, args=(cache, queue))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0 and queue.get(timeout=10) == 2
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.get(_row(7)[0]) == _row(7)[4] and len(cache) == 2


def test_shards_merge_without_duplicates(tmp_path: Path) -> None:
    target = DetectionCache(tmp_path / "t.sqlite")
    shard = DetectionCache(tmp_path / "s.sqlite")
    target.put_many([_row(0), _row(1)])
    shard.put_many([_row(1), _row(2), _row(3)])
    shard.close()
    assert target.merge(tmp_path / "s.sqlite") == 2
    assert len(target) == 4 and target.get(_row(3)[0]) == _row(3)[4]
    with pytest.raises(CacheError, match="no detection cache"):
        target.merge(tmp_path / "absent.sqlite")
