"""The one owner of a cache's SQLite file closes what it opened: this thread's connection and
those of threads that have ended (CPython frees a SQLite connection only in a garbage
collection, so one left to it keeps the ``-wal`` file, and the next command saw the cache
change under its feet), never a running thread's."""

from __future__ import annotations

import gc
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cogseg_ml.cache.mask_cache import MaskCache
from tests.cache.test_mask_cache import key, result


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _in_thread(fn: object) -> threading.Thread:
    t = threading.Thread(target=fn)  # type: ignore[arg-type]
    t.start()
    t.join(60)
    assert not t.is_alive()
    return t


def test_close_closes_the_connections_of_ended_threads(tmp_path: Path, no_gc: None) -> None:
    cache = MaskCache(tmp_path)
    _in_thread(lambda: cache.put(key(1), result(1)))  # a worker's own connection
    assert cache.get(key(1)) is not None
    wal = Path(f"{cache.path}-wal")
    assert wal.exists()
    cache.close()
    assert not wal.exists()  # the last connection closed: checkpointed, WAL removed


def test_a_running_threads_connection_stays_open_until_it_ends(tmp_path: Path,
                                                               no_gc: None) -> None:
    cache = MaskCache(tmp_path)
    opened, go_on = threading.Event(), threading.Event()
    seen: list[object] = []

    def worker() -> None:
        cache.put(key(2), result(2))
        opened.set()
        go_on.wait(60)
        try:  # its connection still works after another thread's close()
            seen.append(cache.db.connection().execute("SELECT COUNT(*) FROM entries")
                        .fetchone()[0])
        except sqlite3.Error as exc:
            seen.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    assert opened.wait(60)
    cache.close()
    go_on.set()
    t.join(60)
    assert seen == [1]
    assert Path(f"{cache.path}-wal").exists()  # the worker's connection was left to it
    cache.close()  # once it has ended, a close takes its connection too
    assert not Path(f"{cache.path}-wal").exists()
