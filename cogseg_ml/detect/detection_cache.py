"""Detections kept on disk, keyed by image, class list and detector: a re-run detects nothing
it has seen.

One SQLite file (WAL) beside the mask cache: ``masks.sqlite`` gets
``masks.detections.sqlite`` (see :func:`detections_file`). Table ``detections``: ``key``
(SHA-256 of the file's identity, its content digest, the class list and the detector's
identity, see :func:`detection_key`) to the detections as JSON. No pickle. A process killed
mid-write leaves the last committed state; each process and thread opens its own connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cogseg_ml.detect.detections import Detection
from cogseg_ml.errors import CacheError

__all__ = ["DetectionCache", "detection_key", "detections_file"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS detections (
    key TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    detector TEXT NOT NULL,
    classes TEXT NOT NULL,
    detections TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def detections_file(mask_cache_file: str | Path) -> Path:
    """Where the detections of a mask cache file go: ``<stem>.detections.sqlite`` beside it."""
    p = Path(mask_cache_file)
    return p.with_name(f"{p.stem}.detections.sqlite")


def detection_key(file_identity: str, digest: str, classes: Sequence[str], detector: str) -> str:
    """The key of one image's detections: the file, its content, the classes and detector."""
    text = json.dumps([file_identity, digest, list(classes), detector])
    return hashlib.sha256(text.encode()).hexdigest()


class DetectionCache:
    """Stored detections on one SQLite file.

    Raises:
        CacheError: the file cannot be opened or written (the message says where and why).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"DetectionCache({str(self.path)!r})"

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.path = Path(str(state["path"]))
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            new = not self.path.exists()
            conn = sqlite3.connect(self.path, timeout=30.0)
            if new:
                os.chmod(self.path, 0o600)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"the detection cache {self.path} cannot be used "
                             f"({type(exc).__name__}: {exc}); check the folder's permissions "
                             "and free space, or pass another cache") from None
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def get(self, key: str) -> list[Detection] | None:
        """The stored detections under ``key`` (``None`` when there are none)."""
        try:
            row = self._conn().execute("SELECT detections FROM detections WHERE key = ?",
                                       (key,)).fetchone()
        except sqlite3.Error as exc:
            raise CacheError(f"the detection cache {self.path} cannot be read: {exc}") from None
        if row is None:
            return None
        try:
            return [Detection.from_json(d) for d in json.loads(row[0])]
        except ValueError:
            return None  # a damaged row is a miss: detected again and overwritten

    def put_many(self, items: Iterable[tuple[str, str, str, Sequence[str],
                                             Sequence[Detection]]]) -> int:
        """Store ``(key, file, detector, classes, detections)`` rows in one transaction."""
        rows = [(key, file, detector, json.dumps(list(classes)),
                 json.dumps([d.as_json() for d in dets]), time.time())
                for key, file, detector, classes, dets in items]
        if not rows:
            return 0
        conn = self._conn()
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO detections VALUES (?, ?, ?, ?, ?, ?)",
                                 rows)
        except sqlite3.Error as exc:
            raise CacheError(f"the detection cache {self.path} cannot be written ({exc}); "
                             "check free space and permissions") from None
        return len(rows)

    def merge(self, source: str | Path) -> int:
        """Copy the rows of another detection cache file (e.g. a shard's) that this one lacks.

        Returns the number of rows added; rows under a key already here are kept as they are
        (the same key means the same image, classes and detector).
        """
        if not Path(source).is_file():
            raise CacheError(f"there is no detection cache at {source}")
        conn = self._conn()
        try:
            conn.execute("ATTACH DATABASE ? AS src", (str(source),))
            try:
                with conn:
                    cur = conn.execute("INSERT OR IGNORE INTO detections "
                                       "SELECT * FROM src.detections")
                return int(cur.rowcount)
            finally:
                conn.execute("DETACH DATABASE src")
        except sqlite3.Error as exc:
            raise CacheError(f"detections of {source} cannot be merged into {self.path}: "
                             f"{exc}") from None

    def clear(self) -> int:
        """Remove every stored detection; returns how many there were."""
        conn = self._conn()
        try:
            with conn:
                return int(conn.execute("DELETE FROM detections").rowcount)
        except sqlite3.Error as exc:
            raise CacheError(f"the detection cache {self.path} cannot be cleared: {exc}"
                             ) from None

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM detections").fetchone()[0])

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
