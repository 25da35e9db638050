"""What a segmentation call returns: requests, segments, per-item results, outcomes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cogseg_ml.api.wire_schema import JobStatus, SegmentFileRef, SegmentJob
from cogseg_ml.errors import CogsegError, JobFailedError, ResponseValidationError, ValidationError
from cogseg_ml.mask_codec import Rle, polygons_to_rle
from cogseg_ml.prompts import Box, FileRef, InstanceId, Point, Prompt

__all__ = ["ItemResult", "JobOutcome", "RequestLike", "Segment", "SegmentRequest",
           "SegmentationResult", "to_prompt", "to_request"]

Polygon = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class SegmentRequest:
    """One job to run: a file and one prompt set; ``tag`` is yours (echoed in the outcome)."""

    file: FileRef
    prompt: Prompt
    tag: Any = None


@dataclass(frozen=True)
class Segment:
    """One candidate segment: ``score`` and polygons with normalized ``(x, y)`` vertices."""

    score: float
    polygons: tuple[Polygon, ...]

    def to_rle(self, height: int, width: int) -> Rle:
        """The union of the polygons as a COCO RLE at ``height`` x ``width``."""
        return polygons_to_rle(self.polygons, height, width)


@dataclass(frozen=True)
class ItemResult:
    """The result for one file of a job: its segments (best first), or the reason it failed."""

    file: FileRef
    segments: tuple[Segment, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the item was segmented."""
        return self.error is None

    @property
    def best(self) -> Segment | None:
        """The highest-scoring segment, if any."""
        return self.segments[0] if self.segments else None


@dataclass(frozen=True)
class SegmentationResult:
    """A finished job: status, timings (ms since epoch) and one :class:`ItemResult` per file."""

    job_id: int
    status: JobStatus
    items: tuple[ItemResult, ...]
    created_time: int
    status_time: int
    request: SegmentRequest | None = None

    @property
    def item(self) -> ItemResult:
        """The only item (jobs hold exactly one file).

        Raises:
            JobFailedError: when that item failed.
        """
        only = self.items[0]
        if not only.ok:
            raise JobFailedError(f"job {self.job_id} could not segment {only.file.describe()}: "
                                 f"{only.error}", job_id=self.job_id, server_message=only.error)
        return only

    @property
    def duration_s(self) -> float:
        """Server-side time from creation to the final status."""
        return max(0.0, (self.status_time - self.created_time) / 1000.0)


@dataclass(frozen=True)
class JobOutcome:
    """What ``segment_many`` yields for each request: a result or an error, never both."""

    request: SegmentRequest
    result: SegmentationResult | None = None
    error: CogsegError | None = None
    job_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the job completed and its item was segmented."""
        return self.error is None and self.result is not None and self.result.items[0].ok


def file_ref_from_wire(ref: SegmentFileRef) -> FileRef:
    """The most specific reference a response item carries (the internal id first)."""
    if ref.file_id is not None:
        return FileRef(id=ref.file_id)
    if ref.file_external_id is not None:
        return FileRef(external_id=ref.file_external_id)
    if ref.file_instance_id is not None:
        return FileRef(instance_id=InstanceId(ref.file_instance_id.space,
                                              ref.file_instance_id.external_id))
    raise ResponseValidationError(
        "a segmentation job answered with an item that has no file reference (fileId, "
        "fileExternalId or fileInstanceId); the answer cannot be matched to its request")


def result_from_job(job: SegmentJob, request: SegmentRequest | None = None
                    ) -> SegmentationResult:
    """Build the result of a terminal job.

    Completed items carry their segments sorted by score; ``failedItems`` become items with
    ``error`` set (the other items are kept).

    Raises:
        JobFailedError: the job failed with no per-item detail (a job-level failure).
    """
    items: list[ItemResult] = []
    for it in job.items:
        segs = sorted(
            (Segment(score=s.score,
                     polygons=tuple(tuple((v.x, v.y) for v in p.vertices) for p in s.polygons))
             for s in it.segments),
            key=lambda s: -s.score,
        )
        items.append(ItemResult(file=file_ref_from_wire(it), segments=tuple(segs)))
    for group in job.failed_items or []:
        for ref in group.items:
            items.append(ItemResult(file=file_ref_from_wire(ref),
                                    error=group.error_message or "failed (no message)"))
    if job.status is JobStatus.FAILED and not job.failed_items:
        msg = job.error_message or "no errorMessage given"
        raise JobFailedError(f"segmentation job {job.job_id} failed: {msg}", job_id=job.job_id,
                             server_message=job.error_message)
    if not items:
        if request is None:
            raise JobFailedError(f"job {job.job_id} finished without items", job_id=job.job_id)
        items.append(ItemResult(file=request.file, error="the job returned no item"))
    return SegmentationResult(job_id=job.job_id, status=job.status, items=tuple(items),
                              created_time=job.created_time, status_time=job.status_time,
                              request=request)


RequestLike = SegmentRequest | tuple[Any, ...]


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
