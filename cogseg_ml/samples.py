"""Samples: one image (a CDF file) with the prompts of the objects to segment in it.

The dataset and the labeler take the same samples. Constructors read them from a plain list,
from a COCO detection file (its boxes become box prompts, its categories carried over), or from
CDF object-detection annotations (their boxes and labels).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogseg_ml.errors import PromptValidationError, ValidationError
from cogseg_ml.prompts import Box, FileRef, Point, Prompt

if TYPE_CHECKING:
    from cogseg_ml.api.client import SegmentationClient

__all__ = ["Instance", "Sample", "samples_from_annotations", "samples_from_coco",
           "samples_from_records"]


@dataclass(frozen=True)
class Instance:
    """One object to segment: its prompt and optional category name."""

    prompt: Prompt
    category: str | None = None


@dataclass(frozen=True)
class Sample:
    """One image and its instances (at least one)."""

    file: FileRef
    instances: tuple[Instance, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.file, FileRef):
            raise ValidationError("Sample.file must be a FileRef")
        if not self.instances:
            raise ValidationError(f"sample {self.file.describe()} has no instances to segment")
        object.__setattr__(self, "instances", tuple(self.instances))


def _instance(raw: Mapping[str, Any], where: str) -> Instance:
    try:
        prompt = Prompt.of(raw.get("points"), raw.get("box"))
    except PromptValidationError as exc:
        raise PromptValidationError(f"{where}: {exc}") from None
    cat = raw.get("category")
    return Instance(prompt, None if cat is None else str(cat))


def samples_from_records(records: Iterable[Mapping[str, Any]]) -> list[Sample]:
    """Samples from plain records; instances of one file are grouped in input order.

    Each record: ``{"file": 123 | "external-id" | {"id": ...}, "points": [[x, y, label], ...],
    "box": [x0, y0, x1, y1], "category": "valve"}`` (normalized coordinates), or
    ``{"file": ..., "instances": [{...}, ...]}``.

    Raises:
        ValidationError: naming the record (by position) and the bad field.
    """
    grouped: dict[FileRef, list[Instance]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "file" not in rec:
            raise ValidationError(f"record {i} needs a 'file' (id, external id or mapping)")
        try:
            ref = FileRef.parse(rec["file"])
        except ValidationError as exc:
            raise ValidationError(f"record {i}: {exc}") from None
        raws = rec["instances"] if "instances" in rec else [rec]
        grouped.setdefault(ref, []).extend(_instance(r, f"record {i}") for r in raws)
    return [Sample(ref, tuple(insts)) for ref, insts in grouped.items()]


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON list or JSON Lines file of records."""
    text = Path(path).read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValidationError(f"{path}: expected a JSON list of records")
        return data
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValidationError(f"{path}:{n}: not JSON ({exc.msg})") from None
    return out


def samples_from_coco(path: str | Path, *, file_key: str = "file_name") -> list[Sample]:
    """Samples from a COCO detection file: each box becomes a box prompt.

    Args:
        path: the COCO JSON file.
        file_key: the image field naming the CDF file: ``"file_name"`` (taken as the external
            id), or a field holding the internal id (e.g. ``"cdf_file_id"``).

    Boxes are COCO ``[x, y, w, h]`` in pixels, normalized by the image's width and height;
    categories are carried over by name. Crowd annotations are skipped.
    """
    data = json.loads(Path(path).read_text())
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    images = {img["id"]: img for img in data.get("images", [])}
    per_image: dict[int, list[Instance]] = {}
    for ann in data.get("annotations", []):
        if ann.get("iscrowd"):
            continue
        img = images.get(ann["image_id"])
        if img is None:
            raise ValidationError(f"{path}: annotation {ann.get('id')} names unknown image "
                                  f"{ann['image_id']}")
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = Box.from_xywh_pixels(x, y, w, h, width=img["width"], height=img["height"])
        except PromptValidationError as exc:
            raise PromptValidationError(f"{path}: annotation {ann.get('id')}: {exc}") from None
        per_image.setdefault(img["id"], []).append(
            Instance(Prompt(box=box), cats.get(ann.get("category_id"))))
    out = []
    for img_id, insts in per_image.items():
        img = images[img_id]
        ident = img[file_key]
        ref = FileRef(external_id=str(ident)) if file_key == "file_name" else FileRef.parse(ident)
        out.append(Sample(ref, tuple(insts), meta={"coco_image_id": img_id,
                                                   "width": img["width"],
                                                   "height": img["height"]}))
    return out


def samples_from_annotations(client: SegmentationClient, file_ids: Sequence[int], *,
                             status: str | None = "approved",
                             creating_app: str | None = None) -> list[Sample]:
    """Samples from CDF ``images.ObjectDetection`` annotations that carry a bounding box.

    Each annotation's box becomes a box prompt and its label the category; annotations with a
    polygon or polyline instead of a box are skipped.
    """
    per_file: dict[int, list[Instance]] = {}
    for ann in client.list_annotations(file_ids, annotation_type="images.ObjectDetection",
                                       status=status, creating_app=creating_app):
        bb = ann.data.get("boundingBox")
        if not isinstance(bb, Mapping):
            continue
        box = Box(bb["xMin"], bb["yMin"], bb["xMax"], bb["yMax"])
        label = ann.data.get("label")
        per_file.setdefault(ann.annotated_resource_id, []).append(
            Instance(Prompt(box=box), None if label is None else str(label)))
    return [Sample(FileRef(id=fid), tuple(insts)) for fid, insts in per_file.items()]


def point_instance(x: float, y: float, category: str | None = None) -> Instance:
    """Shorthand: one foreground point."""
    return Instance(Prompt(points=(Point(x, y, 1),)), category)
