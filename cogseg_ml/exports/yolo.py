"""YOLO segmentation export in the Ultralytics dataset layout.

Layout::

    OUT/
      data.yaml                  path, train, val, nc, names (0-based ids, categories by COCO id)
      images/train/<name>.png    the labelled images' bytes as stored in CDF
      labels/train/<name>.txt    one object a line: class x1 y1 x2 y2 ... (normalised to 0..1)
      images/val/, labels/val/   with val_fraction > 0

Every image gets a label file, empty when it has no masks (Ultralytics reads that as a
background image). ``val_fraction`` sends each image to ``val`` by a hash of its CDF reference,
so the split is the same on every export of the same files (each split gets at least one image
when there are two or more); with 0 (the default) ``val`` names the training images too, as
Ultralytics requires a ``val`` entry.

**Holes and parts.** A YOLO line holds one polygon; there is no way to mark a hole. Each mask is
written as the single ring of :func:`~cogseg_ml.mask_codec.mask_to_ring`: every part and hole,
joined by zero-width cuts (a segment walked there and back). A filler that takes a pixel when
its centre is inside (even-odd or non-zero winding alike) gives back exactly the mask: the cuts
cancel, holes stay empty. Ultralytics itself resamples each polygon to 1000 points and fills it
with OpenCV's ``fillPoly``, which paints outlines too, so there the cuts become lines one pixel
wide and edges move by under a pixel. Corner coordinates are pixel corners (0..width), written
with enough decimals to land within 0.01 pixel.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import cogseg_ml.strict_json as strict_json
from cogseg_ml.errors import ValidationError
from cogseg_ml.exports.labelled import Labelled, LabelledImage
from cogseg_ml.exports.report import ExportReport
from cogseg_ml.mask_codec import mask_to_ring
from cogseg_ml.store.image_fetcher import ImageFetcher
from cogseg_ml.version import __version__

__all__ = ["label_lines", "write_yolo"]


def _decimals(height: int, width: int) -> int:
    """Decimals of a normalised coordinate so that it lands within 0.01 pixel."""
    return max(6, math.ceil(math.log10(max(height, width) * 50)))


def _number(v: float, decimals: int) -> str:
    text = f"{v:.{decimals}f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def label_lines(item: LabelledImage, class_of: dict[int, int]) -> tuple[list[str], int]:
    """The image's label file lines (one per non-empty mask) and how many masks were empty."""
    decimals = _decimals(item.height, item.width)
    lines, empty = [], 0
    for ann in item.annotations:
        ring = mask_to_ring(item.mask(ann))
        if not ring:
            empty += 1
            continue
        coords = " ".join(f"{_number(x / item.width, decimals)} "
                          f"{_number(y / item.height, decimals)}" for x, y in ring)
        lines.append(f"{class_of[int(ann['category_id'])]} {coords}")
    return lines, empty


def _splits(records: list[dict[str, Any]], val_fraction: float) -> dict[int, str]:
    """Each image's split, by a hash of its CDF reference: ``val`` below ``val_fraction``.

    With a fraction above 0 and two images or more, each split gets at least one image.
    """
    def rank(record: dict[str, Any]) -> float:
        key = strict_json.dumps(record.get("cdf_file"), sort_keys=True) + f"#{record['id']}"
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0 ** 64

    ranks = {int(r["id"]): rank(r) for r in records}
    out = {i: ("val" if val_fraction > 0 and h < val_fraction else "train")
           for i, h in ranks.items()}
    if val_fraction > 0 and len(out) >= 2:
        ordered = sorted(ranks, key=lambda i: ranks[i])
        if "val" not in out.values():
            out[ordered[0]] = "val"
        if "train" not in out.values():
            out[ordered[-1]] = "train"
    return out


def write_yolo(labelled: Labelled, fetcher: ImageFetcher, folder: Path, *, final: Path,
               val_fraction: float = 0.0) -> ExportReport:
    """Write the YOLO export into ``folder`` (an empty folder that becomes ``final``)."""
    if not (isinstance(val_fraction, int | float) and 0.0 <= val_fraction < 1.0):
        raise ValidationError(f"val_fraction must be at least 0 and below 1, got "
                              f"{val_fraction!r}")
    report = ExportReport(folder, "yolo")
    class_of = {int(c["id"]): i for i, c in enumerate(labelled.categories)}
    split_of = _splits(labelled.images, val_fraction)
    splits = set(split_of.values()) | {"train"}
    for split in splits:
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
    for item in labelled.each(fetcher):
        split = split_of[int(item.record["id"])]
        (folder / "images" / split / item.file_name).write_bytes(item.data)
        lines, empty = label_lines(item, class_of)
        (folder / "labels" / split / f"{item.stem}.txt").write_text(
            "".join(line + "\n" for line in lines), encoding="utf-8")
        report.images += 1
        report.objects += len(lines)
        report.empty += empty
    val = "images/val" if "val" in splits else "images/train"
    names = "".join(f"  {i}: {strict_json.dumps(c['name'], ensure_ascii=False)}\n"
                    for i, c in enumerate(labelled.categories))
    (folder / "data.yaml").write_text(
        f"# Ultralytics YOLO segmentation dataset, written by cogseg_ml {__version__}.\n"
        "# One polygon per object: an object's parts and holes are joined into one ring by\n"
        "# zero-width cuts (filled by pixel centres, the ring gives back the mask exactly).\n"
        f"path: {strict_json.dumps(str(final), ensure_ascii=False)}\n"
        "train: images/train\n"
        f"val: {val}\n"
        f"nc: {len(labelled.categories)}\n"
        "names:\n" + (names or "  {}\n"), encoding="utf-8")
    return report
