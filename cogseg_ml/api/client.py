"""The CDF segmentation clients: :class:`SegmentationClient` (sync) and its async twin.

Both share request building and error mapping (:class:`~cogseg_ml.api.http_core.ClientCore`)
and add only I/O. ``segment_many`` runs many jobs at once through one polling loop
(:mod:`cogseg_ml.api.job_pipeline`); the sync client runs that loop on a private thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx
from tenacity import AsyncRetrying, Retrying

from cogseg_ml.api.auth import BearerAuth
from cogseg_ml.api.file_checks import check_segmentable
from cogseg_ml.api.http_core import Call, ClientCore, LimitedBody, limited_body, rebuilt
from cogseg_ml.api.job_polling import PollSchedule, WaitPlan
from cogseg_ml.api.results import JobOutcome, SegmentationResult, SegmentRequest
from cogseg_ml.api.retry_policy import retrying_kwargs
from cogseg_ml.api.wire_schema import (
    Annotation,
    AnnotationListResponse,
    DownloadLinkItem,
    FileMetadata,
    ItemsResponse,
    SegmentJob,
)
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import FileValidationError, NotFoundError, ValidationError
from cogseg_ml.prompts import Box, FileRef, Point, Prompt

__all__ = ["AsyncSegmentationClient", "SegmentationClient", "FileLike", "RequestLike"]

FileLike = FileRef | int | str | Mapping[str, Any]
RequestLike = SegmentRequest | tuple[Any, ...]

BYIDS_CHUNK = 1000
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024


def to_prompt(points: Iterable[Point | Sequence[float]] | None, box: Box | Sequence[float] | None,
              prompt: Prompt | None) -> Prompt:
    """One :class:`Prompt` from the ``points``/``box``/``prompt`` arguments (validated)."""
    if prompt is not None:
        if points is not None or box is not None:
            raise ValidationError("give either prompt=... or points/box, not both")
        if not isinstance(prompt, Prompt):
            raise ValidationError("prompt must be a Prompt")
        return prompt
    return Prompt.of(points, box)


def to_request(item: RequestLike) -> SegmentRequest:
    """Coerce ``SegmentRequest`` or ``(file, prompt)`` / ``(file, prompt, tag)`` tuples."""
    if isinstance(item, SegmentRequest):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[1], Prompt):
        return SegmentRequest(FileRef.parse(item[0]), item[1], item[2] if len(item) == 3 else None)
    raise ValidationError("requests must be SegmentRequest or (file, Prompt[, tag]) tuples, got "
                          f"{type(item).__name__}")


def _one_file(files: FileLike | Sequence[FileLike]) -> FileRef:
    if isinstance(files, (list, tuple)):
        if len(files) != 1:
            raise ValidationError(f"a segmentation job takes exactly one file (the API's items "
                                  f"holds 1), got {len(files)}")
        files = files[0]
    return FileRef.parse(files)  # type: ignore[arg-type]


def _match_metadata(refs: Sequence[FileRef], metas: Sequence[FileMetadata]
                    ) -> dict[FileRef, FileMetadata]:
    by_id = {m.id: m for m in metas}
    by_xid = {m.external_id: m for m in metas if m.external_id}
    by_inst = {(m.instance_id.space, m.instance_id.external_id): m for m in metas if m.instance_id}
    out: dict[FileRef, FileMetadata] = {}
    for r in refs:
        if r.id is not None:
            m = by_id.get(r.id)
        elif r.external_id is not None:
            m = by_xid.get(r.external_id)
        else:
            assert r.instance_id is not None
            m = by_inst.get((r.instance_id.space, r.instance_id.external_id))
        if m is not None:
            out[r] = m
    return out


def _unique(refs: Iterable[FileRef]) -> list[FileRef]:
    return list(dict.fromkeys(refs))


class SegmentationClient(ClientCore):
    """Synchronous client for CDF's beta vision segmentation and the Files API.

    Args:
        config: where and how to connect (:class:`~cogseg_ml.config.CdfConfig`).
        transport: an httpx transport to use instead of the network (tests, proxies).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, config: CdfConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(config)
        self._auth = BearerAuth(config.credentials, timeout_s=config.timeout_s,
                                verify=config.verify_tls)
        limits = httpx.Limits(max_connections=config.max_connections,
                              max_keepalive_connections=config.max_connections)
        self._http = httpx.Client(timeout=config.timeout_s, limits=limits, transport=transport,
                                  verify=config.verify_tls)
        self.schedule = PollSchedule(config.poll)
        self.requests_sent = 0

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()
        self._auth.close()

    # --- transport -----------------------------------------------------------------------------
    def _send(self, call: Call) -> httpx.Response:
        call = self.limit(call)
        try:
            for attempt in Retrying(**retrying_kwargs(self.config.retry, call.kind,
                                                      self.log_retry(call))):
                with attempt:
                    self.requests_sent += 1
                    req = self._http.build_request(
                        call.method, call.url, json=call.json, params=call.params,
                        headers=self.headers_for(call),
                        timeout=call.timeout_s or self.config.timeout_s)
                    streamed = self._http.send(
                        req, auth=self._auth if call.authenticated else None, stream=True)
                    try:
                        resp = rebuilt(streamed, limited_body(streamed.iter_bytes(), call))
                    finally:
                        streamed.close()
                    self.raise_for_retry(resp)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            raise self.final_error(exc, call) from None
        return resp

    # --- jobs ----------------------------------------------------------------------------------
    def create_job(self, files: FileLike | Sequence[FileLike],
                   points: Iterable[Point | Sequence[float]] | None = None,
                   box: Box | Sequence[float] | None = None, *,
                   prompt: Prompt | None = None) -> SegmentJob:
        """Start a segmentation job for one file; returns the job as created (``Queued``).

        Raises:
            PromptValidationError: bad prompts, before any request is sent.
            ApiError, ApiUnavailableError: the API refused or could not be reached.
        """
        call = self.segment_create_call(_one_file(files), to_prompt(points, box, prompt))
        return self.parse(self._send(call), SegmentJob, call)

    def retrieve_job(self, job_id: int) -> SegmentJob:
        """The job's current status (and result, once ``Completed``)."""
        call = self.segment_retrieve_call(job_id)
        return self.parse(self._send(call), SegmentJob, call)

    def wait(self, job: SegmentJob | int, timeout: float | None = None,
             request: SegmentRequest | None = None) -> SegmentationResult:
        """Poll until the job is terminal; returns its result.

        Raises:
            JobFailedError: the job failed as a whole (per-item failures are in the result).
            JobTimeoutError: not terminal after ``timeout`` seconds.
        """
        plan = WaitPlan(self.schedule, job, timeout)
        while (delay := plan.next_delay()) is not None:
            time.sleep(delay)
            plan.update(self.retrieve_job(plan.job_id))
        return plan.result(request)

    def segment(self, file: FileLike, points: Iterable[Point | Sequence[float]] | None = None,
                box: Box | Sequence[float] | None = None, *, prompt: Prompt | None = None,
                timeout: float | None = None, check_file: bool = True) -> SegmentationResult:
        """Segment one file: check it, create the job, wait for the result.

        Use ``result.item.best`` for the top segment; ``result.item`` raises
        :class:`~cogseg_ml.errors.JobFailedError` if the file failed.
        """
        ref = FileRef.parse(file)
        p = to_prompt(points, box, prompt)
        if check_file:
            check_segmentable(self.file_metadata([ref])[0], ref)
        job = self.create_job(ref, prompt=p)
        return self.wait(job, timeout=timeout, request=SegmentRequest(ref, p))

    def segment_many(self, requests: Iterable[RequestLike], *, concurrency: int = 32,
                     timeout: float | None = None, check_files: bool = True
                     ) -> Iterator[JobOutcome]:
        """Run many jobs at once; yields one :class:`JobOutcome` per request as each finishes.

        At most ``concurrency`` jobs are in flight (created and not yet handed to you). One
        polling loop serves them all. Failures are outcomes, never exceptions that end the
        stream. Closing the iterator early (``break``) stops submitting and polling; jobs
        already created keep running on the server (the API has no cancel).
        """
        yield from _run_async_iter_in_thread(
            self.config, requests, concurrency=concurrency, timeout=timeout,
            check_files=check_files)

    # --- files ---------------------------------------------------------------------------------
    def file_metadata(self, files: Iterable[FileLike], *, ignore_unknown: bool = False
                      ) -> list[FileMetadata]:
        """Metadata of files in request order (``/files/byids``, 1000 per call).

        Raises:
            NotFoundError: unknown files (``missing`` lists them), unless ``ignore_unknown``.
        """
        refs = [FileRef.parse(f) for f in files]
        out: list[FileMetadata] = []
        uniq = _unique(refs)
        for i in range(0, len(uniq), BYIDS_CHUNK):
            call = self.byids_call(uniq[i:i + BYIDS_CHUNK], ignore_unknown=ignore_unknown)
            out.extend(self.parse(self._send(call), ItemsResponse[FileMetadata], call).items)
        found = _match_metadata(refs, out)
        return [found[r] for r in refs if r in found]

    def metadata_map(self, refs: Sequence[FileRef]) -> dict[FileRef, FileMetadata]:
        """Metadata of the known files among ``refs`` (unknown ones are left out)."""
        return _match_metadata(refs, self.file_metadata(refs, ignore_unknown=True))

    def download(self, file: FileLike, *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
        """The file's bytes: a download link, then a GET of it.

        Raises:
            FileValidationError: the file is empty or larger than ``max_bytes``.
        """
        ref = FileRef.parse(file)
        call = self.downloadlink_call(ref)
        try:
            links = self.parse(self._send(call), ItemsResponse[DownloadLinkItem], call).items
        except NotFoundError as exc:
            raise _no_such_file(ref, self.config, exc) from None
        if not links:
            raise NotFoundError(f"no download link for {ref.describe()}", status_code=200)
        resp = self._send(self.download_call(links[0].download_url, max_bytes))
        return _checked_content(resp.content, ref, max_bytes)

    # --- annotations ---------------------------------------------------------------------------
    def list_annotations(self, file_ids: Sequence[int], *, annotation_type: str | None = None,
                         status: str | None = None, creating_app: str | None = None,
                         data: Mapping[str, Any] | None = None) -> Iterator[Annotation]:
        """Annotations on files (``/annotations/list``), 1000 files per filter, all pages."""
        for i in range(0, len(file_ids), 1000):
            flt = _annotation_filter(file_ids[i:i + 1000], annotation_type, status, creating_app,
                                     data)
            cursor: str | None = None
            while True:
                call = self.annotations_list_call(flt, 1000, cursor)
                page = self.parse(self._send(call), AnnotationListResponse, call)
                yield from page.items
                cursor = page.next_cursor
                if not cursor:
                    break

    def create_annotations(self, annotations: Sequence[Annotation]) -> list[Annotation]:
        """Create annotations (``POST /annotations``, 1000 per call; not retried blindly)."""
        out: list[Annotation] = []
        for i in range(0, len(annotations), 1000):
            call = self.annotations_create_call(
                [a.to_wire() for a in annotations[i:i + 1000]])
            out.extend(self.parse(self._send(call), ItemsResponse[Annotation], call).items)
        return out


def _annotation_filter(file_ids: Sequence[int], annotation_type: str | None, status: str | None,
                       creating_app: str | None, data: Mapping[str, Any] | None
                       ) -> dict[str, Any]:
    flt: dict[str, Any] = {"annotatedResourceType": "file",
                           "annotatedResourceIds": [{"id": int(i)} for i in file_ids]}
    for key, value in (("annotationType", annotation_type), ("status", status),
                       ("creatingApp", creating_app)):
        if value is not None:
            flt[key] = value
    if data:
        flt["data"] = dict(data)
    return flt


def _no_such_file(ref: FileRef, config: CdfConfig, exc: NotFoundError) -> NotFoundError:
    return NotFoundError(f"file {ref.describe()} does not exist in project {config.project!r}",
                         status_code=exc.status_code, request_id=exc.request_id,
                         missing=exc.missing)


def _checked_content(content: bytes, ref: FileRef, max_bytes: int) -> bytes:
    if not content:
        raise FileValidationError(f"file {ref.describe()} downloaded as zero bytes", file=ref)
    if len(content) > max_bytes:
        raise FileValidationError(f"file {ref.describe()} is {len(content)} bytes, over the "
                                  f"{max_bytes}-byte limit (raise max_bytes to allow it)",
                                  file=ref)
    return content


class AsyncSegmentationClient(ClientCore):
    """Asynchronous twin of :class:`SegmentationClient` (same methods, awaitable)."""

    def __init__(self, config: CdfConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(config)
        self._auth = BearerAuth(config.credentials, timeout_s=config.timeout_s,
                                verify=config.verify_tls)
        limits = httpx.Limits(max_connections=config.max_connections,
                              max_keepalive_connections=config.max_connections)
        self._http = httpx.AsyncClient(timeout=config.timeout_s, limits=limits,
                                       transport=transport, verify=config.verify_tls)
        self.schedule = PollSchedule(config.poll)
        self.requests_sent = 0
        # Requests wait here rather than in httpcore's pool: its queue is rescanned on every
        # pool event (cost grows with queued requests times connections).
        self._gate: asyncio.Semaphore | None = None

    async def __aenter__(self) -> AsyncSegmentationClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()
        await self._auth.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        call = self.limit(call)
        try:
            async for attempt in AsyncRetrying(**retrying_kwargs(self.config.retry, call.kind,
                                                                 self.log_retry(call))):
                with attempt:
                    self.requests_sent += 1
                    if self._gate is None:
                        self._gate = asyncio.Semaphore(self.config.max_connections)
                    async with self._gate:
                        req = self._http.build_request(
                            call.method, call.url, json=call.json, params=call.params,
                            headers=self.headers_for(call),
                            timeout=call.timeout_s or self.config.timeout_s)
                        streamed = await self._http.send(
                            req, auth=self._auth if call.authenticated else None, stream=True)
                        try:
                            body = LimitedBody(call)
                            async for chunk in streamed.aiter_bytes():
                                body.add(chunk)
                            resp = rebuilt(streamed, bytes(body.buf))
                        finally:
                            await streamed.aclose()
                    self.raise_for_retry(resp)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self.final_error(exc, call) from None
        return resp

    async def create_job(self, files: FileLike | Sequence[FileLike],
                         points: Iterable[Point | Sequence[float]] | None = None,
                         box: Box | Sequence[float] | None = None, *,
                         prompt: Prompt | None = None) -> SegmentJob:
        """See :meth:`SegmentationClient.create_job`."""
        call = self.segment_create_call(_one_file(files), to_prompt(points, box, prompt))
        return self.parse(await self._send(call), SegmentJob, call)

    async def retrieve_job(self, job_id: int) -> SegmentJob:
        """See :meth:`SegmentationClient.retrieve_job`."""
        call = self.segment_retrieve_call(job_id)
        return self.parse(await self._send(call), SegmentJob, call)

    async def wait(self, job: SegmentJob | int, timeout: float | None = None,
                   request: SegmentRequest | None = None) -> SegmentationResult:
        """See :meth:`SegmentationClient.wait`."""
        plan = WaitPlan(self.schedule, job, timeout)
        while (delay := plan.next_delay()) is not None:
            await asyncio.sleep(delay)
            plan.update(await self.retrieve_job(plan.job_id))
        return plan.result(request)

    async def segment(self, file: FileLike,
                      points: Iterable[Point | Sequence[float]] | None = None,
                      box: Box | Sequence[float] | None = None, *, prompt: Prompt | None = None,
                      timeout: float | None = None, check_file: bool = True
                      ) -> SegmentationResult:
        """See :meth:`SegmentationClient.segment`."""
        ref = FileRef.parse(file)
        p = to_prompt(points, box, prompt)
        if check_file:
            check_segmentable((await self.file_metadata([ref]))[0], ref)
        job = await self.create_job(ref, prompt=p)
        return await self.wait(job, timeout=timeout, request=SegmentRequest(ref, p))

    def segment_many(self, requests: Iterable[RequestLike], *, concurrency: int = 32,
                     timeout: float | None = None, check_files: bool = True
                     ) -> AsyncIterator[JobOutcome]:
        """See :meth:`SegmentationClient.segment_many` (an async iterator here)."""
        from cogseg_ml.api.job_pipeline import run_jobs

        return run_jobs(self, requests, concurrency=concurrency, timeout=timeout,
                        check_files=check_files)

    async def file_metadata(self, files: Iterable[FileLike], *, ignore_unknown: bool = False
                            ) -> list[FileMetadata]:
        """See :meth:`SegmentationClient.file_metadata`."""
        refs = [FileRef.parse(f) for f in files]
        out: list[FileMetadata] = []
        uniq = _unique(refs)
        for i in range(0, len(uniq), BYIDS_CHUNK):
            call = self.byids_call(uniq[i:i + BYIDS_CHUNK], ignore_unknown=ignore_unknown)
            out.extend(self.parse(await self._send(call), ItemsResponse[FileMetadata], call).items)
        found = _match_metadata(refs, out)
        return [found[r] for r in refs if r in found]

    async def metadata_map(self, refs: Sequence[FileRef]) -> dict[FileRef, FileMetadata]:
        """Metadata of the known files among ``refs`` (unknown ones are left out)."""
        metas = await self.file_metadata(refs, ignore_unknown=True)
        return _match_metadata(refs, metas)

    async def download(self, file: FileLike, *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
        """See :meth:`SegmentationClient.download`."""
        ref = FileRef.parse(file)
        call = self.downloadlink_call(ref)
        try:
            links = self.parse(await self._send(call), ItemsResponse[DownloadLinkItem],
                               call).items
        except NotFoundError as exc:
            raise _no_such_file(ref, self.config, exc) from None
        if not links:
            raise NotFoundError(f"no download link for {ref.describe()}", status_code=200)
        resp = await self._send(self.download_call(links[0].download_url, max_bytes))
        return _checked_content(resp.content, ref, max_bytes)


_DONE = object()


def _run_async_iter_in_thread(config: CdfConfig, requests: Iterable[RequestLike], **kw: Any
                              ) -> Iterator[JobOutcome]:
    """Drive ``AsyncSegmentationClient.segment_many`` on a private loop; yield its outcomes.

    Closing the iterator cancels the async side and joins its thread.
    """
    out: queue.Queue[Any] = queue.Queue()
    state: dict[str, Any] = {}

    async def main() -> None:
        state["task"] = asyncio.current_task()
        taken = asyncio.Event()
        state["taken"] = taken
        async with AsyncSegmentationClient(config) as client:
            agen = client.segment_many(requests, **kw)
            try:
                async for outcome in agen:
                    taken.clear()
                    out.put(outcome)
                    # Wait until the consumer took it: keeps the in-flight bound meaningful
                    # for a slow consumer (its slot is freed only then).
                    await taken.wait()
            finally:
                await agen.aclose()  # type: ignore[attr-defined]

    def runner() -> None:
        loop = asyncio.new_event_loop()
        state["loop"] = loop
        try:
            loop.run_until_complete(main())
            out.put(_DONE)
        except asyncio.CancelledError:
            out.put(_DONE)
        except BaseException as exc:  # surfaced in the consumer's thread
            out.put(exc)
        finally:
            loop.close()

    def signal(method: str) -> None:
        loop, target = state.get("loop"), state.get("taken" if method == "set" else "task")
        if loop is None or target is None:
            return
        try:
            loop.call_soon_threadsafe(getattr(target, "set" if method == "set" else "cancel"))
        except RuntimeError:  # the loop has already closed
            pass

    thread = threading.Thread(target=runner, name="cogseg-segment-many", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            signal("set")
    finally:
        if thread.is_alive():
            signal("cancel")
        thread.join(timeout=30)
