"""What an export wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExportReport", "left_out"]


@dataclass
class ExportReport:
    """The outcome of one export.

    Attributes:
        out: the folder written.
        format: ``"coco"``, ``"yolo"`` or ``"labelstudio"``.
        images: images written (all of the labels' images, with or without masks).
        objects: masks written.
        empty: masks skipped because they have no pixels.
        dropped: masks left out by review decisions (rejected, or undecided with ``"drop"``).
        from_cache: images read from the mask cache's image store.
        downloaded: images downloaded from CDF.
    """

    out: Path
    format: str
    images: int = 0
    objects: int = 0
    empty: int = 0
    dropped: int = 0
    from_cache: int = 0
    downloaded: int = 0

    def summary(self) -> str:
        """One line for people."""
        tail = left_out(self.dropped, self.empty)
        return (f"{self.format} export: {self.images} images, {self.objects} objects{tail}; "
                f"images: {self.from_cache} from the cache, {self.downloaded} downloaded")


def left_out(dropped: int, empty: int) -> str:
    """What an export left out, as a parenthesis for a summary line (empty when nothing)."""
    extra = []
    if dropped:
        extra.append(f"{dropped} left out by the review decisions")
    if empty:
        extra.append(f"{empty} empty masks skipped")
    return f" ({'; '.join(extra)})" if extra else ""
