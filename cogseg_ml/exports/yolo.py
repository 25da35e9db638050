"""YOLO segmentation export in the Ultralytics dataset layout.

Layout::

    OUT/
      data.yaml                  train, val, nc, names (0-based ids, categories by COCO id)
      images/train/<name>.png    the labelled images' bytes as stored in CDF
      labels/train/<name>.txt    one polygon a line: class x1 y1 x2 y2 ... (normalised to 0..1)
      images/val/, labels/val/   with val_fraction > 0

Every image gets a label file, empty when it has no masks (Ultralytics reads that as a
background image). ``val_fraction`` sends each image to ``val`` by a hash of its CDF reference,
so the split is the same on every export of the same files (each split gets at least one image
when there are two or more); with 0 (the default) ``val`` names the training images too, as
Ultralytics requires a ``val`` entry. ``data.yaml`` has no ``path:``: Ultralytics then reads the
splits beside the yaml, so the folder still trains after it is moved or copied.

**Exact in the readers that train on it.** Ultralytics (``polygon2mask``) and supervision
(``from_yolo``) read a line as float32, scale it by the image's size, take each vertex to a
pixel (Ultralytics truncates, supervision rounds) and fill with OpenCV's ``fillPoly``, which
paints the polygon's outline as well as its inside. Each mask is written with
:func:`~cogseg_ml.mask_codec.mask_to_inset_rings`: every vertex in the top-left quarter of a
boundary pixel of the mask, so at the image's own size both fill exactly the mask (holes by
zero-width cuts down a column of the object's own pixels, which paint nothing outside it).
Coordinates keep enough decimals to land within 1/128 pixel (exact for image sides up to
65,536 pixels, the limit of float32 readers). A reader that takes a pixel when its centre is
inside the polygon misses the right and bottom boundary pixels: the COCO export is the exact
format for such readers.

**Objects in several pieces** (``parts``). A YOLO line is one polygon, and OpenCV paints any cut
between two pieces as a line one pixel wide across the background. ``"separate"`` (the
default) writes one line per piece (pixels that touch at a corner are one piece), each exact:
the pieces come back as instances of the object's class. ``"joined"`` writes one line per mask,
pieces joined by cuts between their closest vertices: one instance per object, plus each cut's
line of pixels.
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
from cogseg_ml.mask_codec import InsetParts, mask_to_inset_rings
from cogseg_ml.store.image_fetcher import ImageFetcher
from cogseg_ml.version import __version__

__all__ = ["label_lines", "write_yolo"]


def _decimals(height: int, width: int) -> int:
    """Decimals of a normalised coordinate so that it lands within 1/128 pixel (the vertices
    sit 1/16 pixel inside their pixel: readers that truncate find the intended pixel)."""
    return max(6, math.ceil(math.log10(max(height, width) * 64)))


def _number(v: float, decimals: int) -> str:
    text = f"{v:.{decimals}f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def label_lines(item: LabelledImage, class_of: dict[int, int],
                parts: InsetParts = "separate") -> tuple[list[str], int]:
    """The image's label file lines and how many masks were empty.

    One line per non-empty mask with ``parts="joined"``; one per piece of each mask with
    ``"separate"`` (see :mod:`cogseg_ml.exports.yolo`).
    """
    decimals = _decimals(item.height, item.width)
    lines, empty = [], 0
    for ann in item.annotations:
        rings = mask_to_inset_rings(item.mask(ann), parts=parts)
        if not rings:
            empty += 1
        cls = class_of[int(ann["category_id"])]
        for ring in rings:
            coords = " ".join(f"{_number(x / item.width, decimals)} "
                              f"{_number(y / item.height, decimals)}" for x, y in ring)
            lines.append(f"{cls} {coords}")
    return lines, empty


_PARTS_NOTE = {
    "separate": "One line per piece of an object; OpenCV's fillPoly (Ultralytics, supervision)\n"
                "# fills each line back to exactly its piece.",
    "joined": "One line per object, its pieces joined by cuts; OpenCV's fillPoly (Ultralytics,\n"
              "# supervision) fills it back to the mask plus a one-pixel line along each cut.",
}


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


def write_yolo(labelled: Labelled, fetcher: ImageFetcher, folder: Path, *,
               val_fraction: float = 0.0, parts: InsetParts = "separate") -> ExportReport:
    """Write the YOLO export into ``folder`` (an empty folder; ``data.yaml`` names no absolute
    path, so the folder can be moved or copied: Ultralytics reads the splits beside the yaml).
    """
    if parts not in ("separate", "joined"):
        raise ValidationError(f"parts must be 'separate' or 'joined', got {parts!r}")
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
        lines, empty = label_lines(item, class_of, parts)
        (folder / "labels" / split / f"{item.stem}.txt").write_text(
            "".join(line + "\n" for line in lines), encoding="utf-8")
        report.images += 1
        report.objects += len(item.annotations) - empty
        report.empty += empty
    val = "images/val" if "val" in splits else "images/train"
    names = "".join(f"  {i}: {strict_json.dumps(c['name'], ensure_ascii=False)}\n"
                    for i, c in enumerate(labelled.categories))
    (folder / "data.yaml").write_text(
        f"# Ultralytics YOLO segmentation dataset, written by cogseg_ml {__version__}.\n"
        "# No `path:`: Ultralytics reads the splits beside this file, wherever it is moved.\n"
        f"# {_PARTS_NOTE[parts]}\n"
        "train: images/train\n"
        f"val: {val}\n"
        f"nc: {len(labelled.categories)}\n"
        "names:\n" + (names or "  {}\n"), encoding="utf-8")
    return report
