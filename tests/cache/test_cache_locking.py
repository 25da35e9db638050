"""Reads never wait on another process's writer; touches are batched; waits are bounded."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cogseg_ml import CacheError
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import MaskCache
from tests.cache.lock_waits import recorded_lock_waits
from tests.cache.test_mask_cache import key, result


def _db(cache: MaskCache) -> sqlite3.Connection:
    """A second connection to the cache's file, as another process would have."""
    return sqlite3.connect(cache.path, isolation_level=None, timeout=10)


def _age_everything(cache: MaskCache) -> None:
    """Make every entry and image look last read long ago (instead of sleeping)."""
    db = _db(cache)
    db.execute("UPDATE entries SET last_access = 0")
    db.execute("UPDATE images SET last_access = 0")
    db.close()


def _last_access(cache: MaskCache, table: str = "entries") -> dict[str, float]:
    db = _db(cache)
    col = "key" if table == "entries" else "file_key"
    out = dict(db.execute(f"SELECT {col}, last_access FROM {table}").fetchall())
    db.close()
    return out


@pytest.fixture
def write_lock() -> Iterator[list[sqlite3.Connection]]:
    """Append a connection to hold the write lock; released at teardown."""
    held: list[sqlite3.Connection] = []
    yield held
    for db in held:
        db.rollback()
        db.close()


def _hold_write_lock(cache: MaskCache, held: list[sqlite3.Connection]) -> sqlite3.Connection:
    db = _db(cache)
    db.execute("BEGIN IMMEDIATE")
    held.append(db)
    return db


def test_reads_do_not_wait_for_another_writer(tmp_path: Path,
                                              write_lock: list[sqlite3.Connection]) -> None:
    cache = MaskCache(tmp_path, busy_timeout_s=0.3)
    store = ImageStore(cache)
    cache.put_many([(key(i), result(i)) for i in range(3)])
    store.put("file-a", b"image bytes")
    _age_everything(cache)  # every read below is one the old code would touch
    cache.touch_batch = 1  # every read also tries to write its touches (and must not wait)

    db = _hold_write_lock(cache, write_lock)
    assert cache.get(key(0)) is not None
    assert all(r is not None for r in cache.get_many([key(1), key(2)]))
    found = store.get_with_digest("file-a")
    assert found is not None and found[0] == b"image bytes"
    assert store.get("file-a") == b"image bytes"
    db.rollback()

    # The touches were kept while the lock was busy, and written by the next chance.
    cache.close()
    assert all(t > 0 for t in _last_access(cache).values())
    assert _last_access(cache, "images")["file-a"] > 0


def test_touches_ride_on_the_next_write(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    store = ImageStore(cache)
    cache.put_many([(key(i), result(i)) for i in range(3)])
    store.put("file-a", b"bytes")
    _age_everything(cache)
    cache.touch_flush_s = float("inf")  # no timed attempt: only writes and close() flush
    cache.get(key(0))
    cache.get_many([key(1)])
    store.get("file-a")
    cache.put(key(9), result(9))
    fps = {key(i).fingerprint(): i for i in range(3)}
    stamps = {fps[k]: t for k, t in _last_access(cache).items() if k in fps}
    assert stamps[0] > 0 and stamps[1] > 0 and stamps[2] == 0
    assert _last_access(cache, "images")["file-a"] > 0


def test_batched_touches_keep_lru_eviction_right(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path, max_entries=3)
    cache.touch_interval_s = 0.0
    cache.touch_flush_s = float("inf")
    cache.put_many([(key(i), result(i)) for i in range(3)])
    _age_everything(cache)
    cache.get(key(0))  # pending: written with the eviction's transaction, before it chooses
    cache.put(key(3), result(3))
    cache.evict()
    assert cache.contains(key(0)) and cache.contains(key(3)) and not cache.contains(key(1))


def _child_writes(cache: MaskCache) -> None:
    cache.put(key(50), result(50))
    cache.close()


def test_a_forked_child_does_not_write_the_parents_touches(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    cache.put(key(0), result(0))
    _age_everything(cache)
    cache.touch_flush_s = float("inf")
    cache.get(key(0))  # a pending touch in the parent
    proc = mp.get_context("fork").Process(target=_child_writes, args=(cache,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert _last_access(cache)[key(0).fingerprint()] == 0  # the child left it alone
    cache.close()
    assert _last_access(cache)[key(0).fingerprint()] > 0  # the parent wrote it, once


def test_a_held_write_lock_is_a_clear_bounded_error(tmp_path: Path,
                                                    write_lock: list[sqlite3.Connection],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    timeout = 1.0
    cache = MaskCache(tmp_path, busy_timeout_s=timeout)
    _hold_write_lock(cache, write_lock)
    with recorded_lock_waits(cache.db, monkeypatch) as waits, \
            pytest.raises(CacheError) as info:
        cache.put(key(0), result(0))
    assert "write lock" in str(info.value) and str(cache.path) in str(info.value)
    # One deadline for SQLite's busy wait and the retry together: the attempts' busy timeouts
    # and the pauses between them add up to the budget (the old code granted each attempt
    # all of it again, >= 2x); the first attempt had all of it for SQLite's own busy wait.
    assert waits.grants_ms[0] >= timeout * 1000 - 1, waits  # ms, as SQLite keeps it
    assert waits.total_s <= timeout, waits


def test_default_busy_timeout_is_sane(tmp_path: Path) -> None:
    assert MaskCache(tmp_path).busy_timeout_s <= 30


def test_wal_is_checkpointed_after_a_large_write(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    cache.put_many([(key(i), result(i, h=64, w=64, n=3)) for i in range(2000)])
    assert cache.stats().bytes > 8 * 1024**2  # a write far larger than the WAL should stay
    wal = Path(f"{cache.path}-wal")
    assert not wal.exists() or wal.stat().st_size < 1024**2
    assert cache.stats().entries == 2000 and cache.integrity_check()
    limit = cache.db.connection().execute("PRAGMA journal_size_limit").fetchone()[0]
    assert 0 < limit <= 64 * 1024**2
