"""The segment service's jobs in SQLite: every accepted job survives a restart, even SIGKILL.

A job is written (``Queued``) before its POST is answered, with everything the model needs to
run it later: the file's identity, the prompt, and the SHA-256 of the image bytes (already in
the image store). No token is kept: a job runs without the caller. On start,
:meth:`JobStore.requeue_running` puts jobs a stopped process left ``Running`` back in the queue.

The file is owned by :class:`~cogseg_ml.cache.database.CacheDatabase` (one connection per
thread, WAL, bounded lock waits, storage errors as :class:`~cogseg_ml.errors.CacheError`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter

from cogseg_ml.api.wire_schema import JobStatus, SegmentFileRef, SegmentJob, SegmentResult
from cogseg_ml.cache.database import CacheDatabase
from cogseg_ml.errors import CacheError
from cogseg_ml.prompts import Box, Point, Prompt
from cogseg_ml.service.segment_wire import job_view

__all__ = ["FIRST_JOB_ID", "JobStore", "StoredJob"]

#: Segments as stored: their wire JSON (what a GET answers), written and read in one call.
_SEGMENTS = TypeAdapter(list[SegmentResult])

SCHEMA_VERSION = 1
#: Job ids start here (CDF's ids are large int64 numbers; a small one would look like a bug).
FIRST_JOB_ID = 1_000_000_001

#: ``service_meta`` first: the table that makes a file a jobs database (see
#: :func:`~cogseg_ml.cache.database.refuse_foreign`), there as soon as any other is.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS service_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    file_id INTEGER NOT NULL,
    file_external_id TEXT,
    file_version TEXT NOT NULL,
    prompt TEXT NOT NULL,
    digest TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_time INTEGER NOT NULL,
    start_time INTEGER,
    status_time INTEGER NOT NULL,
    segments TEXT,
    error_message TEXT,
    failed_item_message TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, job_id);
"""


def now_ms(clock: Callable[[], float] = time.time) -> int:
    """Milliseconds since the epoch (the wire's times)."""
    return int(clock() * 1000)


def prompt_json(prompt: Prompt) -> str:
    """A prompt as stored: ``{"points": [[x, y, label], ...], "box": [..] | null}``."""
    b = prompt.box
    return json.dumps({"points": [[p.x, p.y, p.label] for p in prompt.points],
                       "box": None if b is None else [b.x_min, b.y_min, b.x_max, b.y_max]})


def _prompt_from_json(text: str) -> Prompt:
    data = json.loads(text)
    box = Box(*data["box"]) if data["box"] is not None else None
    return Prompt(points=tuple(Point(x, y, label) for x, y, label in data["points"]), box=box)


@dataclass(frozen=True)
class StoredJob:
    """One job as stored (see the module docstring)."""

    job_id: int
    project: str
    file_id: int
    file_external_id: str | None
    file_version: str
    prompt: Prompt
    digest: str
    height: int
    width: int
    status: JobStatus
    created_time: int
    start_time: int | None
    status_time: int
    segments_json: str = "[]"
    error_message: str | None = None
    failed_item_message: str | None = None

    @functools.cached_property
    def segments(self) -> tuple[SegmentResult, ...]:
        """The result's segments (parsed from :attr:`segments_json` on first use)."""
        return tuple(_SEGMENTS.validate_json(self.segments_json))

    def view(self, *, created: bool) -> SegmentJob:
        """The wire view (POST when ``created``, else GET)."""
        return self._view(created, self.segments)

    def _view(self, created: bool, segments: Sequence[SegmentResult]) -> SegmentJob:
        ref = SegmentFileRef(file_id=self.file_id, file_external_id=self.file_external_id)
        return job_view(job_id=self.job_id, status=self.status, created_time=self.created_time,
                        start_time=self.start_time, status_time=self.status_time, ref=ref,
                        points=self.prompt.points, box=self.prompt.box,
                        segments=segments, error_message=self.error_message,
                        failed_item_message=self.failed_item_message, created=created)

    def retrieve_body(self) -> bytes:
        """The GET body, with the stored segments' JSON put in as stored (not parsed)."""
        body = self._view(False, ()).model_dump_json(by_alias=True, exclude_none=True)
        if self.status is JobStatus.COMPLETED and self.segments_json != "[]":
            empty = '"segments":[]'
            if body.count(empty) != 1:  # not the shape expected: build it the long way
                return self.view(created=False).model_dump_json(
                    by_alias=True, exclude_none=True).encode()
            body = body.replace(empty, f'"segments":{self.segments_json}')
        return body.encode()


_COLUMNS = ("job_id, project, file_id, file_external_id, file_version, prompt, digest, height, "
            "width, status, created_time, start_time, status_time, segments, error_message, "
            "failed_item_message")


def _row(r: Sequence[object]) -> StoredJob:
    return StoredJob(job_id=int(r[0]), project=str(r[1]), file_id=int(r[2]),  # type: ignore[call-overload]
                     file_external_id=None if r[3] is None else str(r[3]),
                     file_version=str(r[4]), prompt=_prompt_from_json(str(r[5])),
                     digest=str(r[6]), height=int(r[7]), width=int(r[8]),  # type: ignore[call-overload]
                     status=JobStatus(r[9]), created_time=int(r[10]),  # type: ignore[call-overload]
                     start_time=None if r[11] is None else int(r[11]),  # type: ignore[call-overload]
                     status_time=int(r[12]),  # type: ignore[call-overload]
                     segments_json=str(r[13]) if r[13] else "[]",
                     error_message=None if r[14] is None else str(r[14]),
                     failed_item_message=None if r[15] is None else str(r[15]))


class JobStore:
    """Segment jobs in one SQLite file.

    Args:
        path: the jobs database (created when missing).
        clock: seconds since the epoch, for the jobs' times.

    Raises:
        CacheError: ``path`` is another kind of file (not SQLite, or SQLite without our
            tables): refused before anything is written to it.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.db = CacheDatabase(self.path, prepare=self._prepare, name="jobs database",
                                kind_table="service_meta", elsewhere="give another --jobs-db")
        self.db.retry(self.db.connection)  # a file SQLite cannot use fails here, not later

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM service_meta WHERE key = 'schema'").fetchone()
        if row is None:
            conn.execute("INSERT OR IGNORE INTO service_meta VALUES ('schema', ?)",
                         (str(SCHEMA_VERSION),))
            conn.execute("INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs', ? WHERE NOT "
                         "EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'jobs')",
                         (FIRST_JOB_ID - 1,))
            conn.commit()
        elif row[0] != str(SCHEMA_VERSION):
            raise CacheError(f"{self.path} is a jobs database of schema {row[0]}; this "
                             f"version reads schema {SCHEMA_VERSION}: give another --jobs-db")

    def close(self) -> None:
        """Close this process's connections."""
        self.db.close()

    def add(self, *, project: str, file_id: int, file_external_id: str | None,
            file_version: str, prompt: Prompt, digest: str, height: int, width: int
            ) -> StoredJob:
        """Store a new ``Queued`` job (committed when this returns) and return it."""
        t = now_ms(self.clock)

        def insert(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "INSERT INTO jobs (project, file_id, file_external_id, file_version, prompt, "
                "digest, height, width, status, created_time, status_time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (project, file_id, file_external_id, file_version, prompt_json(prompt), digest,
                 height, width, JobStatus.QUEUED.value, t, t))
            return int(cur.lastrowid or 0)

        job_id = self.db.write(insert)
        return StoredJob(job_id=job_id, project=project, file_id=file_id,
                         file_external_id=file_external_id, file_version=file_version,
                         prompt=prompt, digest=digest, height=height, width=width,
                         status=JobStatus.QUEUED, created_time=t, start_time=None,
                         status_time=t)

    def get(self, job_id: int) -> StoredJob | None:
        """The job, or ``None`` when no such job was accepted."""
        row = self.db.retry(lambda: self.db.connection().execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone())
        return None if row is None else _row(row)

    def take_queued(self, limit: int) -> list[StoredJob]:
        """Up to ``limit`` queued jobs, oldest first, marked ``Running`` in one transaction."""
        t = now_ms(self.clock)

        def take(c: sqlite3.Connection) -> list[StoredJob]:
            rows = c.execute(f"SELECT {_COLUMNS} FROM jobs WHERE status = ? ORDER BY job_id "
                             "LIMIT ?", (JobStatus.QUEUED.value, limit)).fetchall()
            c.executemany("UPDATE jobs SET status = ?, start_time = ?, status_time = ? "
                          "WHERE job_id = ?",
                          [(JobStatus.RUNNING.value, t, t, r[0]) for r in rows])
            return [dataclasses.replace(_row(r), status=JobStatus.RUNNING, start_time=t,
                                        status_time=t) for r in rows]  # as now stored

        return self.db.write(take)

    def finish(self, results: Sequence[tuple[int, JobStatus, Sequence[SegmentResult],
                                             str | None, str | None]],
               jobs: Mapping[int, StoredJob] | None = None) -> list[StoredJob]:
        """Record terminal states: ``(job_id, status, segments, error, item_error)`` each;
        with the jobs as they were (``jobs``), return them as now stored."""
        t = now_ms(self.clock)
        rows = [(status.value, t, _SEGMENTS.dump_json(list(segs), by_alias=True,
                                                      exclude_none=True).decode(),
                 err, item_err, job_id) for job_id, status, segs, err, item_err in results]
        self.db.write(lambda c: c.executemany(
            "UPDATE jobs SET status = ?, status_time = ?, segments = ?, error_message = ?, "
            "failed_item_message = ? WHERE job_id = ?", rows))
        if jobs is None:
            return []
        return [dataclasses.replace(jobs[job_id], status=JobStatus(status), status_time=t,
                                    segments_json=segs, error_message=err,
                                    failed_item_message=item_err)
                for status, t, segs, err, item_err, job_id in rows]

    def requeue_running(self) -> int:
        """Put jobs left ``Running`` by a stopped process back in the queue; how many."""
        def run(c: sqlite3.Connection) -> int:
            return c.execute("UPDATE jobs SET status = ?, start_time = NULL WHERE status = ?",
                             (JobStatus.QUEUED.value, JobStatus.RUNNING.value)).rowcount
        return int(self.db.write(run))

    def count(self) -> int:
        """How many jobs were accepted."""
        row = self.db.retry(lambda: self.db.connection().execute(
            "SELECT COUNT(*) FROM jobs").fetchone())
        return int(row[0])

    def ids(self) -> list[int]:
        """Every accepted job's id, oldest first."""
        rows = self.db.retry(lambda: self.db.connection().execute(
            "SELECT job_id FROM jobs ORDER BY job_id").fetchall())
        return [int(r[0]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs by status."""
        rows = self.db.retry(lambda: self.db.connection().execute(
            "SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        out = {s.value: 0 for s in JobStatus}
        out.update({str(s): int(n) for s, n in rows})
        return out
