"""The segment routes' rules and views, shared by the emulator and the segment service.

What both servers answer the same way: the beta version header, which files can be segmented,
how a ``jobId`` in the path is read, how an unknown job is answered, and the POST and GET views
of a job (reference sections 1.2 and 1.3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from cogseg_ml.api.wire_schema import (
    FailedItemGroup,
    JobStatus,
    SegmentBoundingBox,
    SegmentFileRef,
    SegmentJob,
    SegmentJobItem,
    SegmentPoint,
    SegmentPrompt,
    SegmentResult,
)
from cogseg_ml.mask_codec import Outline, mask_to_polygon_arrays
from cogseg_ml.prompts import Box, Point
from cogseg_ml.service.problems import ApiProblem

__all__ = ["ALLOWED_EXTENSIONS", "ALLOWED_MIME", "BETA_VERSION", "check_beta",
           "check_segmentable", "job_id_from_path", "job_view", "mask_segment", "unknown_job"]

BETA_VERSION = re.compile(r"^(beta|\d{8}-beta)$")
ALLOWED_EXTENSIONS = (".jpeg", ".jpg", ".png")
ALLOWED_MIME = ("image/png", "image/jpeg")


def check_beta(version: str) -> None:
    """The segment routes need a beta ``cdf-version`` header (400 otherwise: CDF's exact
    answer without one is not documented)."""
    if not BETA_VERSION.match(version):
        raise ApiProblem(400, "The vision segment API is in beta: send the header "
                              "'cdf-version: beta'")


def check_segmentable(file_id: int, name: str, mime_type: str | None) -> None:
    """400 unless the file's extension and MIME type are ones CDF segments [1.1]."""
    if not name.lower().endswith(ALLOWED_EXTENSIONS) or mime_type not in ALLOWED_MIME:
        raise ApiProblem(400, f"File {file_id} ({name!r}, mimeType {mime_type!r}) cannot be "
                              "segmented: the extension must be .jpeg, .jpg or .png and the "
                              "mimeType image/png or image/jpeg")


def job_id_from_path(raw: str) -> int:
    """The ``{jobId}`` path parameter as an int (400 when it is not one)."""
    if not raw.isdigit():
        raise ApiProblem(400, f"jobId must be an integer, got {raw!r}")
    return int(raw)


def unknown_job(job_id: int) -> ApiProblem:
    """An unknown job: 400 with ``missing: [{"jobId": N}]`` (CDF's convention for unknown
    ids; the reference leaves the status open)."""
    return ApiProblem(400, f"Job {job_id} not found", missing=[{"jobId": job_id}])


def mask_segment(mask: np.ndarray, score: float, *, outline: Outline = "exact"
                 ) -> SegmentResult:
    """One mask as CDF's segment: polygons with vertices normalized by the mask's size.

    ``outline="exact"`` keeps holes and parts, so the client's polygon-to-RLE gives back the
    mask bit for bit; the emulator chooses ``"filled"`` (CDF's lossy outlines).

    The polygons are traced as arrays and normalized in numpy (each vertex ``x / width``,
    ``y / height``, the same floats as Python's division), and the result is validated in one
    pass from plain lists and dicts rather than one model call per vertex.
    """
    h, w = mask.shape[:2]
    pts, lens = mask_to_polygon_arrays(mask, outline=outline)
    xs = (pts[:, 0] / w).tolist()
    ys = (pts[:, 1] / h).tolist()
    polys = []
    at = 0
    for n in lens.tolist():
        polys.append({"vertices": [{"x": x, "y": y}
                                   for x, y in zip(xs[at:at + n], ys[at:at + n], strict=True)]})
        at += n
    return SegmentResult.model_validate({"score": round(float(score), 4), "polygons": polys})


def job_view(*, job_id: int, status: JobStatus, created_time: int, start_time: int | None,
             status_time: int, ref: SegmentFileRef, points: Sequence[Point], box: Box | None,
             segments: Sequence[SegmentResult] = (), error_message: str | None = None,
             failed_item_message: str | None = None, created: bool) -> SegmentJob:
    """The POST view (``created=True``: the prompt echoed at the top level) or the GET view
    (prompt nested, segments once ``Completed``, ``failedItems`` when the item failed)."""
    pts = [SegmentPoint(x=p.x, y=p.y, label=p.label) for p in points]  # type: ignore[arg-type]
    wbox = (SegmentBoundingBox(x_min=box.x_min, y_min=box.y_min, x_max=box.x_max,
                               y_max=box.y_max) if box else None)
    if created:
        items = [SegmentJobItem(file_id=ref.file_id, file_external_id=ref.file_external_id)]
        return SegmentJob(status=status, job_id=job_id, created_time=created_time,
                          start_time=start_time, status_time=status_time, items=items,
                          points=pts, bounding_box=wbox)
    items = []
    failed = None
    if status is JobStatus.COMPLETED:
        items = [SegmentJobItem(file_id=ref.file_id, file_external_id=ref.file_external_id,
                                segments=list(segments))]
    if failed_item_message is not None:
        failed = [FailedItemGroup(error_message=failed_item_message, items=[ref])]
    return SegmentJob(status=status, job_id=job_id, created_time=created_time,
                      start_time=start_time, status_time=status_time, items=items,
                      prompt=SegmentPrompt(points=pts, bounding_box=wbox),
                      error_message=error_message, failed_items=failed)
