"""COCO export: a self-contained dataset folder (``images/`` and ``annotations.json``).

Layout::

    OUT/
      annotations.json     COCO instance segmentation; file_name relative to images/
      images/<name>.png    the labelled images' bytes as stored in CDF

``annotations.json`` is written by :class:`~cogseg_ml.coco_io.CocoWriter`, the one COCO writer:
image and annotation ids, ``cdf_file``, ``sha256``, scores and provenance are those of the
labels file, so review decisions and ground truth keep naming the same masks, and the file can
be exported again. ``segmentation="rle"`` writes compressed RLE, ``"polygon"`` one ring per
part with its holes joined in by zero-width cuts; both rasterise back to the exact mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogseg_ml.coco_io import LABELS_DESCRIPTION, CocoWriter, SegmentationFormat
from cogseg_ml.errors import ValidationError
from cogseg_ml.exports.labelled import Labelled
from cogseg_ml.exports.report import ExportReport
from cogseg_ml.store.image_fetcher import ImageFetcher

__all__ = ["write_coco"]

_STANDARD = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd",
             "score"}


def write_coco(labelled: Labelled, fetcher: ImageFetcher, folder: Path, *,
               segmentation: SegmentationFormat = "rle") -> ExportReport:
    """Write the COCO export into ``folder`` (an empty folder; see :mod:`.folder`)."""
    if segmentation not in ("rle", "polygon"):
        raise ValidationError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")
    report = ExportReport(folder, "coco")
    (folder / "images").mkdir()
    with CocoWriter(folder / "annotations.json", labelled.categories, segmentation=segmentation,
                    description=LABELS_DESCRIPTION) as out:
        for item in labelled.each(fetcher):
            (folder / "images" / item.file_name).write_bytes(item.data)
            extra: dict[str, Any] = {k: v for k, v in item.record.items()
                                     if k not in ("id", "file_name", "height", "width")}
            key = str(item.record["id"])
            out.add_image(key, file_name=item.file_name, height=item.height, width=item.width,
                          image_id=int(item.record["id"]), **extra)
            report.images += 1
            for ann in item.annotations:
                kept = out.add_annotation(
                    key, int(ann["category_id"]), item.rle(ann), float(ann.get("score", 1.0)),
                    annotation_id=int(ann["id"]),
                    **{k: v for k, v in ann.items() if k not in _STANDARD})
                if kept is None:
                    report.empty += 1
                else:
                    report.objects += 1
    return report
