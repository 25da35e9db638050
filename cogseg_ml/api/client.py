"""The CDF segmentation clients: :class:`SegmentationClient`, for synchronous code, and its
asynchronous twin :class:`~cogseg_ml.api.async_client.AsyncSegmentationClient` (re-exported
here).

:class:`SegmentationClient` runs every call on this process's
:class:`~cogseg_ml.api.session.SegmentationSession` (one async client on a background loop), so
all sync users of one configuration in a process share one connection pool, one token and one
poll schedule, and a forked child never uses its parent's connections. The arrows: this module
imports the session, the session the async client, the async client the job pipeline; never
back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from cogseg_ml.api.async_client import (
    COGNITE_FILE_VIEW,
    MAX_DOWNLOAD_BYTES,
    AsyncSegmentationClient,
    FileLike,
    checked_listing,
    one_file,
)
from cogseg_ml.api.auth import BearerAuth
from cogseg_ml.api.job_polling import PollSchedule, checked_timeout
from cogseg_ml.api.results import (
    JobOutcome,
    RequestLike,
    SegmentationResult,
    SegmentRequest,
    to_prompt,
    to_request,
)
from cogseg_ml.api.session import SegmentationSession, session_for
from cogseg_ml.api.transport import Transport
from cogseg_ml.api.wire_schema import (
    Annotation,
    FileMetadata,
    NodeItem,
    SegmentJob,
)
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import (
    ApiRetiredError,
    ApiStormError,
    CdfUnreachableError,
    ValidationError,
)
from cogseg_ml.prompts import Box, FileRef, Point, Prompt

__all__ = ["COGNITE_FILE_VIEW", "AsyncSegmentationClient", "FileLike", "RequestLike",
           "SegmentationClient", "to_prompt", "to_request"]


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
    def outage(self) -> CdfUnreachableError | None:
        """The outage the session has recognized and still honours, else ``None``.

        While it is set, every call of the session fails at once with it (a
        :class:`~cogseg_ml.errors.CdfUnreachableError`, also an ``ApiUnavailableError``);
        a run can stop here rather than go on item by item.
        """
        return self.session.client.outage

    @property
    def retired(self) -> ApiRetiredError | None:
        """The retired Vision API the session recognized, else ``None``.

        Once set (for the session's lifetime), every segmentation call fails at once with it
        (:class:`~cogseg_ml.errors.ApiRetiredError`, an ``ApiUnavailableError``), without a
        request; files and annotations keep working. Its message says how to run local-only.
        """
        return self.session.client.retired

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
            ApiRetiredError: the segment endpoint is gone (the Vision API retired).
            ApiError, ApiUnavailableError: the API refused or could not be reached.
        """
        ref, p = one_file(files), to_prompt(points, box, prompt)
        return self.session.run(lambda c: c.create_job(ref, prompt=p))

    def retrieve_job(self, job_id: int) -> SegmentJob:
        """The job's current status (and result, once ``Completed``)."""
        return self.session.run(lambda c: c.retrieve_job(job_id))

    def wait(self, job: SegmentJob | int, timeout: float | None = None,
             request: SegmentRequest | None = None) -> SegmentationResult:
        """Poll until the job is terminal; returns its result.

        ``timeout``: seconds from now; ``None``: the config's ``RetryConfig.job_timeout_s``
        (900 s by default; set it to ``None`` to wait as long as it takes).

        Raises:
            ValidationError: ``timeout`` is not ``None`` or a finite number of seconds > 0.
            JobFailedError: the job failed as a whole (per-item failures are in the result).
            JobTimeoutError: not terminal within the timeout.
        """
        timeout = checked_timeout(timeout)
        return self.session.run(lambda c: c.wait(job, timeout=timeout, request=request))

    def segment(self, file: FileLike, points: Iterable[Point | Sequence[float]] | None = None,
                box: Box | Sequence[float] | None = None, *, prompt: Prompt | None = None,
                timeout: float | None = None, check_file: bool = True) -> SegmentationResult:
        """Segment one file: check it, create the job, wait for the result.

        Use ``result.item.best`` for the top segment; ``result.item`` raises
        :class:`~cogseg_ml.errors.JobFailedError` if the file failed. ``timeout``: seconds
        the job may take from its creation; ``None``: ``RetryConfig.job_timeout_s`` (900 s by
        default).

        Raises:
            ValidationError: bad prompts, or a ``timeout`` that is not ``None`` or a finite
                number of seconds > 0 (before any request is sent).
            JobTimeoutError: the job did not finish within the timeout.
            NotFoundError: CDF does not know the file (the message names it).
            CdfUnreachableError: CDF or its token endpoint cannot be reached (an
                ``ApiUnavailableError``).
            AuthenticationError: the credentials were refused (the message says which).
            ApiRetiredError: the segment endpoint is gone (the Vision API retired; the
                message says how to run local-only).
        """
        ref, p = FileRef.parse(file), to_prompt(points, box, prompt)
        timeout = checked_timeout(timeout)
        return self.session.run(lambda c: c.segment(ref, prompt=p, timeout=timeout,
                                                    check_file=check_file))

    def segment_many(self, requests: Iterable[RequestLike], *, concurrency: int = 32,
                     timeout: float | None = None, check_files: bool = True,
                     until_storm: bool = False) -> Iterator[JobOutcome]:
        """Run many jobs at once; yields one :class:`JobOutcome` per request as each finishes.

        At most ``concurrency`` jobs are in flight (created and not yet handed to you). One
        polling loop serves them all. Failures of a job are outcomes, never exceptions that end
        the stream; a bug (an exception that is not a :class:`~cogseg_ml.errors.CogsegError`)
        ends it with that exception. ``requests`` is read lazily, off the session's loop, so
        it may be a generator that does blocking work. Closing the iterator early (``break``)
        stops submitting and polling; jobs already created keep running on the server (the
        API has no cancel). Once CDF is found unreachable (or the credentials refused), the
        remaining requests fail at once, each an outcome with that error.

        Args:
            timeout: seconds a job may take from its creation (then its outcome is a
                :class:`~cogseg_ml.errors.JobTimeoutError`); ``None``: the config's
                ``RetryConfig.job_timeout_s`` (900 s by default).
            until_storm: when the Vision API (or CDF) storms, i.e. answers only failures
                (see :mod:`cogseg_ml.api.health`), end every job still queued or in flight
                at once with :func:`~cogseg_ml.api.health.storm_error` instead of waiting out
                its retries (for a caller with somewhere else to send them, such as
                :class:`~cogseg_ml.backends.fallback.FallbackBackend`). Without it, calls keep
                their retry budget and the storm is said in one WARNING.

        Raises:
            ValidationError: ``timeout`` is not ``None`` or a finite number of seconds > 0
                (raised here, at the call).
        """
        timeout = checked_timeout(timeout)
        return self.session.iterate(lambda c: c.segment_many(
            requests, concurrency=concurrency, timeout=timeout, check_files=check_files,
            until_storm=until_storm))

    # --- files ---------------------------------------------------------------------------------
    def storm(self) -> ApiStormError | None:
        """The storm the session sees now on the services a segmentation job needs (CDF's
        Vision API, CDF), as an :class:`~cogseg_ml.errors.ApiStormError`; ``None`` if none."""
        client = self.session.client
        return client.health.storm(client.storm_keys)

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

    # --- listings ------------------------------------------------------------------------------
    def list_files(self, flt: Mapping[str, Any] | None = None, *, limit: int = 1000,
                   partitions: int | None = None) -> Iterator[FileMetadata]:
        """Files matching a filter (``POST /files/list``), every page, read lazily.

        Args:
            flt: CDF's file filter, camelCase as on the wire (``{"directoryPrefix": "/a/",
                "mimeType": "image/jpeg", "dataSetIds": [{"id": 1}], "labels":
                {"containsAny": [{"externalId": "x"}]}, "metadata": {...}, "uploaded": true,
                ...}``); ``None``: every file.
            limit: items asked for per page (1..1000); a page may hold fewer and still not be
                the last, so the cursor is followed until CDF sends none.
            partitions: split the listing into this many partitions (1..10), read up to 4 at a
                time as the SDK does; items then come in no particular order.

        Raises:
            ValidationError: ``limit``, ``partitions`` or the filter's type are not usable
                (before any request).
            ApiError: CDF refused the filter (400, its message naming the field).
        """
        checked_listing(flt, limit, partitions)
        return self.session.iterate(lambda c: c.list_files(flt, limit=limit,
                                                           partitions=partitions))

    def list_nodes(self, flt: Mapping[str, Any] | None = None, *,
                   view: tuple[str, str, str] = COGNITE_FILE_VIEW, limit: int = 1000
                   ) -> Iterator[NodeItem]:
        """Nodes with data in ``view`` (default ``cdf_cdm:CogniteFile/v1``) matching a
        data-modeling filter (``POST /models/instances/list``), every page, read lazily.

        ``flt`` is the data-modeling filter language, e.g. ``{"equals": {"property": ["node",
        "space"], "value": "site-a"}}``. Needs ``dataModelInstancesAcl:READ``. Nodes carry
        the view's properties under ``properties[space]["CogniteFile/v1"]``.

        Raises:
            ValidationError: ``limit`` or the filter's type are not usable (before any
                request).
            ApiError: CDF refused the filter or the view.
        """
        checked_listing(flt, limit)
        return self.session.iterate(lambda c: c.list_nodes(flt, view=view, limit=limit))

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
