"""The CDF vision API as a backend: many jobs in flight, polygons turned into RLE."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.base import BackendJob, BackendOutcome
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import CogsegError, JobFailedError
from cogseg_ml.segment_results import API_BACKEND, cached_from_result

__all__ = ["ApiBackend"]


class ApiBackend:
    """CDF's ``context/vision/segment`` through :class:`SegmentationClient`.

    Args:
        config: the CDF connection.
        concurrency: jobs in flight.

    Pickles as its config: each process builds its own client on first use.
    """

    name = API_BACKEND

    def __init__(self, config: CdfConfig | SegmentationClient, *, concurrency: int = 32) -> None:
        self.config = config.config if isinstance(config, SegmentationClient) else config
        self.concurrency = concurrency
        self.model_version = f"vision-segment/{self.config.cdf_version}"
        self._client: SegmentationClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def __repr__(self) -> str:
        return f"ApiBackend(project={self.config.project!r}, concurrency={self.concurrency})"

    @property
    def client(self) -> SegmentationClient:
        """This process's client."""
        if self._client is None:
            self._client = SegmentationClient(self.config)
        return self._client

    def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def identities(self) -> list[tuple[str, str]]:
        """See :class:`~cogseg_ml.backends.base.SegmentationBackend`."""
        return [(self.name, self.model_version)]

    def run(self, jobs: Sequence[BackendJob]) -> Iterator[BackendOutcome]:
        """See :class:`~cogseg_ml.backends.base.SegmentationBackend`."""
        requests = [SegmentRequest(j.request.file, j.request.prompt, tag=n)
                    for n, j in enumerate(jobs)]
        for outcome in self.client.segment_many(requests, concurrency=self.concurrency,
                                                check_files=True):
            job = jobs[outcome.request.tag]
            if outcome.error is not None or outcome.result is None:
                yield BackendOutcome(job, error=outcome.error or JobFailedError(
                    "no result", job_id=outcome.job_id or 0))
                continue
            try:
                yield BackendOutcome(job, result=cached_from_result(
                    outcome.result, job.height, job.width, backend=self.name,
                    model_version=self.model_version))
            except CogsegError as exc:
                yield BackendOutcome(job, error=exc)
