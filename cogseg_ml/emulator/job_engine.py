"""Segmentation jobs in the emulator: Queued, then Running, then Completed or Failed.

Jobs wait in a FIFO queue for one of ``concurrency`` workers (asyncio tasks on the server's
loop). A worker marks the job Running (``startTime``), computes the masks in a thread, pads the
job to ``processing_time_s`` in all, and marks it Completed or Failed (``statusTime``). Results of
one (file, prompt) are computed once and reused: the engine is deterministic.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cogseg_ml.api.wire_schema import JobStatus, SegmentFileRef, SegmentJob, SegmentResult
from cogseg_ml.emulator.segmentation_engines import SegmentationEngine
from cogseg_ml.emulator.state import FileRecord, now_ms
from cogseg_ml.prompts import Box, Point
from cogseg_ml.service.segment_wire import job_view, mask_segment

__all__ = ["JobEngine", "JobRecord"]


@dataclass
class JobRecord:
    """One job's state.

    ``file`` is the file's record as it was when the job was created: a later content
    replacement swaps in a new record, so this job still runs on (and caches by) the old bytes.
    """

    job_id: int
    file: FileRecord
    points: tuple[Point, ...]
    box: Box | None
    created_time: int
    status: JobStatus = JobStatus.QUEUED
    start_time: int | None = None
    status_time: int = 0
    segments: list[SegmentResult] = field(default_factory=list)
    error_message: str | None = None
    failed_item_message: str | None = None
    fail_job: str | None = None
    fail_item: str | None = None
    _final_body: bytes | None = field(default=None, repr=False)

    def retrieve_body(self) -> bytes:
        """The GET response body; serialized once the job is terminal (it no longer changes)."""
        if self._final_body is not None:
            return self._final_body
        body = self.to_wire(created=False).model_dump_json(by_alias=True, exclude_none=True)
        data = body.encode()
        if self.status.is_terminal:
            self._final_body = data
        return data

    def item_ref(self) -> SegmentFileRef:
        """The file as echoed in responses (id plus external id when there is one)."""
        return SegmentFileRef(file_id=self.file.id, file_external_id=self.file.external_id)

    def to_wire(self, *, created: bool) -> SegmentJob:
        """The POST (``created=True``, prompt at top level) or GET view of the job."""
        return job_view(job_id=self.job_id, status=self.status, created_time=self.created_time,
                        start_time=self.start_time, status_time=self.status_time,
                        ref=self.item_ref(), points=self.points, box=self.box,
                        segments=self.segments, error_message=self.error_message,
                        failed_item_message=self.failed_item_message, created=created)


def _key(rec: JobRecord) -> tuple[object, ...]:
    return (rec.file.id, rec.file.last_updated_time, rec.points, rec.box)


class JobEngine:
    """A bounded worker pool for segmentation jobs (runs on the server's event loop)."""

    def __init__(self, engine: SegmentationEngine, *, processing_time_s: float = 0.05,
                 concurrency: int = 8, clock: Callable[[], float] = time.time,
                 result_cache_size: int = 4096) -> None:
        self.engine = engine
        self.processing_time_s = processing_time_s
        self.concurrency = concurrency
        self.clock = clock
        self.jobs: dict[int, JobRecord] = {}
        self._next_id = 7_000_000_001
        self._queue: asyncio.Queue[JobRecord] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emu-segment")
        self._results: OrderedDict[tuple[object, ...], list[SegmentResult]] = OrderedDict()
        self._result_cache_size = result_cache_size
        self._results_lock = threading.Lock()
        self.completed = 0
        self.failed = 0
        self.max_running = 0
        self._running = 0
        #: When set, at most this many jobs end; later ones stay ``Running`` until it is raised
        #: or cleared (a run caught mid-way, e.g. to test what a killed client kept).
        self.end_limit: int | None = None

    async def start(self) -> None:
        """Start the workers (call on the server's loop)."""
        self._queue = asyncio.Queue()
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        """Cancel the workers and release the compute threads."""
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, file: FileRecord, points: tuple[Point, ...], box: Box | None, *,
               fail_job: str | None = None, fail_item: str | None = None) -> JobRecord:
        """Queue a job and return its record (status Queued)."""
        assert self._queue is not None, "JobEngine.start() was not awaited"
        t = now_ms(self.clock)
        rec = JobRecord(job_id=self._next_id, file=file, points=points, box=box,
                        created_time=t, status_time=t, fail_job=fail_job, fail_item=fail_item)
        self._next_id += 1
        self.jobs[rec.job_id] = rec
        self._queue.put_nowait(rec)
        return rec

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return self._queue.qsize() if self._queue is not None else 0

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            rec = await self._queue.get()
            try:
                await self._run(rec)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine broke: the job fails, the worker lives on
                self._finish(rec, JobStatus.FAILED, error=f"internal error: {type(exc).__name__}")

    async def _run(self, rec: JobRecord) -> None:
        t0 = time.monotonic()
        rec.status = JobStatus.RUNNING
        rec.start_time = rec.status_time = now_ms(self.clock)
        self._running += 1
        self.max_running = max(self.max_running, self._running)
        try:
            segments: list[SegmentResult] | None = None
            error: str | None = None
            item_error: str | None = rec.fail_item
            if rec.fail_job is None and item_error is None:
                try:
                    segments = await asyncio.get_running_loop().run_in_executor(
                        self._pool, self._segments_for, rec)
                except (OSError, ValueError) as exc:  # undecodable image: the item fails
                    item_error = f"could not read image {rec.file.name!r}: {exc}"
            else:
                error = rec.fail_job
            remaining = self.processing_time_s - (time.monotonic() - t0)
            if remaining > 0:
                await asyncio.sleep(remaining)
            while self.end_limit is not None and self.completed + self.failed >= self.end_limit:
                await asyncio.sleep(0.01)  # held: the test or operator decides when it ends
        finally:
            self._running -= 1
        if segments is not None:
            rec.segments = segments
            self._finish(rec, JobStatus.COMPLETED)
        else:
            self._finish(rec, JobStatus.FAILED, error=error, item_error=item_error)

    def _finish(self, rec: JobRecord, status: JobStatus, *, error: str | None = None,
                item_error: str | None = None) -> None:
        rec.error_message = error
        rec.failed_item_message = item_error
        rec.status = status
        rec.status_time = now_ms(self.clock)
        if status is JobStatus.COMPLETED:
            self.completed += 1
        else:
            self.failed += 1

    def _segments_for(self, rec: JobRecord) -> list[SegmentResult]:
        key = _key(rec)
        with self._results_lock:
            cached = self._results.get(key)
            if cached is not None:
                self._results.move_to_end(key)
                return cached
        pixels = rec.file.pixels()
        # CDF's polygons cannot carry holes: the emulator answers with each part's outline.
        out = [mask_segment(seg.mask, seg.score, outline="filled")
               for seg in self.engine.segment(pixels, rec.points, rec.box)]
        out.sort(key=lambda s: -s.score)
        with self._results_lock:
            self._results[key] = out
            if len(self._results) > self._result_cache_size:
                self._results.popitem(last=False)
        return out
