"""Segment jobs from accepted to answered: the one job engine of the service and the emulator.

A job is stored ``Queued`` in a :class:`~cogseg_ml.service.job_store.JobStore` (SQLite) before
its POST is answered. ``workers`` asyncio tasks on the app's loop each take up to
``batch_jobs`` queued jobs at once (marked ``Running`` in one transaction), hand them to the
:class:`Answerer` on a compute thread, and record each job ``Completed`` or ``Failed``.

The two users differ only in their answerer and pacing:

* ``cogseg serve``: one worker drains every waiting job into one model run (``batch_jobs``
  large), so jobs of all callers batch in the encoder and decoder;
* the emulator: ``concurrency`` workers take one job each and pad it to ``min_job_time_s``
  (CDF's latency), answering from synthetic ground truth, with its injected faults.

On start, jobs a stopped process left ``Running`` (SIGKILL included) go back in the queue, so
no accepted job is lost. :attr:`JobEngine.end_limit` holds jobs ``Running`` once that many
have ended (a run caught mid-way, for tests and operators).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from cogseg_ml.api.wire_schema import JobStatus, SegmentResult
from cogseg_ml.prompts import Prompt
from cogseg_ml.service.job_store import JobStore, StoredJob, now_ms

__all__ = ["Answerer", "JobEngine", "JobOutcome"]

_log = logging.getLogger("cogseg_ml.service")


@dataclass(frozen=True)
class JobOutcome:
    """How one job ended: ``Completed`` with its segments, or ``Failed`` with the job's
    ``error`` or its item's ``item_error`` (CDF's ``failedItems``)."""

    job_id: int
    status: JobStatus
    segments: Sequence[SegmentResult] = ()
    error: str | None = None
    item_error: str | None = None


class Answerer(Protocol):
    """What answers jobs: the local model (service), synthetic ground truth (emulator) or
    model replicas (Ray Serve).

    An answerer with a coroutine method ``answer_async(jobs)`` (same contract) is awaited on
    the app's loop instead (for answerers that only wait on others, e.g. replicas).
    """

    def answer(self, jobs: Sequence[StoredJob]) -> list[JobOutcome]:
        """One outcome per job (called on a compute thread, never on the event loop)."""
        ...


class _JobsView(Mapping[int, StoredJob]):
    """The accepted jobs by id, read from the store (for tests, stats and admin routes)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def __getitem__(self, job_id: int) -> StoredJob:
        job = self._store.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def __len__(self) -> int:
        return self._store.count()

    def __iter__(self) -> Iterator[int]:
        return iter(self._store.ids())


class JobEngine:
    """Stores, schedules and records segment jobs (see the module docstring).

    Args:
        store: the jobs.
        answerer: what answers them.
        workers: jobs taken at once (each worker takes a batch).
        batch_jobs: the most jobs one worker hands the answerer at once.
        min_job_time_s: a job ends no sooner than this after it started (the emulator's
            processing time; 0 for the service).
        threads: compute threads the answerer runs on.
        on_finished: called with each ended job's latency in seconds (metrics).
        body_cache_size: terminal jobs whose GET bodies are kept serialized.
    """

    def __init__(self, store: JobStore, answerer: Answerer, *, workers: int = 1,
                 batch_jobs: int = 512, min_job_time_s: float = 0.0, threads: int = 1,
                 on_finished: Callable[[float], None] = lambda s: None,
                 body_cache_size: int = 4096) -> None:
        self.store = store
        self.answerer = answerer
        self.workers = workers
        self.batch_jobs = batch_jobs
        self.min_job_time_s = min_job_time_s
        self.on_finished = on_finished
        self.jobs: Mapping[int, StoredJob] = _JobsView(store)
        #: When set, at most this many jobs end; later ones stay ``Running`` until it is
        #: raised or cleared.
        self.end_limit: int | None = None
        self.completed = 0
        self.failed = 0
        self.max_running = 0
        self._running = 0
        self._ending = 0  # jobs past the hold whose end is being recorded
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._lock = threading.Lock()  # a submit and its hook vs a take
        self._bodies: OrderedDict[int, bytes] = OrderedDict()
        self._body_cache_size = body_cache_size
        # This process's jobs as last written (the store stays the truth across processes;
        # one process serves a jobs file): polls read here, not SQLite.
        self._known: dict[int, StoredJob] = {}

    @property
    def alive(self) -> bool:
        """Whether the workers run."""
        return bool(self._tasks) and not all(t.done() for t in self._tasks)

    @property
    def ended(self) -> int:
        """Jobs this process recorded ``Completed`` or ``Failed``."""
        return self.completed + self.failed

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Requeue what a stopped process left ``Running``, then start the workers (call on
        the app's loop)."""
        self._known.clear()  # the store is the truth at start
        n = await asyncio.to_thread(self.store.requeue_running)
        if n:
            _log.warning("requeued %d job(s) a previous process left running", n)
        self._stopping = False
        self._wake = asyncio.Event()
        self._wake.set()
        self._pool = ThreadPoolExecutor(max_workers=self._threads,
                                        thread_name_prefix="cogseg-jobs")
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self, drain_s: float = 0.0) -> None:
        """Take no further job; give the jobs being answered up to ``drain_s`` to end, then
        stop (what is left ``Running`` is requeued by the next start)."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._tasks and drain_s > 0:
            await asyncio.wait(self._tasks, timeout=drain_s)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # --- jobs --------------------------------------------------------------------------------
    def _add(self, fields: dict[str, object],
             on_stored: Callable[[StoredJob], None] | None) -> StoredJob:
        with self._lock:
            job = self.store.add(**fields)  # type: ignore[arg-type]
            if on_stored is not None:
                on_stored(job)
            self._remember([job])  # under the lock: a take cannot come between
        return job

    def _remember(self, jobs: Sequence[StoredJob]) -> None:
        if len(self._known) > 100_000:
            self._known.clear()  # older jobs are read from the store again
        for job in jobs:
            self._known[job.job_id] = job

    async def submit(self, *, project: str, file_id: int, file_external_id: str | None,
                     file_version: str, prompt: Prompt, digest: str, height: int, width: int,
                     on_stored: Callable[[StoredJob], None] | None = None) -> StoredJob:
        """Store a ``Queued`` job (committed when this returns) and wake a worker.

        ``on_stored`` runs with the stored job before any worker can take it (the emulator
        ties its injected faults to the job there).
        """
        fields: dict[str, object] = dict(
            project=project, file_id=file_id, file_external_id=file_external_id,
            file_version=file_version, prompt=prompt, digest=digest, height=height,
            width=width)
        job = await asyncio.to_thread(self._add, fields, on_stored)
        if self._wake is not None:
            self._wake.set()
        return job

    async def get(self, job_id: int) -> StoredJob | None:
        """The job, or ``None`` when no such job was accepted."""
        known = self._known.get(job_id)
        if known is not None:
            return known
        return await asyncio.to_thread(self.store.get, job_id)

    def retrieve_body(self, job: StoredJob) -> bytes:
        """The GET body of ``job`` (kept once it is terminal: it no longer changes)."""
        body = self._bodies.get(job.job_id)
        if body is not None:
            return body
        body = job.retrieve_body()
        if job.status.is_terminal:
            self._bodies[job.job_id] = body
            if len(self._bodies) > self._body_cache_size:
                self._bodies.popitem(last=False)
        return body

    # --- workers -----------------------------------------------------------------------------
    def _take(self) -> list[StoredJob]:
        with self._lock:
            jobs = self.store.take_queued(self.batch_jobs)
            self._remember(jobs)
        return jobs

    async def _worker(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._wake.clear()  # before the take: a job stored after it sets it again
            jobs = await loop.run_in_executor(self._pool, self._take)
            if not jobs:
                await self._wake.wait()
                continue
            self._wake.set()  # more may wait: let the next worker look
            await self._run(jobs)

    async def _run(self, jobs: list[StoredJob]) -> None:
        t0 = time.monotonic()
        self._running += len(jobs)
        self.max_running = max(self.max_running, self._running)
        try:
            try:
                on_loop = getattr(self.answerer, "answer_async", None)
                if on_loop is not None:
                    outcomes = await on_loop(jobs)
                else:
                    outcomes = await asyncio.get_running_loop().run_in_executor(
                        self._pool, self.answerer.answer, jobs)
            except asyncio.CancelledError:
                raise
            except Exception:  # the answerer broke: the jobs fail, the worker lives on
                _log.exception("answering %d job(s) failed", len(jobs))
                outcomes = [JobOutcome(j.job_id, JobStatus.FAILED, error="internal error")
                            for j in jobs]
            remaining = self.min_job_time_s - (time.monotonic() - t0)
            if remaining > 0:
                await asyncio.sleep(remaining)
            while self.end_limit is not None and self.ended + self._ending >= self.end_limit:
                await asyncio.sleep(0.01)  # held: the test or operator decides when it ends
            self._ending += len(jobs)  # before any await: the next worker's check counts them
        finally:
            self._running -= len(jobs)
        try:
            await asyncio.to_thread(self._record, jobs, outcomes)
        finally:
            self._ending -= len(jobs)

    def _record(self, jobs: Sequence[StoredJob], outcomes: Sequence[JobOutcome]) -> None:
        self._remember(self.store.finish(
            [(o.job_id, o.status, o.segments, o.error, o.item_error) for o in outcomes],
            {j.job_id: j for j in jobs}))
        now = now_ms(self.store.clock)
        created = {j.job_id: j.created_time for j in jobs}
        for o in outcomes:
            if o.status is JobStatus.COMPLETED:
                self.completed += 1
            else:
                self.failed += 1
            self.on_finished(max(0.0, (now - created[o.job_id]) / 1000))
