"""Many segmentation jobs at once: a feeder, job creation, and one polling loop for all.

Flow for ``segment_many``:

1. The feeder reads requests in chunks, checks their files with one ``/files/byids`` call per
   chunk (unknown or unsegmentable files become error outcomes, no job is created), and waits
   for a free slot before creating each job (at most ``concurrency`` slots).
2. Each created job goes into one heap, ordered by its next poll time. A single loop sleeps until
   the earliest is due and sends the due polls (each a request, none a sleeping task).
   :class:`~cogseg_ml.api.job_polling.PollSchedule` picks the times.
3. A terminal job becomes an outcome; its slot is freed when the caller has taken it, so a slow
   consumer slows submission instead of piling up results in memory.

Every failure of a job (a :class:`~cogseg_ml.errors.CogsegError`, malformed answers included)
is an outcome. A job not ``Completed`` or ``Failed`` within the timeout from its creation (the
caller's, else ``RetryConfig.job_timeout_s``, 900 s by default; read from the session's clock)
ends with :class:`~cogseg_ml.errors.JobTimeoutError`.

With ``until_storm`` (the fallback backend's way), a storm of the Vision API or of CDF (see
:mod:`cogseg_ml.api.health`) ends every job still queued or in flight at once with
:func:`~cogseg_ml.api.health.storm_error`: their requests are cancelled, their retries not
waited out, and the requests not yet started are not sent.

Once the client has recognized CDF as unreachable (or the credentials as refused, or the
Vision API as retired), every job still queued or in flight fails at once with that error, so
a stream of thousands ends in moments instead of each job spending its own retry budget.

Anything else raised by a background task is a bug, not a job's fate: it ends the
stream at once, raised to the consumer with its traceback, rather than leaving it waiting.
Requests that are not a list or tuple are read in a worker thread, so a generator may block
(download, read files, call a sync client) without stalling the loop. When reading them fails
(the generator raises, even KeyboardInterrupt), no new job starts, the jobs already started are
still delivered, and then the stream raises that exception: nothing finished is lost.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cogseg_ml.api.file_checks import check_segmentable
from cogseg_ml.api.job_polling import checked_timeout
from cogseg_ml.api.results import (
    JobOutcome,
    RequestLike,
    SegmentRequest,
    result_from_job,
    to_request,
)
from cogseg_ml.api.wire_schema import SegmentJob
from cogseg_ml.errors import (
    ApiRetiredError,
    ApiUnavailableError,
    CdfUnreachableError,
    CogsegError,
    JobTimeoutError,
    NotFoundError,
    ValidationError,
)

if TYPE_CHECKING:
    from cogseg_ml.api.health import HealthKey, SessionHealth
    from cogseg_ml.api.job_polling import PollSchedule
    from cogseg_ml.api.wire_schema import FileMetadata
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.prompts import FileRef as _FileRef
    from cogseg_ml.prompts import Prompt as _Prompt


class JobClient(Protocol):
    """What the pipeline needs of a client (the
    :class:`~cogseg_ml.api.async_client.AsyncSegmentationClient` is one). Named here so the
    pipeline sits below the client that calls it and never imports it."""

    config: CdfConfig
    health: SessionHealth
    schedule: PollSchedule

    @property
    def storm_keys(self) -> tuple[HealthKey, HealthKey]:
        """The services a segmentation job needs."""

    async def create_job(self, files: _FileRef, *, prompt: _Prompt | None = None
                         ) -> SegmentJob:
        """Start one job."""

    async def retrieve_job(self, job_id: int) -> SegmentJob:
        """One job's status and result."""

    async def metadata_map(self, refs: Sequence[_FileRef]) -> dict[_FileRef, FileMetadata]:
        """Metadata of the known files among ``refs``."""

__all__ = ["JobClient", "run_jobs"]

FEED_CHUNK = 256
POLL_ERRORS_TOLERATED = 3


@dataclass(order=True)
class _Tracked:
    due: float
    seq: int
    job_id: int = field(compare=False)
    request: SegmentRequest = field(compare=False)
    started: float = field(compare=False)  # the session clock's time of the job's creation
    key: int = field(default=0, compare=False)
    polls: int = field(default=0, compare=False)
    errors: int = field(default=0, compare=False)


@dataclass
class _Active:
    """A job not yet delivered: its request, its id once created, the task working on it."""

    request: SegmentRequest
    job_id: int | None = None
    task: asyncio.Task[Any] | None = None


@dataclass
class _FeedDone:
    """The feeder stopped: ``total`` outcomes are owed; ``error`` if reading requests failed."""

    total: int
    error: BaseException | None = None


@dataclass
class _Crashed:
    """A background task raised something that is not a job's failure (a bug)."""

    exc: BaseException


async def run_jobs(client: JobClient, requests: Iterable[RequestLike], *,
                   concurrency: int = 32, timeout: float | None = None,
                   check_files: bool = True, until_storm: bool = False
                   ) -> AsyncIterator[JobOutcome]:
    """Async generator behind ``segment_many`` (see the module docstring).

    ``timeout``: seconds from a job's creation; ``None``: ``RetryConfig.job_timeout_s``.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValidationError(f"concurrency must be a positive integer, got {concurrency!r}")
    timeout = checked_timeout(timeout)
    limit = "the timeout given"  # what a JobTimeoutError names as the limit
    if timeout is None:
        timeout = client.config.retry.job_timeout_s
        limit = "RetryConfig.job_timeout_s"
    clock = client.health.clock
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(concurrency)
    results: asyncio.Queue[tuple[JobOutcome, bool] | _FeedDone | _Crashed] = asyncio.Queue()
    heap: list[_Tracked] = []
    wake = asyncio.Event()
    seq = itertools.count()
    keys = itertools.count()
    tasks: set[asyncio.Task[Any]] = set()
    active: dict[int, _Active] = {}  # with until_storm: the jobs a storm hands over
    stormed: list[ApiUnavailableError] = []
    checking: list[asyncio.Future[Any]] = []  # the feeder's file check in flight, if any
    closed = False

    def spawn(coro: Any) -> None:
        t = asyncio.create_task(guarded(coro))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        # A task cancelled before its first step never starts ``coro``: close it, or Python
        # warns that it was never awaited (closing a finished coroutine does nothing).
        t.add_done_callback(lambda _: coro.close())

    async def guarded(coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: end the stream with it, never hang
            results.put_nowait(_Crashed(exc))

    def finish(outcome: JobOutcome, held: bool = True, key: int | None = None) -> None:
        if key is not None:
            active.pop(key, None)
        results.put_nowait((outcome, held))

    def hand_over(error: ApiUnavailableError) -> None:
        """The storm: every job not yet delivered ends now with ``error`` (on the loop)."""
        if closed or stormed:
            return
        stormed.append(error)
        me = asyncio.current_task()
        for a in active.values():
            if a.task is not None and a.task is not me:
                a.task.cancel()
            finish(JobOutcome(a.request, error=error, job_id=a.job_id))
        active.clear()
        heap.clear()
        for check in checking:
            check.cancel()
        wake.set()

    async def create(req: SegmentRequest) -> None:
        if stormed:  # not sent: the storm was recognized while it waited for its turn
            finish(JobOutcome(req, error=stormed[0]))
            return
        key = next(keys)
        if until_storm:
            active[key] = _Active(req, task=asyncio.current_task())
        try:
            job = await client.create_job(req.file, prompt=req.prompt)
        except CogsegError as exc:
            finish(JobOutcome(req, error=exc), key=key)
            return
        if job.status.is_terminal:
            settle(job, req, key)
            return
        if key in active:
            active[key].job_id, active[key].task = job.job_id, None
        heapq.heappush(heap, _Tracked(loop.time() + client.schedule.first_delay(), next(seq),
                                      job.job_id, req, clock(), key))
        wake.set()

    def settle(job: SegmentJob, req: SegmentRequest, key: int) -> None:
        client.schedule.observe((job.status_time - job.created_time) / 1000.0)
        try:
            outcome = JobOutcome(req, result=result_from_job(job, req), job_id=job.job_id)
        except CogsegError as exc:
            outcome = JobOutcome(req, error=exc, job_id=job.job_id)
        finish(outcome, key=key)

    async def poll(t: _Tracked) -> None:
        if stormed:  # spawned before the storm, started after: already handed over
            return
        a = active.get(t.key)
        if a is not None:
            a.task = asyncio.current_task()
        try:
            job = await client.retrieve_job(t.job_id)
        except CogsegError as exc:
            t.errors += 1
            # A recognized outage (or a retired API) is not a hiccup to poll through: the
            # job's outcome is due now.
            if (t.errors >= POLL_ERRORS_TOLERATED or not isinstance(exc, ApiUnavailableError)
                    or isinstance(exc, (CdfUnreachableError, ApiRetiredError))):
                finish(JobOutcome(t.request, error=exc, job_id=t.job_id), key=t.key)
                return
            reschedule(t)
            return
        t.polls += 1
        if job.status.is_terminal:
            settle(job, t.request, t.key)
            return
        if timeout is not None and clock() - t.started >= timeout:
            finish(JobOutcome(t.request, job_id=t.job_id, error=JobTimeoutError(
                f"job {t.job_id} for {t.request.file.describe()} still {job.status.value} "
                f"{timeout:g} s after its creation: over the job timeout ({limit})",
                job_id=t.job_id, last_status=job.status.value)), key=t.key)
            return
        reschedule(t)

    def reschedule(t: _Tracked) -> None:
        a = active.get(t.key)
        if a is not None:
            a.task = None
        delay = client.schedule.next_delay(t.polls)
        if timeout is not None:
            delay = min(delay, max(0.0, t.started + timeout - clock()))
        t.due = loop.time() + delay
        t.seq = next(seq)
        heapq.heappush(heap, t)
        wake.set()

    async def poll_loop() -> None:
        while True:
            if not heap:
                await wake.wait()
                wake.clear()
                continue
            wait_s = heap[0].due - loop.time()
            if wait_s > 0:
                # Not asyncio.wait_for: on Python 3.10/3.11 a cancellation that meets its timeout
                # is swallowed, and this loop would then wait forever on a closed pipeline.
                waiter = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait({waiter}, timeout=wait_s)
                finally:
                    waiter.cancel()
                wake.clear()
                continue
            now = loop.time()
            while heap and heap[0].due <= now:
                spawn(poll(heapq.heappop(heap)))

    async def feed() -> None:
        promised = 0  # outcomes this feeder has committed to: each one will be delivered

        def reject(outcome: JobOutcome, _held: bool = False) -> None:
            nonlocal promised
            promised += 1
            finish(outcome, held=False)

        it = iter(requests)
        in_memory = isinstance(requests, (list, tuple))
        read_error: BaseException | None = None
        try:
            while read_error is None:
                if in_memory:
                    chunk, read_error, ended = _take(it, FEED_CHUNK)
                else:
                    chunk, read_error, ended = await asyncio.to_thread(_take, it, FEED_CHUNK)
                valid: list[SegmentRequest] = []
                for raw in chunk:
                    try:
                        valid.append(to_request(raw))
                    except CogsegError as exc:
                        req = raw if isinstance(raw, SegmentRequest) else _placeholder(raw)
                        reject(JobOutcome(req, error=exc))
                if check_files and valid and not stormed:
                    check = asyncio.ensure_future(_checked(client, valid, reject))
                    checking.append(check)
                    try:
                        await asyncio.wait({check})  # a storm cancels the check, not the feeder
                    finally:
                        checking.remove(check)
                        check.cancel()  # when the feeder itself is cancelled
                    if not check.cancelled():
                        valid = check.result()
                if stormed:
                    for req in valid:
                        reject(JobOutcome(req, error=stormed[0]))
                    valid = []
                for req in valid:
                    await slots.acquire()
                    promised += 1
                    spawn(create(req))
                if ended:
                    break
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # e.g. the file check itself broke: a bug
            read_error = exc
        # When reading the requests failed, what was read is delivered first, then the cause.
        results.put_nowait(_FeedDone(promised, read_error))

    stop_listening: Any = None
    if until_storm:
        def heard(error: ApiUnavailableError) -> None:  # from the thread that recorded the failure
            loop.call_soon_threadsafe(hand_over, error)

        stop_listening = client.health.listen(client.storm_keys, heard)
    spawn(feed())
    spawn(poll_loop())
    delivered = 0
    expected: int | None = None
    feed_error: BaseException | None = None
    try:
        while expected is None or delivered < expected:
            item = await results.get()
            if isinstance(item, _FeedDone):
                expected, feed_error = item.total, item.error
                continue
            if isinstance(item, _Crashed):
                raise item.exc
            outcome, held = item
            delivered += 1
            yield outcome
            if held:
                slots.release()
        if feed_error is not None:  # the jobs already running were delivered; now the cause
            raise feed_error
    finally:
        closed = True
        if stop_listening is not None:
            stop_listening()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _take(it: Iterator[Any], n: int) -> tuple[list[Any], BaseException | None, bool]:
    """Up to ``n`` items, the exception that stopped the reading (if any), and whether the
    iterator is done; items read before an exception are kept."""
    out: list[Any] = []
    try:
        for _ in range(n):
            out.append(next(it))
    except StopIteration:
        return out, None, True
    except BaseException as exc:  # the caller's generator failed: keep what it gave
        return out, exc, True
    return out, None, False


def _placeholder(raw: Any) -> SegmentRequest:
    """A stand-in request for an outcome whose input could not be read at all."""
    from cogseg_ml.prompts import FileRef, Point, Prompt

    return SegmentRequest(FileRef(external_id="<unreadable request>"),
                          Prompt(points=(Point(0.5, 0.5),)), tag=raw)


async def _checked(client: JobClient, reqs: list[SegmentRequest],
                   finish: Any) -> list[SegmentRequest]:
    """Keep the requests whose files exist and can be segmented; report the others."""
    refs = list(dict.fromkeys(r.file for r in reqs))
    try:
        metas = await client.metadata_map(refs)
    except CogsegError as exc:
        for r in reqs:
            finish(JobOutcome(r, error=exc), False)
        return []
    ok: list[SegmentRequest] = []
    for r in reqs:
        meta = metas.get(r.file)
        if meta is None:
            finish(JobOutcome(r, error=NotFoundError(
                f"file {r.file.describe()} does not exist in project {client.config.project!r}",
                status_code=400, missing=[r.file.describe()])), False)
            continue
        try:
            check_segmentable(meta, r.file)
        except CogsegError as exc:
            finish(JobOutcome(r, error=exc), False)
            continue
        ok.append(r)
    return ok

