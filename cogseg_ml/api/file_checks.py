"""Which files the segment endpoint accepts, checked before a job is submitted [ref 1.1]."""

from __future__ import annotations

from cogseg_ml.api.wire_schema import FileMetadata
from cogseg_ml.errors import FileValidationError
from cogseg_ml.prompts import FileRef

__all__ = ["SEGMENTABLE_EXTENSIONS", "SEGMENTABLE_MIME_TYPES", "check_segmentable"]

#: CDF requires one of these name extensions **and** one of the mime types.
SEGMENTABLE_EXTENSIONS = (".jpeg", ".jpg", ".png")
SEGMENTABLE_MIME_TYPES = ("image/png", "image/jpeg")


def check_segmentable(meta: FileMetadata, ref: FileRef | None = None) -> None:
    """Raise :class:`FileValidationError` naming the file unless CDF can segment it."""
    who = f"file {ref.describe() if ref else f'id={meta.id}'} ({meta.name!r})"
    problems = []
    if not meta.name.lower().endswith(SEGMENTABLE_EXTENSIONS):
        problems.append("its name must end in .jpeg, .jpg or .png")
    if meta.mime_type not in SEGMENTABLE_MIME_TYPES:
        problems.append(f"its mimeType {meta.mime_type!r} must be image/png or image/jpeg")
    if not meta.uploaded:
        problems.append("it has no content yet (uploaded: false)")
    if problems:
        raise FileValidationError(f"{who} cannot be segmented: " + "; ".join(problems),
                                  file=ref, file_id=meta.id)
