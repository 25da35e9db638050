"""What a cache operation granted to waiting for another process's write lock, read from the
statements it ran (no clock): SQLite's busy timeout in force at each write transaction's
``BEGIN IMMEDIATE``, and the pauses its retry asked for between attempts."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from tenacity import Retrying

from cogseg_ml.cache import database
from cogseg_ml.cache.database import CacheDatabase

_BUSY = re.compile(r"PRAGMA busy_timeout\s*=\s*(\d+)", re.IGNORECASE)


@dataclass
class LockWaits:
    """The waits one thread's operations on a cache database were allowed."""

    grants_ms: list[int] = field(default_factory=list)  # per write attempt: SQLite's busy timeout
    pauses_s: list[float] = field(default_factory=list)  # the retry's sleeps between attempts

    @property
    def total_s(self) -> float:
        """Everything granted: the attempts' busy timeouts and the pauses together."""
        return sum(self.grants_ms) / 1000 + sum(self.pauses_s)


@contextmanager
def recorded_lock_waits(db: CacheDatabase, monkeypatch: pytest.MonkeyPatch
                        ) -> Iterator[LockWaits]:
    """Record, for this thread's connection to ``db``, the busy timeout each write transaction
    began with (the longest SQLite waits there for the lock) and the retry's pauses (still
    slept: the operation runs as it would)."""
    waits = LockWaits()
    conn = db.connection()
    busy_ms = [int(conn.execute("PRAGMA busy_timeout").fetchone()[0])]

    def trace(sql: str) -> None:
        if m := _BUSY.search(sql):
            busy_ms[0] = int(m.group(1))
        elif sql.lstrip().upper().startswith("BEGIN IMMEDIATE"):
            waits.grants_ms.append(busy_ms[0])

    def pause(seconds: float) -> None:
        waits.pauses_s.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(database, "Retrying", functools.partial(Retrying, sleep=pause))
    conn.set_trace_callback(trace)
    try:
        yield waits
    finally:
        conn.set_trace_callback(None)
