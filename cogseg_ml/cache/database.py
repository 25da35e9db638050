"""The one owner of a cache's SQLite file: connections, lock retries, write transactions.

Every SQLite file cogseg keeps (the mask cache with its image index, the detection cache beside
it) is opened through a :class:`CacheDatabase`; nothing else connects to them. It owns:

- **Connections**: one per process and thread, opened on first use in WAL mode; a forked child
  never uses its parent's connection (nor its pending LRU touches).
- **One deadline per operation**: waits for other processes' locks (SQLite's busy timeout and
  our retries together) end ``busy_timeout_s`` after the operation starts; past it,
  :class:`~cogseg_ml.errors.CacheError` saying who holds the lock and what to do.
- **Write transactions** (``BEGIN IMMEDIATE``: the lock up front), carrying this process's
  pending LRU touches, so reads never wait for the write lock.
- **Storage failures** (a full disk, a read-only location, a damaged file) as one
  :class:`~cogseg_ml.errors.CacheError` each, saying what to do.
- **Files that are not ours**: an existing file of another kind (a text file, a user's SQLite,
  a jobs database given as a mask cache) is refused before anything is written to it, read
  only and left as it was (:func:`refuse_foreign`); each owner names its kind's table.
- **The WAL's size**: capped by ``journal_size_limit`` and checkpointed (without waiting) after
  large writes, so the ``-wal`` file does not keep its peak size.

The owner of the schema (the mask cache, the detection cache) passes a ``prepare`` function
that creates or checks its tables on each new connection.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, wait_random_exponential

from cogseg_ml.errors import CacheError

__all__ = ["CHECKPOINT_AFTER_BYTES", "JOURNAL_SIZE_LIMIT", "CacheDatabase", "check_sqlite_file",
           "is_busy", "open_read_only", "refuse_foreign"]

JOURNAL_SIZE_LIMIT = 64 * 1024**2
"""Bytes SQLite truncates the ``-wal`` file to when it restarts it."""
CHECKPOINT_AFTER_BYTES = 8 * 1024**2
"""After this many bytes written by one process, checkpoint and truncate the WAL."""
_log = logging.getLogger("cogseg_ml.cache")
T = TypeVar("T")

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
_WHERE_TO = "choose a writable cache path (cogseg label --cache, or COGSEG_CACHE_DIR)"
_ELSEWHERE = "choose another cache path (--cache, or COGSEG_CACHE_DIR)"


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying another connection holds the lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    return isinstance(exc, sqlite3.OperationalError) and "is full" in str(exc).lower()


def _is_read_only(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _READ_ONLY_ERRNOS
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and (
        "readonly" in msg or "read-only" in msg or "unable to open" in msg)


def open_read_only(path: Path, timeout_s: float = 30.0) -> sqlite3.Connection:
    """A read-only connection to ``path``, to look at a file before anything writes to it (a
    merge's source, a file given as a cache): it never creates the file, never changes it,
    never takes the write lock, and creates nothing beside it. The caller closes it.

    A WAL file with no ``-wal`` beside it (closed by every process: all of it is in the file)
    is read as immutable, else SQLite would create its ``-wal`` and ``-shm`` beside it and,
    read-only, could not remove them. ``timeout_s``: the longest a read waits for a lock.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro"
    # (held here: this process has it open, so its -wal exists, and reading the header
    # outside SQLite would drop this process's locks on it, see held_here)
    if not held_here(path) and _wal_header(path) and not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, timeout=timeout_s)


#: This process's open connections per file, ``(pid, device, inode)``: see :class:`_Held`.
_HELD: Counter[tuple[int, int, int]] = Counter()
_HELD_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return os.getpid(), st.st_dev, st.st_ino


def _release(key: tuple[int, int, int]) -> None:
    with _HELD_LOCK:
        _HELD[key] -= 1
        if _HELD[key] <= 0:
            del _HELD[key]


def held_here(path: Path) -> bool:
    """Whether this process has a :class:`CacheDatabase` connection open on ``path``'s file.

    Such a file is never probed (:func:`refuse_foreign`): SQLite's locks are POSIX locks, held
    per process, and closing any descriptor of the file (a header read, a probe's connection)
    drops them all. A process without its locks looks gone to the others: the next to close
    checkpoints and deletes the ``-wal`` file under it, and what it writes then is lost.
    """
    try:
        key = _file_key(path)
    except OSError:
        return False
    with _HELD_LOCK:
        return _HELD[key] > 0


class _Held(sqlite3.Connection):
    """A connection counted in :data:`_HELD` from :meth:`hold` until closed or collected."""

    _released: Callable[[], object] | None = None

    def hold(self, path: Path) -> None:
        key = _file_key(path)
        with _HELD_LOCK:
            _HELD[key] += 1
        self._released = weakref.finalize(self, _release, key)

    def close(self) -> None:
        super().close()
        if self._released is not None:
            self._released()  # once: a finalizer runs at most once


def _wal_header(path: Path) -> bool:
    """Whether ``path`` starts with an SQLite header in WAL mode (its file format bytes)."""
    try:
        with path.open("rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\0" and header[18:20] == b"\x02\x02"


def refuse_foreign(path: Path, *, name: str, kind_table: str, elsewhere: str = _ELSEWHERE,
                   timeout_s: float = 30.0) -> None:
    """Refuse an existing file at ``path`` that is not a cogseg ``name``, before anything is
    written to it (even SQLite's switch to WAL changes a file's header).

    The file is one of ours when it is missing or empty, SQLite with no table yet, or SQLite
    holding ``kind_table``: the table every version of that kind has, which its schema creates
    first, so a file another process is creating passes too. Anything else (a text file, a
    user's SQLite, another kind of ours: a jobs database given as a mask cache) is refused. It
    is only read (:func:`open_read_only`): not a byte or timestamp of it changes, and nothing
    is created beside it. A file this process holds open (:func:`held_here`) is ours and is
    not read at all.

    Raises:
        CacheError: naming the path and what was found there, saying that nothing was written
            to it, then ``elsewhere`` (what to do instead).
        sqlite3.OperationalError: the file is locked past ``timeout_s``, or cannot be read
            (:meth:`CacheDatabase.retry` says which).
    """
    if held_here(path):
        return  # this process has it open as ours; probing it would disturb that
    try:
        if not stat.S_ISREG((st := path.stat()).st_mode) or st.st_size == 0:
            return  # a folder, say: opening it fails as it did
    except OSError:  # missing, or a parent is a file or unreadable: opening it says which
        return
    try:
        conn = open_read_only(path, timeout_s)
        try:
            tables = sorted(r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"))
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) or "malformed" in str(exc).lower():
            raise  # locked, unreadable or damaged: the caller's storage errors say which
        raise CacheError(f"{path} is not a cogseg {name} ({exc}); nothing was written to it: "
                         f"{elsewhere}", path=str(path)) from None
    if tables and kind_table not in tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise CacheError(f"{path} is an SQLite file of another kind, not a cogseg {name} "
                         f"(tables: {shown}); nothing was written to it: {elsewhere}",
                         path=str(path))


def check_sqlite_file(path: Path, role: str) -> None:
    """Refuse ``path`` unless SQLite's ``PRAGMA quick_check`` passes on it (read-only).

    Raises:
        CacheError: naming ``role`` and what SQLite found, and what to do.
    """
    try:
        conn = open_read_only(path)
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        raise CacheError(f"{role} ({path}) is damaged (SQLite: {problems[0]}); move it away",
                         path=str(path))


class CacheDatabase:
    """One SQLite file, shared by many processes and threads.

    Args:
        path: the SQLite file.
        prepare: run on each new connection (create or check the owner's tables); raise
            :class:`~cogseg_ml.errors.CacheError` to refuse the file.
        name: what the file is, for messages ("mask cache", "detection cache").
        kind_table: the table every file of this kind holds, created first by ``prepare``: an
            existing file without it (not SQLite, or SQLite with other tables) is refused
            before anything is written to it (:func:`refuse_foreign`).
        elsewhere: what a refused file's message tells the user to do instead.
        busy_timeout_s: the longest one operation may wait for other processes' locks.
        create: create the file when missing; with ``False`` a missing file is a
            :class:`~cogseg_ml.errors.CacheError` and nothing is created.
        touch_sql: per table, the ``UPDATE`` that records a read for LRU (parameters: the
            time, the key); tables absent here take no touches.

    Attributes:
        touch_batch: a read tries (without waiting) to write pending touches past this many.
        touch_flush_s: likewise once this long passed since this process last wrote them.
    """

    def __init__(self, path: Path, *, prepare: Callable[[sqlite3.Connection], None],
                 name: str, kind_table: str, elsewhere: str = _ELSEWHERE,
                 busy_timeout_s: float = 30.0, create: bool = True,
                 touch_sql: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.name = name
        self.kind_table = kind_table
        self.elsewhere = elsewhere
        self.busy_timeout_s = busy_timeout_s
        self.create = create
        self.touch_batch = 1024
        self.touch_flush_s = 60.0
        self._prepare = prepare
        self._touch_sql = dict(touch_sql or {})
        self._written_since_checkpoint = 0
        self._pid = -1
        self._check_fork()

    def __repr__(self) -> str:
        return f"CacheDatabase({str(self.path)!r}, name={self.name!r})"

    # --- connections -----------------------------------------------------------------------
    def _check_fork(self) -> None:
        """In a new process (or at construction), start with no connection and no touches."""
        if os.getpid() != self._pid:  # forked: never use the parent's connection or touches
            self._local = threading.local()
            self._touch_lock = threading.Lock()
            self._touches: dict[str, dict[str, float]] = {t: {} for t in self._touch_sql}
            self._last_flush = time.monotonic()
            self._opened: list[tuple[threading.Thread, sqlite3.Connection]] = []
            self._pid = os.getpid()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use; a forked child never uses its
        parent's)."""
        self._check_fork()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.retry(self._open)
            self._local.conn = conn
            with self._touch_lock:
                self._opened.append((threading.current_thread(), conn))
        return conn

    def _open(self) -> sqlite3.Connection:
        if not self.path.exists():
            if not self.create:
                raise CacheError(f"there is no {self.name} at {self.path}: check the path "
                                 "(nothing was created)", path=str(self.path))
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # Create owner-only before SQLite touches it (its -wal/-shm files copy the mode).
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
                os.close(fd)
            except OSError as exc:
                raise CacheError(
                    f"cannot create the {self.name} {self.path}: {exc.strerror or exc} "
                    f"({exc.filename or self.path.parent}); {_WHERE_TO}",
                    path=str(self.path)) from None
        else:  # an existing file: refused unless ours, before anything writes to it
            refuse_foreign(self.path, name=self.name, kind_table=self.kind_table,
                           elsewhere=self.elsewhere, timeout_s=self._time_left_s())
        conn = sqlite3.connect(self.path, timeout=self._time_left_s(), isolation_level=None,
                               check_same_thread=False, factory=_Held)
        try:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError:
                raise  # busy, read-only or full: retry() says which
            except sqlite3.DatabaseError as exc:  # replaced since it was checked
                raise CacheError(f"{self.path} is not a cogseg {self.name} ({exc}); nothing "
                                 f"was written to it: {self.elsewhere}",
                                 path=str(self.path)) from None
            if mode.lower() != "wal":
                _log.warning("SQLite refused WAL mode for %s (got %s)", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            self._prepare(conn)
            conn.hold(self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Write this process's pending touches, then close this thread's connection and those
        of threads that have ended (e.g. a finished download pool's).

        A running thread's connection stays open (it may be in use); it is closed by a later
        ``close`` once that thread has ended. Closing matters: CPython frees a SQLite
        connection only in a garbage collection (its statement cache refers back to it), and
        an open one keeps the ``-wal`` file and its pages until then. Touches that cannot be
        written within ``busy_timeout_s`` are dropped with a warning (they only order LRU).
        """
        self._check_fork()
        if self.pending_touches():
            try:
                self.write(lambda c: None)
            except (CacheError, sqlite3.Error) as exc:
                _log.warning("dropped pending LRU touches for %s: %s", self.path, exc)
        me = threading.current_thread()
        with self._touch_lock:
            done = [(t, c) for t, c in self._opened if t is me or not t.is_alive()]
            self._opened = [(t, c) for t, c in self._opened if t is not me and t.is_alive()]
        for _, conn in done:
            conn.close()
        self._local.conn = None

    # --- one deadline per operation ----------------------------------------------------------
    def _time_left_s(self) -> float:
        """What remains of the running operation's wait budget (all of it outside one)."""
        deadline: float | None = getattr(self._local, "deadline", None)
        return self.busy_timeout_s if deadline is None else max(0.0, deadline - time.monotonic())

    def _set_busy_timeout(self, seconds: float) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a read, or a whole transaction), retrying while the file is locked, all
        within ``busy_timeout_s``; storage failures (full disk, read-only, damaged) become
        :class:`CacheError`. Inside another operation it runs once: that one retries."""
        self._check_fork()
        local = self._local
        if getattr(local, "deadline", None) is not None:
            return fn()
        local.deadline = time.monotonic() + self.busy_timeout_s
        try:
            try:  # the common case pays for no retry machinery
                return fn()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
            return self._retry_until_deadline(fn)
        except (sqlite3.DatabaseError, OSError) as exc:
            err = self.storage_error(exc)
            if err is None:
                raise
            raise err from exc
        finally:
            local.deadline = None

    def _retry_until_deadline(self, fn: Callable[[], T]) -> T:
        backoff = wait_random_exponential(multiplier=0.01, max=1.0)
        try:
            for attempt in Retrying(retry=retry_if_exception(is_busy), reraise=True,
                                    stop=lambda _: self._time_left_s() <= 0.0,
                                    wait=lambda s: min(backoff(s), self._time_left_s())):
                with attempt:
                    self._set_busy_timeout(self._time_left_s())  # SQLite waits what is left
                    return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            raise CacheError(
                f"the {self.name} {self.path} stayed locked for {self.busy_timeout_s:g} s: "
                "another process holds its write lock (a long write, or a stopped or hung "
                "process). Retry later, end that process, or give this cache a larger "
                "busy_timeout_s or another path.", path=str(self.path)) from exc
        finally:
            self._set_busy_timeout(self.busy_timeout_s)
        raise AssertionError("unreachable")

    def storage_error(self, exc: BaseException, where: Path | None = None
                      ) -> CacheError | None:
        """The :class:`CacheError` a storage failure (``OSError`` or SQLite's) means: a full
        disk, a read-only location or a damaged file (``None`` for anything else). ``where``:
        the file or folder that failed, if not the SQLite file (e.g. an image blob)."""
        place = where or self.path
        if _is_full(exc):
            return CacheError(
                f"disk is full: {place} could not be written ({exc}). Nothing of this write "
                f"was stored and the {self.name} is intact (its last committed state): free "
                "some space or move the cache (cogseg label --cache, or COGSEG_CACHE_DIR), then "
                "run again.", path=str(self.path), disk_full=True)
        if _is_read_only(exc):
            return CacheError(
                f"the {self.name} at {place} cannot be written ({exc}): the location is "
                f"read-only or not yours; {_WHERE_TO}", path=str(self.path))
        if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc).lower():
            return CacheError(f"the {self.name} {self.path} is damaged ({exc}); move it away "
                              "or remove it, and run again (its contents are computed anew)",
                              path=str(self.path))
        return None

    # --- writes ------------------------------------------------------------------------------
    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction (with this process's pending LRU touches),
        retried as :meth:`retry` does; a failure leaves the last committed state."""
        return self.retry(lambda: self._transaction(self.connection(), fn))

    def _transaction(self, conn: sqlite3.Connection,
                     fn: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        touches = self._take_touches()
        try:
            for table, pending in touches.items():
                if pending:
                    conn.executemany(self._touch_sql[table],
                                     [(t, k) for k, t in pending.items()])
            out = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:  # SQLite may have rolled back itself (disk full)
                    _log.debug("rollback of %s: %s", self.path, exc)
            self._keep_touches(touches)
            raise
        self._last_flush = time.monotonic()
        return out

    def wrote(self, nbytes: int) -> None:
        """Count bytes written; checkpoint once they add up to ``CHECKPOINT_AFTER_BYTES``."""
        self._written_since_checkpoint += nbytes
        if self._written_since_checkpoint >= CHECKPOINT_AFTER_BYTES:
            self._written_since_checkpoint = 0
            self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the WAL into the file and truncate it, if that needs no waiting."""
        conn = self.connection()
        self._set_busy_timeout(0.0)
        try:
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and log == done:  # all copied: truncate unless a reader still uses it
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
        finally:
            self._set_busy_timeout(self.busy_timeout_s)

    # --- LRU touches -------------------------------------------------------------------------
    def touch(self, table: str, keys: Iterable[str], now: float) -> None:
        """Note reads of ``keys`` of ``table`` for LRU: written with this process's next write
        transaction, or (never waiting) once ``touch_batch`` are pending or ``touch_flush_s``
        passed."""
        self._check_fork()
        with self._touch_lock:
            pending = self._touches[table]
            for k in keys:
                pending[k] = now
            n = sum(len(p) for p in self._touches.values())
        if n >= self.touch_batch or time.monotonic() - self._last_flush >= self.touch_flush_s:
            self._try_flush_touches()

    def pending_touches(self) -> int:
        """How many reads this process noted and has not written yet."""
        self._check_fork()
        with self._touch_lock:
            return sum(len(p) for p in self._touches.values())

    def _take_touches(self) -> dict[str, dict[str, float]]:
        with self._touch_lock:
            taken, self._touches = self._touches, {t: {} for t in self._touch_sql}
        return taken

    def _keep_touches(self, touches: dict[str, dict[str, float]]) -> None:
        with self._touch_lock:
            for table, pending in touches.items():
                mine = self._touches[table]
                for k, t in pending.items():
                    mine[k] = max(t, mine.get(k, t))

    def _try_flush_touches(self) -> bool:
        """Write pending touches if the write lock is free right now; whether they were."""
        conn = self.connection()
        self._set_busy_timeout(0.0)
        try:
            self._transaction(conn, lambda c: None)
            return True
        except sqlite3.Error as exc:  # busy (or read-only): the touches stay for the next write
            _log.debug("LRU touches for %s deferred: %s", self.path, exc)
            return False
        finally:
            self._set_busy_timeout(self.busy_timeout_s)

    # --- other files -------------------------------------------------------------------------
    def attach(self, other: Path, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run the write ``fn`` with the SQLite file ``other`` attached as ``other`` (to copy
        rows across files in one transaction); detached afterwards, also on failure."""
        conn = self.connection()
        self.retry(lambda: conn.execute("ATTACH DATABASE ? AS other", (str(other),)))
        try:
            return self.write(fn)
        finally:
            conn.execute("DETACH DATABASE other")

    def same_file(self, other: Path) -> bool:
        """Whether ``other`` is this SQLite file (any spelling, hard links too)."""
        try:
            if os.path.samefile(self.path, other):
                return True
        except OSError:  # one of them does not exist (yet)
            pass
        return self.path.resolve() == other.resolve()
