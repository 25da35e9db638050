"""The CDF segmentation clients: :class:`AsyncSegmentationClient` and its sync twin.

:class:`AsyncSegmentationClient` does the I/O (httpx), on top of
:class:`~cogseg_ml.api.http_core.ClientCore` (request building, one response-to-error mapping).
``segment_many`` runs many jobs at once through one polling loop
(:mod:`cogseg_ml.api.job_pipeline`).

:class:`SegmentationClient` is the same API for synchronous code: every call runs on this
process's :class:`~cogseg_ml.api.session.SegmentationSession` (one async client on a background
loop), so all sync users of one configuration in a process share one connection pool, one token
and one poll schedule, and a forked child never uses its parent's connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx
from tenacity import AsyncRetrying

from cogseg_ml.api.auth import BearerAuth
from cogseg_ml.api.file_checks import check_segmentable
from cogseg_ml.api.http_core import Call, ClientCore, LimitedBody, ResponseTooLarge, rebuilt
from cogseg_ml.api.job_pipeline import run_jobs
from cogseg_ml.api.job_polling import PollSchedule, WaitPlan
from cogseg_ml.api.results import (
    JobOutcome,
    RequestLike,
    SegmentationResult,
    SegmentRequest,
    to_prompt,
    to_request,
)
from cogseg_ml.api.retry_policy import RetryableStatus, retrying_kwargs
from cogseg_ml.api.session import SegmentationSession, Transport, as_async_transport, session_for
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

__all__ = ["AsyncSegmentationClient", "FileLike", "RequestLike", "SegmentationClient",
           "to_prompt", "to_request"]

FileLike = FileRef | int | str | Mapping[str, Any]

BYIDS_CHUNK = 1000
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
ANNOTATION_CHUNK = 1000


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


class AsyncSegmentationClient(ClientCore):
    """Asynchronous client for CDF's beta vision segmentation, Files and Annotations APIs.

    Use as an async context manager, or call :meth:`aclose`. Bound to the event loop it is
    first used on.

    Args:
        config: where and how to connect (:class:`~cogseg_ml.config.CdfConfig`).
        transport: an httpx transport instead of the network (tests, proxies); a sync-only
            transport runs its requests in threads.
    """

    def __init__(self, config: CdfConfig, *, transport: Transport | None = None) -> None:
        super().__init__(config)
        # The user's transport serves the token endpoint too (a proxy, a test double).
        async_transport = as_async_transport(transport)
        self._auth = BearerAuth(config.credentials, timeout_s=config.timeout_s,
                                verify=config.verify_tls, async_token_transport=async_transport)
        limits = httpx.Limits(max_connections=config.max_connections,
                              max_keepalive_connections=config.max_connections)
        self._http = httpx.AsyncClient(timeout=config.timeout_s, limits=limits,
                                       transport=async_transport, verify=config.verify_tls)
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
            retry = self.config.retry
            if call.attempts is not None:
                retry = dataclasses.replace(retry, max_attempts=call.attempts)
            async for attempt in AsyncRetrying(**retrying_kwargs(retry, call.kind,
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
        except (RetryableStatus, httpx.TransportError) as exc:
            # Only what the network or the server did becomes a typed API error; anything
            # else (a bug in a transport or hook) propagates as it is, cause and all.
            raise self.final_error(exc, call) from (None if call.url in str(exc) else exc)
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

    async def probe(self, file: FileLike, *, timeout_s: float = 5.0) -> None:
        """One ``files/byids`` request, one attempt, a short timeout: is CDF reachable?

        Raises:
            ApiUnavailableError: no connection, a timeout or a 5xx/429 answer.
            ApiError: CDF answered, but refused (e.g. the credentials).
        """
        call = dataclasses.replace(
            self.byids_call([FileRef.parse(file)], ignore_unknown=True), attempts=1,
            timeout_s=timeout_s)
        self.parse(await self._send(call), ItemsResponse[FileMetadata], call)

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
        try:
            resp = await self._send(self.download_call(links[0].download_url, max_bytes))
        except ResponseTooLarge:
            raise _too_large(ref, max_bytes) from None
        return _checked_content(resp.content, ref, max_bytes)

    # --- annotations ---------------------------------------------------------------------------
    async def list_annotations(self, file_ids: Sequence[int], *,
                               annotation_type: str | None = None, status: str | None = None,
                               creating_app: str | None = None,
                               data: Mapping[str, Any] | None = None
                               ) -> AsyncIterator[Annotation]:
        """Annotations on files (``/annotations/list``), 1000 files per filter, all pages."""
        for i in range(0, len(file_ids), ANNOTATION_CHUNK):
            flt = _annotation_filter(file_ids[i:i + ANNOTATION_CHUNK], annotation_type, status,
                                     creating_app, data)
            cursor: str | None = None
            while True:
                call = self.annotations_list_call(flt, 1000, cursor)
                page = self.parse(await self._send(call), AnnotationListResponse, call)
                for item in page.items:
                    yield item
                cursor = page.next_cursor
                if not cursor:
                    break

    async def create_annotations(self, annotations: Sequence[Annotation]) -> list[Annotation]:
        """Create annotations (``POST /annotations``, 1000 per call; not retried blindly)."""
        out: list[Annotation] = []
        for i in range(0, len(annotations), ANNOTATION_CHUNK):
            call = self.annotations_create_call(
                [a.to_wire() for a in annotations[i:i + ANNOTATION_CHUNK]])
            out.extend(self.parse(await self._send(call), ItemsResponse[Annotation], call).items)
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


def _too_large(ref: FileRef, max_bytes: int) -> FileValidationError:
    return FileValidationError(f"file {ref.describe()} is larger than the {max_bytes}-byte "
                               "limit (raise max_bytes to allow it)", file=ref)


def _checked_content(content: bytes, ref: FileRef, max_bytes: int) -> bytes:
    if not content:
        raise FileValidationError(f"file {ref.describe()} downloaded as zero bytes", file=ref)
    if len(content) > max_bytes:
        raise FileValidationError(f"file {ref.describe()} is {len(content)} bytes, over the "
                                  f"{max_bytes}-byte limit (raise max_bytes to allow it)",
                                  file=ref)
    return content


class SegmentationClient:
    """Synchronous client for CDF's beta vision segmentation, Files and Annotations APIs.

    Args:
        config: where and how to connect (:class:`~cogseg_ml.config.CdfConfig`).
        transport: an httpx transport to use instead of the network (tests, proxies).

    Every call runs on this process's :class:`~cogseg_ml.api.session.SegmentationSession`
    for ``config`` (created on first use): clients of one configuration in one process share
    its connections, token and poll schedule. After ``fork`` the child gets its own session.
    The client pickles as its configuration. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, config: CdfConfig, *, transport: Transport | None = None) -> None:
        if not isinstance(config, CdfConfig):
            raise ValidationError("config must be a CdfConfig")
        self.config = config
        self.transport = transport
        self._session: SegmentationSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (f"SegmentationClient(project={self.config.project!r}, "
                f"base_url={self.config.base_url!r})")

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "transport": self.transport, "_session": None,
                "_closed": False}

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def session(self) -> SegmentationSession:
        """This process's session (taken on first use; a new one after ``fork``)."""
        s = self._session
        if s is None or s.pid != os.getpid() or s.closed:
            if self._closed:
                self._closed = False  # a closed client may be used again: it re-attaches
            s = self._session = session_for(self.config, self.transport)
        return s

    def close(self) -> None:
        """Release this client's hold on the session (its connections close with the last)."""
        s, self._session = self._session, None
        self._closed = True
        if s is not None and s.pid == os.getpid():
            s.release()

    @property
    def schedule(self) -> PollSchedule:
        """The session's adaptive poll schedule (shared by every job of the session)."""
        return self.session.client.schedule

    @property
    def requests_sent(self) -> int:
        """HTTP attempts the session has made (all clients of the session together)."""
        return self.session.client.requests_sent

    @property
    def _auth(self) -> BearerAuth:
        return self.session.client._auth

    @property
    def _http(self) -> httpx.AsyncClient:
        return self.session.client._http

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
        ref, p = _one_file(files), to_prompt(points, box, prompt)
        return self.session.run(lambda c: c.create_job(ref, prompt=p))

    def retrieve_job(self, job_id: int) -> SegmentJob:
        """The job's current status (and result, once ``Completed``)."""
        return self.session.run(lambda c: c.retrieve_job(job_id))

    def wait(self, job: SegmentJob | int, timeout: float | None = None,
             request: SegmentRequest | None = None) -> SegmentationResult:
        """Poll until the job is terminal; returns its result.

        Raises:
            JobFailedError: the job failed as a whole (per-item failures are in the result).
            JobTimeoutError: not terminal after ``timeout`` seconds.
        """
        return self.session.run(lambda c: c.wait(job, timeout=timeout, request=request))

    def segment(self, file: FileLike, points: Iterable[Point | Sequence[float]] | None = None,
                box: Box | Sequence[float] | None = None, *, prompt: Prompt | None = None,
                timeout: float | None = None, check_file: bool = True) -> SegmentationResult:
        """Segment one file: check it, create the job, wait for the result.

        Use ``result.item.best`` for the top segment; ``result.item`` raises
        :class:`~cogseg_ml.errors.JobFailedError` if the file failed.
        """
        ref, p = FileRef.parse(file), to_prompt(points, box, prompt)
        return self.session.run(lambda c: c.segment(ref, prompt=p, timeout=timeout,
                                                    check_file=check_file))

    def segment_many(self, requests: Iterable[RequestLike], *, concurrency: int = 32,
                     timeout: float | None = None, check_files: bool = True
                     ) -> Iterator[JobOutcome]:
        """Run many jobs at once; yields one :class:`JobOutcome` per request as each finishes.

        At most ``concurrency`` jobs are in flight (created and not yet handed to you). One
        polling loop serves them all. Failures of a job are outcomes, never exceptions that end
        the stream; a bug (an exception that is not a :class:`~cogseg_ml.errors.CogsegError`)
        ends it with that exception. ``requests`` is read lazily, off the session's loop, so
        it may be a generator that does blocking work. Closing the iterator early (``break``)
        stops submitting and polling; jobs already created keep running on the server (the
        API has no cancel).
        """
        return self.session.iterate(lambda c: c.segment_many(
            requests, concurrency=concurrency, timeout=timeout, check_files=check_files))

    # --- files ---------------------------------------------------------------------------------
    def file_metadata(self, files: Iterable[FileLike], *, ignore_unknown: bool = False
                      ) -> list[FileMetadata]:
        """Metadata of files in request order (``/files/byids``, 1000 per call).

        Raises:
            NotFoundError: unknown files (``missing`` lists them), unless ``ignore_unknown``.
        """
        refs = list(files)
        return self.session.run(lambda c: c.file_metadata(refs, ignore_unknown=ignore_unknown))

    def metadata_map(self, refs: Sequence[FileRef]) -> dict[FileRef, FileMetadata]:
        """Metadata of the known files among ``refs`` (unknown ones are left out)."""
        return self.session.run(lambda c: c.metadata_map(refs))

    def probe(self, file: FileLike, *, timeout_s: float = 5.0) -> None:
        """See :meth:`AsyncSegmentationClient.probe`."""
        return self.session.run(lambda c: c.probe(file, timeout_s=timeout_s))

    def download(self, file: FileLike, *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
        """The file's bytes: a download link, then a GET of it.

        Raises:
            FileValidationError: the file is empty or larger than ``max_bytes``.
        """
        return self.session.run(lambda c: c.download(file, max_bytes=max_bytes))

    # --- annotations ---------------------------------------------------------------------------
    def list_annotations(self, file_ids: Sequence[int], *, annotation_type: str | None = None,
                         status: str | None = None, creating_app: str | None = None,
                         data: Mapping[str, Any] | None = None) -> Iterator[Annotation]:
        """Annotations on files (``/annotations/list``), 1000 files per filter, all pages."""
        return self.session.iterate(lambda c: c.list_annotations(
            file_ids, annotation_type=annotation_type, status=status,
            creating_app=creating_app, data=data))

    def create_annotations(self, annotations: Sequence[Annotation]) -> list[Annotation]:
        """Create annotations (``POST /annotations``, 1000 per call; not retried blindly)."""
        return self.session.run(lambda c: c.create_annotations(annotations))
