"""The asynchronous CDF segmentation client, :class:`AsyncSegmentationClient`.

It does the I/O (httpx), on top of :class:`~cogseg_ml.api.http_core.ClientCore` (request
building, one response-to-error mapping). ``segment_many`` runs many jobs at once through one
polling loop (:mod:`cogseg_ml.api.job_pipeline`, below this module: the pipeline names what it
needs of a client as a protocol, so it never imports the client). The synchronous twin,
:class:`~cogseg_ml.api.client.SegmentationClient`, runs it on the process's session.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import httpx
from tenacity import AsyncRetrying

from cogseg_ml.api.auth import BearerAuth, host_of
from cogseg_ml.api.file_checks import check_segmentable
from cogseg_ml.api.health import (
    CDF,
    DOWNLOADS,
    TOKEN_ENDPOINT,
    VISION,
    HealthKey,
    SessionHealth,
)
from cogseg_ml.api.http_core import Call, ClientCore, LimitedBody, rebuilt
from cogseg_ml.api.job_pipeline import run_jobs
from cogseg_ml.api.job_polling import PollSchedule, WaitPlan, checked_timeout
from cogseg_ml.api.results import (
    JobOutcome,
    RequestLike,
    SegmentationResult,
    SegmentRequest,
    to_prompt,
    to_request,
)
from cogseg_ml.api.retry_policy import (
    CONNECT_FAILURES,
    describe_transport_error,
    is_connect_failure,
    is_retryable,
    parse_retry_after,
    retrying_kwargs,
)
from cogseg_ml.api.transport import Transport, as_async_transport
from cogseg_ml.api.wire_schema import (
    MAX_PARTITIONS,
    Annotation,
    AnnotationListResponse,
    DownloadLinkItem,
    FileListResponse,
    FileMetadata,
    ItemsResponse,
    NodeItem,
    NodeListResponse,
    SegmentJob,
)
from cogseg_ml.config import CdfConfig, ClientCredentials, RetryConfig, StaticToken
from cogseg_ml.errors import (
    ApiError,
    ApiRetiredError,
    CdfUnreachableError,
    CogsegError,
    FileValidationError,
    NotFoundError,
    ResponseTooLarge,
    RetryableStatus,
    TokenEndpointUnavailable,
    ValidationError,
    status_text,
)
from cogseg_ml.prompts import Box, FileRef, Point, Prompt

__all__ = ["COGNITE_FILE_VIEW", "AsyncSegmentationClient", "FileLike", "RequestLike",
           "checked_listing", "one_file", "to_prompt", "to_request"]

FileLike = FileRef | int | str | Mapping[str, Any]

BYIDS_CHUNK = 1000
#: Different fresh tokens CDF must refuse in a row before the session stops asking.
REFUSALS_CONFIRMING = 2
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
ANNOTATION_CHUNK = 1000
#: ``(space, externalId, version)`` of the core data model's file view [ref 2.4].
COGNITE_FILE_VIEW = ("cdf_cdm", "CogniteFile", "v1")
#: Partitions of one ``files/list`` read at once: the SDK's Files read concurrency [ref 2.3].
FILES_READ_CONCURRENCY = 4
LIST_LIMIT_MAX = 1000


def checked_listing(flt: Mapping[str, Any] | None, limit: int, partitions: int | None = None
                     ) -> None:
    """Arguments of a listing, checked before any request (the filter's fields are CDF's to
    judge: it answers 400 naming a bad one)."""
    if flt is not None and not isinstance(flt, Mapping):
        raise ValidationError(f"a list filter is a mapping of filter fields, got "
                              f"{type(flt).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_LIMIT_MAX:
        raise ValidationError(f"limit (items per page) must be an integer in 1..{LIST_LIMIT_MAX}, "
                              f"got {limit!r}")
    if partitions is not None and (isinstance(partitions, bool) or not isinstance(partitions, int)
                                   or not 1 <= partitions <= MAX_PARTITIONS):
        raise ValidationError(f"partitions must be an integer in 1..{MAX_PARTITIONS} (files/list "
                              f"answers 400 beyond {MAX_PARTITIONS}), got {partitions!r}")


class _Stall:
    """A request's stall watch: ``fired`` once it counted as failed for having no answer."""

    def __init__(self, handle: asyncio.TimerHandle | None) -> None:
        self.handle = handle
        self.fired = False

    def cancel(self) -> None:
        """The request ended (or never needed watching)."""
        if self.handle is not None:
            self.handle.cancel()


def _next(exc: BaseException, call: Call, n: int, retry: RetryConfig) -> tuple[int, int] | None:
    """``(next attempt, attempts in all)`` when a call whose attempt ``n`` failed with
    ``exc`` will be tried again, for messages."""
    if n >= retry.max_attempts or not is_retryable(exc, call.kind, retry.create_retry):
        return None
    return (n + 1, retry.max_attempts)


class _Failed:
    """An error raised while reading one partition, handed to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def one_file(files: FileLike | Sequence[FileLike]) -> FileRef:
    """The one file of a single-file call (a sequence must hold exactly one)."""
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

    An unreachable CDF (or token endpoint) and refused credentials are recognized once per
    client (:attr:`health`, see :mod:`cogseg_ml.api.health`): from then on its calls fail at
    once instead of each spending its own retry budget, and :attr:`outage` says since when.
    So is a retired Vision API (:attr:`retired`): once the segment endpoint answered 404/410
    for the route, every segmentation call fails at once with
    :class:`~cogseg_ml.errors.ApiRetiredError`, never sent again.

    Args:
        config: where and how to connect (:class:`~cogseg_ml.config.CdfConfig`).
        transport: an httpx transport instead of the network (tests, proxies); a sync-only
            transport runs its requests in threads.
    """

    def __init__(self, config: CdfConfig, *, transport: Transport | None = None) -> None:
        super().__init__(config)
        # The user's transport serves the token endpoint too (a proxy, a test double).
        async_transport = as_async_transport(transport)
        self.health = SessionHealth(config.retry)
        self._auth = BearerAuth(config.credentials, timeout_s=config.timeout_s,
                                verify=config.verify_tls, async_token_transport=async_transport,
                                connect_timeout_s=config.connect_timeout_s, health=self.health)
        limits = httpx.Limits(max_connections=config.max_connections,
                              max_keepalive_connections=config.max_connections)
        self._http = httpx.AsyncClient(timeout=self._timeout(None), limits=limits,
                                       transport=async_transport, verify=config.verify_tls)
        creds = config.credentials
        # A static token refused is refused for good; a fresh one may have been revoked.
        self._confirmations = 1 if isinstance(creds, StaticToken) else REFUSALS_CONFIRMING
        self._token_key: HealthKey | None = (
            (TOKEN_ENDPOINT, host_of(creds.token_url))
            if isinstance(creds, ClientCredentials) else None)
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

    @property
    def outage(self) -> CdfUnreachableError | None:
        """The outage this client has recognized and still honours (``None`` when there is
        none): CDF or its token endpoint could not be reached, since ``outage.since``."""
        return self.health.outage

    @property
    def retired(self) -> ApiRetiredError | None:
        """The retired Vision API this client recognized (kept for its lifetime), else
        ``None``."""
        return self.health.retired

    def _timeout(self, seconds: float | None) -> httpx.Timeout:
        total = seconds or self.config.timeout_s
        return httpx.Timeout(total, connect=min(self.config.connect_timeout_s, total))

    def _where(self, call: Call) -> HealthKey:
        host = host_of(call.url)
        return (CDF if host == self.host else DOWNLOADS, host)

    async def _send(self, call: Call) -> httpx.Response:
        call = self.limit(call)
        retry = self.config.retry
        if call.attempts is not None:
            retry = dataclasses.replace(retry, max_attempts=call.attempts)
        service, host = where = self._where(call)
        storm = self.storm_key(call)
        watched = [where] + ([self._token_key] if self._token_key and call.authenticated
                             else [])
        health = self.health
        try:
            async for attempt in AsyncRetrying(**retrying_kwargs(
                    retry, call.kind, self.log_retry(call),
                    give_up=lambda: health.is_down(watched))):
                with attempt:
                    if self._gate is None:
                        self._gate = asyncio.Semaphore(self.config.max_connections)
                    n = attempt.retry_state.attempt_number
                    async with self._gate:
                        # What the session already knows fails here, before anything is sent.
                        health.check(service, host)
                        if call.authenticated:
                            health.check_credentials()
                        if call.segment_route:
                            health.check_retired()
                            if call.authenticated:  # the token's wait is not the route's
                                await self._auth.async_token()
                        self.requests_sent += 1
                        stalled = self._watch_stall(call, storm, n, retry)
                        try:
                            resp = await self._exchange(call)
                        except CONNECT_FAILURES as exc:
                            health.failed_to_connect(service, host, describe_transport_error(exc))
                            raise
                        except httpx.TransportError as exc:  # timed out, dropped: no answer
                            if not isinstance(exc, httpx.PoolTimeout) and not stalled.fired:
                                health.failed(*storm, type(exc).__name__,
                                              attempt=_next(exc, call, n, retry))
                            raise
                        finally:
                            stalled.cancel()
                    health.answered(service, host)
                    self._judge(resp, call, storm, n, retry, counted=stalled.fired)
                    if call.authenticated and self.is_api(call):
                        if resp.status_code in (401, 403):
                            refused = self.refused(resp, call)
                            if resp.status_code == 401:  # the token: every call would fail
                                health.refuse(refused, token=resp.request.headers.get(
                                    "authorization"), confirmations=self._confirmations)
                            raise refused
                        if resp.status_code < 300:
                            health.accepted()
                    self.raise_for_retry(resp)
        except (RetryableStatus, httpx.TransportError, TokenEndpointUnavailable) as exc:
            # Only what the network or the server did becomes a typed API error; anything
            # else (a bug in a transport or hook) propagates as it is, cause and all.
            raise self._gave_up(exc, call) from (None if call.url in str(exc) else exc)
        return resp

    def storm_key(self, call: Call) -> HealthKey:
        """Which service a call's failures count against for storms: CDF's Vision API for
        the segment routes (watched apart: the rest of CDF may work on), else the host's."""
        service, host = self._where(call)
        return (VISION if call.segment_route else service, host)

    @property
    def storm_keys(self) -> tuple[HealthKey, HealthKey]:
        """The services a segmentation job needs: CDF's Vision API and CDF itself."""
        return ((VISION, self.host), (CDF, self.host))

    def _watch_stall(self, call: Call, storm: HealthKey, n: int, retry: RetryConfig) -> _Stall:
        """For the Vision API's requests (small and quick when all is well): count one still
        unanswered after ``stall_s`` as failed (it keeps waiting)."""
        if not call.segment_route:
            return _Stall(None)
        stall_s = retry.stall_s
        stalled = _Stall(None)

        def fire() -> None:
            stalled.fired = True
            self.health.failed(*storm, f"no answer within {stall_s:g} s",
                               attempt=_next(httpx.ReadTimeout("no answer"), call, n, retry))

        stalled.handle = asyncio.get_running_loop().call_later(stall_s, fire)
        return stalled

    def _judge(self, resp: httpx.Response, call: Call, storm: HealthKey, n: int,
               retry: RetryConfig, *, counted: bool) -> None:
        """Tell the session whether an answer was a failure of the service (for storms)."""
        status = resp.status_code
        if status >= 500:
            if not counted:
                self.health.failed(*storm, status_text(status), status=status,
                                   attempt=_next(RetryableStatus(resp, None), call, n, retry))
        elif status == 429:
            wait = parse_retry_after(resp.headers.get("retry-after"))
            if wait is not None and wait > retry.max_backoff_s:
                self.health.failed(
                    *storm, f"429 Too Many Requests with Retry-After {wait:g} s", status=status,
                    attempt=_next(RetryableStatus(resp, wait), call, n, retry), decisive=True)
        else:
            self.health.succeeded(*storm)

    async def _send_segment(self, call: Call) -> httpx.Response:
        """:meth:`_send` for the segment endpoint, recognizing a retired route (404 or 410 for
        the route itself, see :meth:`ClientCore.route_gone`): the session remembers it."""
        try:
            return await self._send(call)
        except ApiError as exc:
            gone = self.route_gone(exc, call)
            if gone is None:  # a GET's 404: an unknown job, or no route? Ask the route.
                gone = await self._segment_route_gone()
            if not gone:
                raise
            raise self.health.retire(self.retired_error(exc, call)) from None

    async def _segment_route_gone(self) -> bool:
        """Whether the segment route is gone: a malformed POST a live route refuses (400)."""
        check = self.segment_route_check_call()
        try:
            await self._send(check)
        except ApiError as exc:
            return self.route_gone(exc, check) is True
        except CogsegError:  # nothing to learn from (unavailable, ...): not retired
            return False
        return False

    async def _exchange(self, call: Call) -> httpx.Response:
        """One request and its whole (size-limited) body."""
        req = self._http.build_request(call.method, call.url, json=call.json,
                                       params=call.params, headers=self.headers_for(call),
                                       timeout=self._timeout(call.timeout_s))
        streamed = await self._http.send(req, auth=self._auth if call.authenticated else None,
                                         stream=True)
        try:
            body = LimitedBody(call)
            async for chunk in streamed.aiter_bytes():
                body.add(chunk)
            return rebuilt(streamed, bytes(body.buf))
        finally:
            await streamed.aclose()

    def _gave_up(self, exc: BaseException, call: Call) -> CogsegError:
        """The error of a call whose retries ended: an outage where nothing could be reached
        (recorded for the whole session), else the typed error of the last failure."""
        if isinstance(exc, TokenEndpointUnavailable):
            return self.health.give_up(TOKEN_ENDPOINT, exc.host, exc.reason,
                                       unreachable=exc.unreachable)
        if is_connect_failure(exc):
            assert isinstance(exc, httpx.TransportError)
            service, host = self._where(call)
            return self.health.give_up(service, host, describe_transport_error(exc))
        return self.final_error(exc, call)

    async def create_job(self, files: FileLike | Sequence[FileLike],
                         points: Iterable[Point | Sequence[float]] | None = None,
                         box: Box | Sequence[float] | None = None, *,
                         prompt: Prompt | None = None) -> SegmentJob:
        """See :meth:`SegmentationClient.create_job`."""
        ref = one_file(files)
        call = self.segment_create_call(ref, to_prompt(points, box, prompt))
        try:
            return self.parse(await self._send_segment(call), SegmentJob, call)
        except NotFoundError as exc:
            if not exc.missing:
                raise
            raise self._unknown_files(exc) from None

    async def retrieve_job(self, job_id: int) -> SegmentJob:
        """See :meth:`SegmentationClient.retrieve_job`."""
        call = self.segment_retrieve_call(job_id)
        return self.parse(await self._send_segment(call), SegmentJob, call)

    async def wait(self, job: SegmentJob | int, timeout: float | None = None,
                   request: SegmentRequest | None = None) -> SegmentationResult:
        """See :meth:`SegmentationClient.wait`."""
        plan = WaitPlan(self.schedule, job, checked_timeout(timeout),
                        default_timeout=self.config.retry.job_timeout_s, clock=self.health.clock)
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
        timeout = checked_timeout(timeout)
        if check_file:
            check_segmentable((await self.file_metadata([ref]))[0], ref)
        job = await self.create_job(ref, prompt=p)
        return await self.wait(job, timeout=timeout, request=SegmentRequest(ref, p))

    def segment_many(self, requests: Iterable[RequestLike], *, concurrency: int = 32,
                     timeout: float | None = None, check_files: bool = True,
                     until_storm: bool = False) -> AsyncIterator[JobOutcome]:
        """See :meth:`SegmentationClient.segment_many` (an async iterator here)."""
        return run_jobs(self, requests, concurrency=concurrency,
                        timeout=checked_timeout(timeout), check_files=check_files,
                        until_storm=until_storm)

    async def file_metadata(self, files: Iterable[FileLike], *, ignore_unknown: bool = False
                            ) -> list[FileMetadata]:
        """See :meth:`SegmentationClient.file_metadata`."""
        refs = [FileRef.parse(f) for f in files]
        out: list[FileMetadata] = []
        uniq = _unique(refs)
        for i in range(0, len(uniq), BYIDS_CHUNK):
            chunk = uniq[i:i + BYIDS_CHUNK]
            call = self.byids_call(chunk, ignore_unknown=ignore_unknown)
            try:
                resp = await self._send(call)
            except NotFoundError as exc:
                if not exc.missing:
                    raise
                raise self._unknown_files(exc) from None
            out.extend(self.parse(resp, ItemsResponse[FileMetadata], call).items)
        found = _match_metadata(refs, out)
        return [found[r] for r in refs if r in found]

    async def metadata_map(self, refs: Sequence[FileRef]) -> dict[FileRef, FileMetadata]:
        """Metadata of the known files among ``refs`` (unknown ones are left out)."""
        metas = await self.file_metadata(refs, ignore_unknown=True)
        return _match_metadata(refs, metas)

    def _unknown_files(self, exc: NotFoundError) -> NotFoundError:
        """The server's "not found" restated with the files it names (its ``missing``)."""
        named = []
        for m in exc.missing:
            try:
                named.append(FileRef.parse(m).describe())
            except (CogsegError, TypeError, ValueError):
                named.append(repr(m))
        what = f"file {named[0]} does not" if len(named) == 1 else \
            f"files {', '.join(named)} do not"
        return NotFoundError(f"{what} exist in project {self.config.project!r} at {self.host} "
                             f"(server: {exc.message})", status_code=exc.status_code,
                             request_id=exc.request_id, missing=exc.missing,
                             duplicated=exc.duplicated)

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

    # --- listings ------------------------------------------------------------------------------
    async def list_files(self, flt: Mapping[str, Any] | None = None, *, limit: int = 1000,
                         partitions: int | None = None) -> AsyncIterator[FileMetadata]:
        """See :meth:`SegmentationClient.list_files`."""
        checked_listing(flt, limit, partitions)
        if not partitions:
            async for item in self._file_pages(flt, limit, None):
                yield item
            return
        queue: asyncio.Queue[FileMetadata | _Failed | None] = asyncio.Queue(maxsize=4 * limit)
        gate = asyncio.Semaphore(FILES_READ_CONCURRENCY)

        async def drain(partition: str) -> None:
            try:
                async with gate:
                    async for item in self._file_pages(flt, limit, partition):
                        await queue.put(item)
            except Exception as exc:  # handed to the consumer, who raises it
                await queue.put(_Failed(exc))
                return
            await queue.put(None)  # this partition is done

        tasks = [asyncio.ensure_future(drain(f"{m}/{partitions}"))
                 for m in range(1, partitions + 1)]
        try:
            running = len(tasks)
            while running:
                got = await queue.get()
                if got is None:
                    running -= 1
                elif isinstance(got, _Failed):
                    raise got.error
                else:
                    yield got
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _file_pages(self, flt: Mapping[str, Any] | None, limit: int,
                          partition: str | None) -> AsyncIterator[FileMetadata]:
        """Every page of one ``files/list`` (one partition), following ``nextCursor``."""
        body: dict[str, Any] = {"limit": limit}
        if flt:
            body["filter"] = dict(flt)
        if partition is not None:
            body["partition"] = partition
        label = "POST /files/list" + (f" (partition {partition})" if partition else "")
        cursor: str | None = None
        while True:
            call = Call("POST", self._url("/files/list"), "read", label,
                        json={**body, "cursor": cursor} if cursor else body)
            page = self.parse(await self._send(call), FileListResponse, call)
            for item in page.items:
                yield item
            cursor = page.next_cursor
            if not cursor:  # a short page with a cursor is not the last one [ref 2.3]
                break

    async def list_nodes(self, flt: Mapping[str, Any] | None = None, *,
                         view: tuple[str, str, str] = COGNITE_FILE_VIEW, limit: int = 1000
                         ) -> AsyncIterator[NodeItem]:
        """See :meth:`SegmentationClient.list_nodes`."""
        checked_listing(flt, limit)
        space, xid, version = view
        body: dict[str, Any] = {
            "instanceType": "node",
            "sources": [{"source": {"type": "view", "space": space, "externalId": xid,
                                    "version": version}}],
            "limit": limit}
        if flt:
            body["filter"] = dict(flt)
        cursor: str | None = None
        while True:
            call = Call("POST", self._url("/models/instances/list"), "read",
                        "POST /models/instances/list",
                        json={**body, "cursor": cursor} if cursor else body)
            page = self.parse(await self._send(call), NodeListResponse, call)
            for item in page.items:
                yield item
            cursor = page.next_cursor
            if not cursor:
                break

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
