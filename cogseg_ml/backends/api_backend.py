"""The CDF vision API as a backend: many jobs in flight, polygons turned into RLE."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.results import SegmentationResult, SegmentRequest
from cogseg_ml.api.transport import Transport
from cogseg_ml.backends.base import BackendJob, BackendOutcome, MaskResult, ScoredMask
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import ApiRetiredError, ApiStormError, CogsegError, JobFailedError

__all__ = ["API_BACKEND", "ApiBackend", "mask_result"]

API_BACKEND = "cdf-api"


def mask_result(result: SegmentationResult, height: int, width: int, *,
                backend: str = API_BACKEND, model_version: str = "") -> MaskResult:
    """A finished job's segments as RLE at the image's size.

    Raises:
        JobFailedError: the job's item failed.
        ValidationError: a polygon the codec cannot read.
    """
    item = result.item
    segs = tuple(ScoredMask(s.score, s.to_rle(height, width)) for s in item.segments)
    return MaskResult(segments=segs, height=height, width=width, backend=backend,
                      model_version=model_version, job_id=result.job_id)


class ApiBackend:
    """CDF's ``context/vision/segment`` through this process's segmentation session.

    Args:
        config: the CDF connection, or a :class:`SegmentationClient` (its config and its
            transport are used).
        concurrency: jobs in flight.

    Pickles as its config: each process uses its own session (a transport, bound to the
    process that made it, is left behind).

    Once the session has found CDF unreachable, the remaining jobs of a run fail at once with
    :class:`~cogseg_ml.errors.CdfUnreachableError`, so a fallback takes them over without
    waiting for each job's retries. Likewise once the segment endpoint is gone (the Vision API
    retired): every job fails at once with :class:`~cogseg_ml.errors.ApiRetiredError`, for
    good (see :attr:`retired`). A service that answers only failures (a storm, see
    :mod:`cogseg_ml.api.health`) is said once; :meth:`run_until_storm` also ends the run's
    remaining jobs at once with :func:`~cogseg_ml.api.health.storm_error`.
    """

    name = API_BACKEND

    def __init__(self, config: CdfConfig | SegmentationClient, *, concurrency: int = 32) -> None:
        if isinstance(config, SegmentationClient):
            self.config: CdfConfig = config.config
            self.transport: Transport | None = config.transport
        else:
            self.config, self.transport = config, None
        self.concurrency = concurrency
        self.model_version = f"vision-segment/{self.config.cdf_version}"
        self._client: SegmentationClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "transport": None}

    def __repr__(self) -> str:
        return f"ApiBackend(project={self.config.project!r}, concurrency={self.concurrency})"

    @property
    def client(self) -> SegmentationClient:
        """A client on this process's session (after ``fork``, the child's own)."""
        if self._client is None:
            self._client = SegmentationClient(self.config, transport=self.transport)
        return self._client

    def close(self) -> None:
        """Release the session."""
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def retired(self) -> ApiRetiredError | None:
        """The retired Vision API the session recognized, else ``None``."""
        return self.client.retired

    def identities(self) -> list[tuple[str, str]]:
        """See :class:`~cogseg_ml.backends.base.SegmentationBackend`."""
        return [(self.name, self.model_version)]

    def probe(self, job: BackendJob, *, timeout_s: float = 5.0) -> None:
        """One short request about the job's file: raises ``ApiUnavailableError`` when down."""
        self.client.probe(job.request.file, timeout_s=timeout_s)

    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        """See :class:`~cogseg_ml.backends.base.SegmentationBackend`.

        Jobs whose files the caller checked (``file_checked``) send no ``files/byids``; the
        first job decides for the stream. A job that does not finish within
        ``RetryConfig.job_timeout_s`` of its creation (900 s by default) fails with
        :class:`~cogseg_ml.errors.JobTimeoutError`. When the Vision API storms (answers
        nothing but failures), the jobs keep their retry budget; the session says so in
        one WARNING.
        """
        return self._run(jobs, until_storm=False)

    def run_until_storm(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        """:meth:`run`, but once the Vision API (or CDF) storms, every job still queued or in
        flight fails at once with :func:`~cogseg_ml.api.health.storm_error` (an
        ``ApiUnavailableError``) rather than waiting out its retries: for a caller with
        somewhere else to send them (:class:`~cogseg_ml.backends.fallback.FallbackBackend`).
        """
        return self._run(jobs, until_storm=True)

    def storm(self) -> ApiStormError | None:
        """The storm the API's session sees now (see
        :meth:`~cogseg_ml.api.client.SegmentationClient.storm`)."""
        return self.client.storm()

    def _run(self, jobs: Iterable[BackendJob], *, until_storm: bool
             ) -> Iterator[BackendOutcome]:
        it = iter(jobs)
        first = next(it, None)
        if first is None:
            return
        requests = (SegmentRequest(j.request.file, j.request.prompt, tag=j)
                    for j in itertools.chain([first], it))
        for outcome in self.client.segment_many(requests, concurrency=self.concurrency,
                                                check_files=not first.file_checked,
                                                until_storm=until_storm):
            job: BackendJob = outcome.request.tag
            if outcome.error is not None or outcome.result is None:
                yield BackendOutcome(job, error=outcome.error or JobFailedError(
                    "no result", job_id=outcome.job_id or 0))
                continue
            try:
                yield BackendOutcome(job, result=mask_result(
                    outcome.result, job.height, job.width, backend=self.name,
                    model_version=self.model_version))
            except CogsegError as exc:
                yield BackendOutcome(job, error=exc)
