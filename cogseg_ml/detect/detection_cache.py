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
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cogseg_ml.cache.database import CacheDatabase
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


def _prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)


def detections_file(mask_cache_file: str | Path) -> Path:
    """Where the detections of a mask cache file go: ``<stem>.detections.sqlite`` beside it."""
    p = Path(mask_cache_file)
    return p.with_name(f"{p.stem}.detections.sqlite")


def detection_key(file_identity: str, digest: str, classes: Sequence[str], detector: str) -> str:
    """The key of one image's detections: the file, its content, the classes and detector."""
    text = json.dumps([file_identity, digest, list(classes), detector])
    return hashlib.sha256(text.encode()).hexdigest()


class DetectionCache:
    """Stored detections on one SQLite file, opened through the cache's one owner of SQLite
    files (:class:`~cogseg_ml.cache.database.CacheDatabase`): each process and thread has its
    own connection, waits for other processes' locks end by one deadline, and a full disk, a
    read-only location or a damaged file is a :class:`~cogseg_ml.errors.CacheError` saying what
    to do.

    Args:
        path: the SQLite file (see :func:`detections_file`).
        busy_timeout_s: the longest one operation waits for other processes' locks.

    Raises:
        CacheError: the file cannot be opened or written, or an existing file there is not a
            detection cache (refused before anything is written to it); the message says where
            and why.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.db = CacheDatabase(self.path, prepare=_prepare, name="detection cache",
                                kind_table="detections",
                                busy_timeout_s=busy_timeout_s)

    def __repr__(self) -> str:
        return f"DetectionCache({str(self.path)!r})"

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "busy_timeout_s": self.db.busy_timeout_s}

    def __setstate__(self, state: dict[str, object]) -> None:
        timeout = state.get("busy_timeout_s", 30.0)
        self.__init__(Path(str(state["path"])),  # type: ignore[misc]
                      busy_timeout_s=float(timeout) if isinstance(timeout, (int, float)) else 30.0)

    def get(self, key: str) -> list[Detection] | None:
        """The stored detections under ``key`` (``None`` when there are none)."""
        row = self.db.retry(lambda: self.db.connection().execute(
            "SELECT detections FROM detections WHERE key = ?", (key,)).fetchone())
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
        self.db.write(lambda c: c.executemany(
            "INSERT OR REPLACE INTO detections VALUES (?, ?, ?, ?, ?, ?)", rows))
        return len(rows)

    def merge(self, source: str | Path) -> int:
        """Copy the rows of another detection cache file (e.g. a shard's) that this one lacks.

        Returns the number of rows added; rows under a key already here are kept as they are
        (the same key means the same image, classes and detector).
        """
        if not Path(source).is_file():
            raise CacheError(f"there is no detection cache at {source}")

        def run(c: sqlite3.Connection) -> int:
            return int(c.execute("INSERT OR IGNORE INTO detections "
                                 "SELECT * FROM other.detections").rowcount)

        try:
            return self.db.attach(Path(source), run)
        except sqlite3.Error as exc:
            raise CacheError(f"detections of {source} cannot be merged into {self.path}: "
                             f"{exc}") from None

    def clear(self) -> int:
        """Remove every stored detection; returns how many there were."""
        return int(self.db.write(lambda c: c.execute("DELETE FROM detections").rowcount))

    def __len__(self) -> int:
        return int(self.db.retry(lambda: self.db.connection().execute(
            "SELECT COUNT(*) FROM detections").fetchone()[0]))

    def close(self) -> None:
        """Close this thread's connection."""
        self.db.close()
