"""A persistent cache of segmentation results as COCO RLE, on one SQLite file (WAL).

Layout::

    <cache dir>/                  user cache dir by default (platformdirs), mode 0700
    ├── masks.sqlite              this cache (mode 0600); -wal and -shm beside it
    └── images/ab/abcdef...       the image store's blobs, named by content hash

Table ``entries``: ``key`` (SHA-256 of the canonical request, see
:mod:`cogseg_ml.cache.cache_keys`) → height, width, segments as JSON (score + RLE counts),
provenance (backend, model version, job id, time) and ``last_access`` for LRU eviction. No
pickle anywhere: plain columns and JSON. Table ``meta`` holds the schema version; a file of
another version is refused with :class:`~cogseg_ml.errors.CacheVersionError`.

Many processes (DataLoader workers, labelers) may share one file: each process (and thread)
opens its own connection, writers take the lock up front (``BEGIN IMMEDIATE``), and WAL keeps
readers and the writer from blocking each other. A process killed mid-write leaves the last
committed state (SQLite's atomic commit).

Reads never wait for the write lock. A read only notes, in this process's memory, the keys whose
``last_access`` is older than ``touch_interval_s``; those touches are written in a batch inside
the next write transaction this process makes anyway (a put, an eviction...), by
:meth:`MaskCache.close`, or by a read once ``touch_batch`` keys are pending or ``touch_flush_s``
passed, and then only if the lock is free at once (otherwise they wait for the next chance).
LRU order is therefore approximate: a read reaches the file late (a process that only reads
writes its touches at least every ``touch_flush_s`` while the lock is ever free), and the
pending touches of a process that dies unclosed are lost, so such entries look older than they
are. Eviction itself applies this process's pending touches before it chooses. After a fork the
child starts with no connection and no pending touches (the parent's are the parent's to write).

The file's connections, lock retries, write transactions and LRU touches belong to one owner,
a :class:`~cogseg_ml.cache.database.CacheDatabase` (``MaskCache.db``), which the image store and
the read-through store use too; the mask cache owns the schema and the entries.

Every operation's waits for other processes' locks, SQLite's busy timeout and the retry
together, end by one deadline ``busy_timeout_s`` after it starts; past it the operation raises
:class:`~cogseg_ml.errors.CacheError`. A location that cannot be written (read-only, not the
user's), a full disk and a damaged file are :class:`~cogseg_ml.errors.CacheError` too, each
saying what to do; a write that fails leaves the last committed state. The WAL is capped by
``journal_size_limit`` and checkpointed (without waiting) after large writes, so the ``-wal``
file does not keep its peak size.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogseg_ml.backends.base import MaskResult, ScoredMask
from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.database import CacheDatabase, is_busy, open_read_only, refuse_foreign
from cogseg_ml.errors import CacheError, CacheVersionError, ValidationError

__all__ = ["CachedResult", "CachedSegment", "CacheStats", "MaskCache",
           "cache_file", "check_cache_file", "default_cache_dir", "refuse_foreign_cache"]

SCHEMA_VERSION = 1
_log = logging.getLogger("cogseg_ml.cache")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    file_key TEXT NOT NULL,
    prompt TEXT NOT NULL,
    backend TEXT NOT NULL,
    model_version TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    segments TEXT NOT NULL,
    job_id INTEGER,
    created REAL NOT NULL,
    last_access REAL NOT NULL,
    nbytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_access);
CREATE INDEX IF NOT EXISTS entries_file ON entries(file_key);
CREATE TABLE IF NOT EXISTS images (
    file_key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    nbytes INTEGER NOT NULL,
    last_access REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_lru ON images(last_access);
"""


def default_cache_dir() -> Path:
    """The platform's user cache directory for cogseg_ml (``COGSEG_CACHE_DIR`` overrides)."""
    env = os.environ.get("COGSEG_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cogseg_ml", appauthor=False))


#: What the cache's file is called in messages, and the table every version of it holds.
CACHE_NAME, KIND_TABLE = "mask cache", "meta"


def cache_file(path: str | Path | None = None) -> Path:
    """The SQLite file a cache path names: the path itself when it ends in ``.sqlite``,
    ``.sqlite3`` or ``.db``, else ``masks.sqlite`` inside it (default: the user cache dir)."""
    p = Path(path) if path is not None else default_cache_dir()
    return p if p.suffix in (".sqlite", ".db", ".sqlite3") else p / "masks.sqlite"


def refuse_foreign_cache(path: str | Path | None) -> None:
    """Refuse, before anything is written, a mask cache path (as :class:`MaskCache` takes it)
    whose file exists and is not a cogseg mask cache; a missing or empty file passes.

    Raises:
        CacheError: as :func:`~cogseg_ml.cache.database.refuse_foreign` says; the file is
            only read.
    """
    refuse_foreign(cache_file(path), name=CACHE_NAME, kind_table=KIND_TABLE)


def check_cache_file(path: str | Path | None, *, role: str = "cache") -> Path:
    """The SQLite file of an existing, sound cogseg mask cache at ``path``, checked without
    writing anything to it: it exists, is SQLite, has our schema version and passes SQLite's
    ``PRAGMA quick_check``. Used before a merge touches anything.

    Raises:
        CacheError: naming ``role`` (e.g. "source") and what is wrong, and what to do.
    """
    db = cache_file(path)
    shown = f"{path}" + (f" ({db})" if path is not None and db != Path(path) else "")
    if not db.is_file():
        raise CacheError(f"{role} {shown}: there is no mask cache there; check the path",
                         path=str(db))
    try:
        conn = open_read_only(db)
    except sqlite3.Error as exc:
        raise CacheError(f"{role} {shown} cannot be opened ({exc})", path=str(db)) from None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            found = "no schema version" if row is None else f"schema version {row[0]}"
            raise CacheError(f"{role} {shown} is not a cogseg mask cache this version reads "
                             f"({found}, expected {SCHEMA_VERSION})", path=str(db))
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise CacheError(f"{role} {shown} is damaged (SQLite: {problems[0]}); move it "
                             "away, or label its shard again", path=str(db))
    except sqlite3.DatabaseError as exc:
        if is_busy(exc):
            raise CacheError(f"{role} {shown} is locked by another process; run again when "
                             "it is done", path=str(db)) from None
        raise CacheError(f"{role} {shown} is not a cogseg mask cache ({exc})",
                         path=str(db)) from None
    finally:
        conn.close()
    return db


#: The cache's segment and result are the backends' result types (one type from backend to
#: cache to Python API); the old names stay as aliases.
CachedSegment = ScoredMask
CachedResult = MaskResult


@dataclass(frozen=True)
class CacheStats:
    """What :meth:`MaskCache.stats` reports."""

    entries: int
    bytes: int
    file_bytes: int
    by_backend: dict[str, int]
    images: int
    image_bytes: int
    path: str


_TOUCH_SQL = {
    "entries": "UPDATE entries SET last_access = MAX(last_access, ?) WHERE key = ?",
    "images": "UPDATE images SET last_access = MAX(last_access, ?) WHERE file_key = ?",
}


def _segments_json(result: CachedResult) -> str:
    segs = []
    for s in result.segments:
        h, w = s.rle["size"]
        if (h, w) != (result.height, result.width):
            raise ValidationError(f"segment RLE size {h}x{w} does not match the result's "
                                  f"{result.height}x{result.width}")
        if not isinstance(s.rle["counts"], str):
            raise ValidationError("RLE counts must be a str (use mask_codec.encode)")
        score = float(s.score)
        if score != score:
            raise ValidationError("segment score is NaN")
        segs.append({"score": score, "counts": s.rle["counts"]})
    return json.dumps(segs, separators=(",", ":"))


class MaskCache:
    """Segmentation results keyed by :class:`CacheKey`, persisted in SQLite.

    Args:
        path: the SQLite file, or a directory to hold ``masks.sqlite``; default: the user
            cache directory.
        create: create the cache when there is none; with ``False`` a missing cache is a
            :class:`~cogseg_ml.errors.CacheError` and nothing is created (for inspection).
        max_bytes: evict least-recently-used entries when their stored size exceeds this.
        max_entries: likewise for the number of entries.
        busy_timeout_s: the longest one operation may wait for other processes' locks (all its
            waits and retries together); past it, :class:`~cogseg_ml.errors.CacheError`.

    Attributes:
        touch_interval_s: a read records an entry's access only when the stored one is older.
        touch_batch: a read tries (without waiting) to write pending touches past this many.
        touch_flush_s: likewise once this long passed since this process last wrote them.

    Raises:
        CacheError: the file cannot be created or opened, or an existing file there is not a
            mask cache (a text file, a user's SQLite, a jobs database...): refused before
            anything is written to it, and left as it was.
        CacheVersionError: a mask cache of another schema version.

    The object pickles as its settings: each process opens its own connection on first use.
    """

    def __init__(self, path: str | Path | None = None, *, max_bytes: int | None = None,
                 max_entries: int | None = None, busy_timeout_s: float = 30.0,
                 create: bool = True) -> None:
        self.path = cache_file(path)
        self.create = create
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.touch_interval_s = 30.0
        self.db = CacheDatabase(self.path, prepare=self._ensure_schema, name=CACHE_NAME,
                                kind_table=KIND_TABLE, busy_timeout_s=busy_timeout_s,
                                create=create, touch_sql=_TOUCH_SQL)
        """The SQLite file's owner (connections, retries, write transactions, LRU touches),
        shared with the image store and the read-through store."""
        self._puts_since_check = 0
        self.db.connection()  # create and validate now, so errors surface at construction

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "max_bytes": self.max_bytes, "max_entries": self.max_entries,
                "busy_timeout_s": self.busy_timeout_s, "create": self.create}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], max_bytes=state["max_bytes"],  # type: ignore[misc]
                      max_entries=state["max_entries"], busy_timeout_s=state["busy_timeout_s"],
                      create=state.get("create", True))

    def __repr__(self) -> str:
        return f"MaskCache(path={str(self.path)!r})"

    # The file's settings live on its owner; these keep them reachable from the cache.
    @property
    def busy_timeout_s(self) -> float:
        """The longest one operation waits for other processes' locks."""
        return self.db.busy_timeout_s

    @property
    def touch_batch(self) -> int:
        """A read tries (without waiting) to write pending LRU touches past this many."""
        return self.db.touch_batch

    @touch_batch.setter
    def touch_batch(self, value: int) -> None:
        self.db.touch_batch = value

    @property
    def touch_flush_s(self) -> float:
        """A read tries (without waiting) to write pending touches once this long passed."""
        return self.db.touch_flush_s

    @touch_flush_s.setter
    def touch_flush_s(self, value: float) -> None:
        self.db.touch_flush_s = value

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        row = None
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise
        if row is None:  # a new file: every statement is idempotent, so racing creators agree
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row[0] != str(SCHEMA_VERSION):
            raise CacheVersionError(
                f"the cache at {self.path} has schema version {row[0]}; this cogseg_ml reads "
                f"version {SCHEMA_VERSION}. Clear it (cogseg cache clear --path {self.path}) or "
                "use another path.", found=row[0], expected=SCHEMA_VERSION)

    def close(self) -> None:
        """Write this process's pending LRU touches, then close this thread's connection
        (see :meth:`CacheDatabase.close <cogseg_ml.cache.database.CacheDatabase.close>`)."""
        self.db.close()

    def __enter__(self) -> MaskCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------------
    def _row_to_result(self, row: sqlite3.Row | tuple[Any, ...]) -> CachedResult:
        h, w, segs, backend, model, job_id, created = row
        size = [int(h), int(w)]
        segments = tuple(CachedSegment(float(s["score"]), {"size": size, "counts": s["counts"]})
                         for s in json.loads(segs))
        return CachedResult(segments=segments, height=int(h), width=int(w), backend=backend,
                            model_version=model, job_id=job_id, created=created)

    _COLS = "height, width, segments, backend, model_version, job_id, created"

    def get(self, key: CacheKey) -> CachedResult | None:
        """The cached result for ``key``, or ``None``."""
        fp = key.fingerprint()
        row = self.db.retry(lambda: self.db.connection().execute(
            f"SELECT last_access, {self._COLS} FROM entries WHERE key = ?", (fp,)).fetchone())
        if row is None:
            return None
        now = time.time()
        if now - row[0] > self.touch_interval_s:
            self.db.touch("entries", (fp,), now)
        return self._row_to_result(row[1:])

    def get_many(self, keys: Sequence[CacheKey]) -> list[CachedResult | None]:
        """Results for many keys at once, in order (``None`` where missing)."""
        return self.get_by_fingerprints([k.fingerprint() for k in keys])

    def get_by_fingerprints(self, fps: Sequence[str]) -> list[CachedResult | None]:
        """Like :meth:`get_many`, for keys already reduced to their fingerprints."""
        found: dict[str, tuple[Any, ...]] = {}
        stale: list[str] = []
        now = time.time()

        def read() -> None:
            conn = self.db.connection()
            for i in range(0, len(fps), 500):
                chunk = fps[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                        f"SELECT key, last_access, {self._COLS} FROM entries "
                        f"WHERE key IN ({marks})", chunk):
                    found[row[0]] = row[2:]
                    if now - row[1] > self.touch_interval_s:
                        stale.append(row[0])

        self.db.retry(read)
        if stale:  # LRU bookkeeping: noted here, written later in a batch
            self.db.touch("entries", stale, now)
        return [self._row_to_result(found[f]) if f in found else None for f in fps]

    def contains(self, key: CacheKey) -> bool:
        """Whether ``key`` has a cached result."""
        fp = key.fingerprint()
        row = self.db.retry(lambda: self.db.connection().execute(
            "SELECT 1 FROM entries WHERE key = ?", (fp,)).fetchone())
        return row is not None

    def keys_present(self, keys: Sequence[CacheKey]) -> list[bool]:
        """For each key, whether it is cached (one query per 500 keys)."""
        fps = [k.fingerprint() for k in keys]
        have: set[str] = set()

        def read() -> None:
            conn = self.db.connection()
            for i in range(0, len(fps), 500):
                chunk = fps[i:i + 500]
                marks = ",".join("?" * len(chunk))
                have.update(r[0] for r in conn.execute(
                    f"SELECT key FROM entries WHERE key IN ({marks})", chunk))

        self.db.retry(read)
        return [f in have for f in fps]

    # --- writes --------------------------------------------------------------------------------
    def put(self, key: CacheKey, result: CachedResult) -> None:
        """Store (or replace) the result for ``key``."""
        self.put_many([(key, result)])

    def put_many(self, items: Iterable[tuple[CacheKey, CachedResult]]) -> int:
        """Store many results in one transaction; returns how many."""
        now = time.time()
        rows = []
        for key, result in items:
            if not isinstance(key, CacheKey) or not isinstance(result, CachedResult):
                raise ValidationError("put_many takes (CacheKey, CachedResult) pairs")
            segs = _segments_json(result)
            prompt = json.dumps(key.canonical()["prompt"], separators=(",", ":"))
            rows.append((key.fingerprint(), key.project, key.file_key, prompt, key.backend,
                         key.model_version, result.height, result.width, segs, result.job_id,
                         result.created, now, len(segs)))
        if not rows:
            return 0
        self.db.write(lambda c: c.executemany(
            "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows))
        self.db.wrote(sum(r[-1] for r in rows))
        self._puts_since_check += len(rows)
        if (self.max_bytes or self.max_entries) and self._puts_since_check >= 64:
            self._puts_since_check = 0
            self.evict()
        return len(rows)

    def delete(self, key: CacheKey) -> bool:
        """Remove one entry; whether it existed."""
        fp = key.fingerprint()
        n = self.db.write(lambda c: c.execute("DELETE FROM entries WHERE key = ?", (fp,)).rowcount)
        return bool(n)

    def clear(self) -> int:
        """Remove every entry; returns how many."""
        return int(self.db.write(lambda c: c.execute("DELETE FROM entries").rowcount))

    def evict(self) -> int:
        """Drop least-recently-used entries until within ``max_bytes``/``max_entries``."""
        def run(c: sqlite3.Connection) -> int:
            n, size = c.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM entries"
                                ).fetchone()
            removed = 0
            excess_n = max(0, n - self.max_entries) if self.max_entries else 0
            excess_b = max(0, size - self.max_bytes) if self.max_bytes else 0
            if not excess_n and not excess_b:
                return 0
            doomed: list[str] = []
            freed = 0
            for key, nbytes in c.execute("SELECT key, nbytes FROM entries ORDER BY last_access"):
                if len(doomed) >= excess_n and freed >= excess_b:
                    break
                doomed.append(key)
                freed += nbytes
            c.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in doomed])
            removed = len(doomed)
            return removed

        removed = self.db.write(run)
        if removed:
            _log.debug("evicted %d cache entries", removed)
        return removed

    # --- maintenance ---------------------------------------------------------------------------
    def stats(self) -> CacheStats:
        """Counts and sizes."""
        def read() -> CacheStats:
            c = self.db.connection()
            n, size = c.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM entries"
                                ).fetchone()
            by = dict(c.execute("SELECT backend, COUNT(*) FROM entries GROUP BY backend"))
            ni, isize = c.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM images"
                                  ).fetchone()
            files = [self.path, Path(f"{self.path}-wal")]
            fb = sum(p.stat().st_size for p in files if p.exists())
            return CacheStats(entries=n, bytes=size, file_bytes=fb, by_backend=by, images=ni,
                              image_bytes=isize, path=str(self.path))

        return self.db.retry(read)

    def iter_entries(self) -> Iterator[tuple[str, str, str, CachedResult]]:
        """Every entry as ``(file_key, prompt_json, key, result)``, in insertion order."""
        rows = self.db.retry(lambda: self.db.connection().execute(
            f"SELECT file_key, prompt, key, {self._COLS} FROM entries ORDER BY rowid"
        ).fetchall())
        for row in rows:
            yield row[0], row[1], row[2], self._row_to_result(row[3:])

    def vacuum(self) -> None:
        """Checkpoint the WAL and compact the file."""
        conn = self.db.connection()
        self.db.retry(lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        self.db.retry(lambda: conn.execute("VACUUM"))

    def integrity_check(self) -> bool:
        """SQLite's ``PRAGMA integrity_check`` passes."""
        row = self.db.retry(lambda: self.db.connection().execute(
            "PRAGMA integrity_check").fetchone())
        return bool(row and row[0] == "ok")

    def same_file(self, other: Path) -> bool:
        """Whether ``other`` is this cache's SQLite file (any spelling, hard links too)."""
        return self.db.same_file(other)

    def merge_entries(self, src: Path) -> int:
        """Copy the entries of the cache file ``src`` that this one lacks (one transaction);
        returns how many. Images travel separately (:func:`cogseg_ml.cache.merge.merge`)."""
        def run(c: sqlite3.Connection) -> int:
            before = c.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            c.execute("INSERT OR IGNORE INTO entries SELECT * FROM other.entries")
            return int(c.execute("SELECT COUNT(*) FROM entries").fetchone()[0] - before)

        added = self.db.attach(src, run)
        if added:
            self.db.checkpoint()
        return added
