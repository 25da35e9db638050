"""The model side of the service: the job engine hands every waiting job to one backend run.

Jobs of all callers that wait together (the engine's one worker takes up to
:data:`MAX_BATCH_JOBS`) go through one
:meth:`~cogseg_ml.backends.local_sam.LocalSamBackend.run` call, which groups them by image:
an image's embedding is computed once (keyed by the bytes' SHA-256, so every job on the same
content shares it, whoever asked), encoder calls batch images, and all prompts of an image go
through the decoder together. Masks go out as exact polygons (holes and parts kept) and are
also written to the mask cache under the keys a labeller with the same local model and the
same CDF project would look up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.api.wire_schema import JobStatus, SegmentResult
from cogseg_ml.backends.base import BackendJob, MaskResult, SegmentationBackend
from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.errors import CogsegError
from cogseg_ml.mask_codec import decode
from cogseg_ml.prompts import FileRef
from cogseg_ml.service.job_engine import JobOutcome
from cogseg_ml.service.job_store import StoredJob
from cogseg_ml.service.segment_wire import mask_segment
from cogseg_ml.store import cached_result

__all__ = ["MAX_BATCH_JOBS", "ModelAnswerer", "ModelStats", "ServiceAnswerer", "WorkerCounters",
           "result_segments"]

_log = logging.getLogger("cogseg_ml.service")

#: Jobs taken from the queue into one backend run at most.
MAX_BATCH_JOBS = 512


@dataclass
class WorkerCounters:
    """What the answerer did (read by the metrics)."""

    decoder_prompts: int = 0
    backend_runs: int = 0
    finished: int = 0


@dataclass(frozen=True)
class ModelStats:
    """The model's work since start, for ``/metrics`` (the last two only with replicas:
    jobs answered by each, and calls lost with a replica and sent again)."""

    encoder_images: int = 0
    decoder_calls: int = 0
    decoder_prompts: int = 0
    jobs_by_replica: Mapping[str, int] = field(default_factory=dict)
    lost_calls: int = 0

    def __add__(self, other: ModelStats) -> ModelStats:
        by = dict(self.jobs_by_replica)
        for replica, n in other.jobs_by_replica.items():
            by[replica] = by.get(replica, 0) + n
        return ModelStats(self.encoder_images + other.encoder_images,
                          self.decoder_calls + other.decoder_calls,
                          self.decoder_prompts + other.decoder_prompts, by,
                          self.lost_calls + other.lost_calls)


class ImageBytes(Protocol):
    """Where an answerer finds a job's image bytes by their SHA-256."""

    def get_by_digest(self, digest: str) -> bytes | None:
        """The bytes, or ``None`` when they are not stored."""
        ...


class ServiceAnswerer(Protocol):
    """An answerer the service can report on (the local model, or Ray Serve replicas)."""

    def answer(self, jobs: Sequence[StoredJob]) -> list[JobOutcome]:
        """One outcome per job (see :class:`~cogseg_ml.service.job_engine.Answerer`)."""
        ...

    def stats(self) -> ModelStats:
        """The model's work so far."""
        ...


def result_segments(result: MaskResult) -> list[SegmentResult]:
    """A backend result as CDF segments: exact polygons, best first."""
    if not result.segments:
        return []
    masks = decode([s.rle for s in result.segments])
    return [mask_segment(m, s.score) for m, s in zip(masks, result.segments, strict=True)]


class ModelAnswerer:
    """Answers the service's jobs with the local model (the service's
    :class:`~cogseg_ml.service.job_engine.Answerer`).

    Args:
        images: where each job's bytes are (by SHA-256).
        backend: the model (``LocalSamBackend``).
        cache: the mask cache to fill (``None``: none).
        origin: the CDF cluster's origin, for cache keys.
    """

    def __init__(self, images: ImageBytes, backend: SegmentationBackend, *,
                 cache: MaskCache | None, origin: str) -> None:
        self.images = images
        self.backend = backend
        self.cache = cache
        self.origin = origin
        self.counters = WorkerCounters()

    def _load(self, digest: str) -> Callable[[], bytes]:
        def load() -> bytes:
            data = self.images.get_by_digest(digest)
            if data is None:
                raise CogsegError(f"the image bytes {digest[:12]}... are no longer stored")
            return data
        return load

    def stats(self) -> ModelStats:
        """Images through the encoder, decoder calls and prompts since start."""
        return ModelStats(int(getattr(self.backend, "encoder_calls", 0)),
                          int(getattr(self.backend, "decoder_calls", 0)),
                          self.counters.decoder_prompts)

    def answer(self, jobs: Sequence[StoredJob]) -> list[JobOutcome]:
        """One backend run for all ``jobs``; the answers also go to the mask cache."""
        by_id = {j.job_id: j for j in jobs}
        backend_jobs = [BackendJob(SegmentRequest(FileRef(id=j.file_id), j.prompt, tag=j.job_id),
                                   j.height, j.width, j.digest, self._load(j.digest),
                                   file_checked=True) for j in jobs]
        self.counters.backend_runs += 1
        self.counters.decoder_prompts += len(jobs)
        done: list[JobOutcome] = []
        answers: list[tuple[CacheKey, MaskResult]] = []
        for outcome in self.backend.run(backend_jobs):
            job = by_id[int(outcome.job.request.tag)]
            if outcome.result is not None:
                done.append(JobOutcome(job.job_id, JobStatus.COMPLETED,
                                       result_segments(outcome.result)))
                answers += [(key, cached_result(outcome.result))
                            for key in self._cache_keys(job, outcome.result)]
            else:
                done.append(JobOutcome(
                    job.job_id, JobStatus.FAILED,
                    item_error=f"could not segment file {job.file_id}: {outcome.error}"))
        self.counters.finished += len(done)
        if self.cache is not None and answers:
            try:
                self.cache.put_many(answers)
            except CogsegError as exc:  # the jobs are answered; the cache is a bonus
                _log.warning("mask cache not written: %s", exc)
        _log.info("ran %d job(s) in one model run", len(done))
        return done

    def _cache_keys(self, job: StoredJob, result: MaskResult) -> list[CacheKey]:
        """The keys a labeller on this host would look this answer up by: the file by id and
        by external id, the bytes' SHA-256 as version, the local model's identity."""
        refs = [FileRef(id=job.file_id)]
        if job.file_external_id is not None:
            refs.append(FileRef(external_id=job.file_external_id))
        return [CacheKey(job.project, ref, job.prompt, result.backend, file_version=job.digest,
                         model_version=result.model_version, origin=self.origin)
                for ref in refs]
