"""What every export reads: a labels file (checked to be ours), review decisions applied, and
each image with its bytes, a file name to save it under, and its masks.

Image file names come from the labels' ``file_name`` (the CDF name): its last path part, with
characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``, and the suffix
of the image's actual format (``.png``, ``.jpg``, ...). Two images whose names would clash
(compared without case, as some file systems do) get ``-<image id>`` after the stem of the
second, so every image and its YOLO label file have a name of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cogseg_ml.coco_io import read_labels, segmentation_rle
from cogseg_ml.errors import ValidationError
from cogseg_ml.mask_codec import Rle, decode
from cogseg_ml.store.image_fetcher import ImageFetcher

__all__ = ["Labelled", "LabelledImage", "Undecided"]

Undecided = Literal["drop", "keep"]

#: Pillow format name -> file suffix (formats trainers read; others keep a lower-case name).
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tif",
            "WEBP": ".webp", "GIF": ".gif"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_KNOWN_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
MAX_STEM = 120


@dataclass(frozen=True)
class LabelledImage:
    """One image of an export.

    Attributes:
        record: the labels' COCO image (``id``, ``file_name``, ``height``, ``width``,
            ``cdf_file``, ``sha256``).
        file_name: the unique, safe name to save its bytes under.
        data: its bytes (as stored in CDF; never re-encoded).
        annotations: its COCO annotations after the decisions, in file order.
    """

    record: dict[str, Any]
    file_name: str
    data: bytes
    annotations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """The file name without its suffix (YOLO's label file is ``<stem>.txt``)."""
        return Path(self.file_name).stem

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.record["height"])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.record["width"])

    def rle(self, annotation: Mapping[str, Any]) -> Rle:
        """An annotation's mask as RLE (from RLE or polygons)."""
        return segmentation_rle(annotation["segmentation"], self.height, self.width)

    def mask(self, annotation: Mapping[str, Any]) -> np.ndarray:
        """An annotation's mask, ``(H, W)`` bool."""
        mask: np.ndarray = decode([self.rle(annotation)])[0]
        return mask


class Labelled:
    """A labels file ready to export: read and checked, decisions applied.

    Args:
        labels: the COCO file a labelling run wrote.
        decisions: a review decisions file for it (its accepted masks are kept), or ``None``.
        undecided: with ``decisions``, what becomes of masks without a decision.

    Raises:
        ValidationError: the labels are not ours or malformed; the decisions were saved for
            another labels file (both named) or are malformed.
    """

    def __init__(self, labels: str | Path, decisions: str | Path | None = None,
                 undecided: Undecided = "drop") -> None:
        self.path = Path(labels)
        self.coco = read_labels(self.path)
        self.total_annotations = len(self.coco["annotations"])
        if decisions is not None:
            from cogseg_ml.review.decisions import apply_decisions, load_decisions

            chosen = load_decisions(decisions, self.coco, self.path.name)
            self.coco = apply_decisions(self.coco, chosen, undecided)
        elif undecided != "drop":
            raise ValidationError("undecided applies with decisions only (a review decisions "
                                  "file)")
        self.categories: list[dict[str, Any]] = sorted(self.coco["categories"],
                                                        key=lambda c: int(c["id"]))
        self.by_image: dict[int, list[dict[str, Any]]] = {
            int(im["id"]): [] for im in self.coco["images"]}
        for ann in self.coco["annotations"]:
            self.by_image[int(ann["image_id"])].append(ann)

    @property
    def images(self) -> list[dict[str, Any]]:
        """The COCO images, in file order."""
        return list(self.coco["images"])

    @property
    def annotations(self) -> int:
        """Annotations kept (after the decisions)."""
        return len(self.coco["annotations"])

    @property
    def dropped(self) -> int:
        """Annotations the decisions removed."""
        return self.total_annotations - self.annotations

    def each(self, fetcher: ImageFetcher) -> Iterator[LabelledImage]:
        """Every image with its bytes and a unique file name, in file order (one in memory at
        a time). Call ``fetcher.check(self.images)`` first to refuse missing images up front."""
        taken: set[str] = set()
        for record in self.coco["images"]:
            data, fmt = fetcher.get(record)
            name = _file_name(record, fmt, taken)
            yield LabelledImage(record, name, data, self.by_image[int(record["id"])])


def _file_name(record: Mapping[str, Any], fmt: str | None, taken: set[str]) -> str:
    """A safe file name for the image, unique among ``taken`` (stems, lower case; updated)."""
    base = str(record["file_name"]).replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = base.rpartition(".")
    if not dot or f".{suffix.lower()}" not in _KNOWN_SUFFIXES:
        stem = base
    stem = _UNSAFE.sub("_", stem).strip("._") or f"image-{record['id']}"
    stem = stem[:MAX_STEM]
    if stem.lower() in taken:
        stem = f"{stem}-{record['id']}"
        n = 2
        while stem.lower() in taken:
            stem = f"{stem.rsplit('~', 1)[0]}~{n}"
            n += 1
    taken.add(stem.lower())
    return stem + SUFFIXES.get(fmt or "", f".{(fmt or 'img').lower()}")
