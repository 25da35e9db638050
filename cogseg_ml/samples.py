"""Samples: one image (a CDF file) with the prompts of the objects to segment in it.

The dataset and the labeler take the same samples. Constructors read them from a plain list,
from a COCO detection file (its boxes become box prompts, its categories carried over), or from
CDF object-detection annotations (their boxes and labels).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogseg_ml.errors import PromptValidationError, ValidationError
from cogseg_ml.prompts import Box, FileRef, Point, Prompt

if TYPE_CHECKING:
    from cogseg_ml.api.client import SegmentationClient

__all__ = ["UNLABELLED", "Category", "CategoryTable", "Instance", "Sample", "image_ids",
           "samples_from_annotations", "samples_from_coco", "samples_from_records"]

UNLABELLED = "object"
"""The class of instances given without a category (a real foreground class, never 0)."""


@dataclass(frozen=True)
class Instance:
    """One object to segment: its prompt, optional category name and (from COCO) its id."""

    prompt: Prompt
    category: str | None = None
    category_id: int | None = None


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


@dataclass(frozen=True)
class Category:
    """A class: its id (a COCO ``category_id`` and a training label, never 0) and name."""

    id: int
    name: str


class CategoryTable:
    """The classes of a run: name to id, shared by the labeler's COCO file and the dataset.

    Built from what the caller gives and what the samples hold (:meth:`build`). Ids are never
    0, which torchvision's detection models reserve for the background: a COCO file's own ids
    are kept (gaps included), names without ids are numbered from 1 in the order given, and
    instances without a category get the :data:`UNLABELLED` class.
    """

    def __init__(self, categories: Iterable[Category]) -> None:
        self.categories = tuple(sorted(categories, key=lambda c: c.id))
        self._by_name: dict[str, int] = {}
        for c in self.categories:
            if not isinstance(c.id, int) or isinstance(c.id, bool) or c.id < 1:
                raise ValidationError(f"category {c.name!r} has id {c.id!r}: ids are ints >= 1 "
                                      "(0 is the background class of detection models)")
            if c.name in self._by_name:
                raise ValidationError(f"category {c.name!r} is listed twice")
            self._by_name[c.name] = c.id
        ids = [c.id for c in self.categories]
        if len(set(ids)) != len(ids):
            raise ValidationError(f"category ids must be unique, got {ids}")

    def __repr__(self) -> str:
        return f"CategoryTable({[(c.id, c.name) for c in self.categories]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CategoryTable) and self.categories == other.categories

    __hash__ = None  # type: ignore[assignment]

    @property
    def names(self) -> list[str]:
        """Category names in id order."""
        return [c.name for c in self.categories]

    @property
    def num_classes(self) -> int:
        """``num_classes`` for a torchvision detection model (largest id + 1, background 0)."""
        return max((c.id for c in self.categories), default=0) + 1

    def as_coco(self) -> list[dict[str, Any]]:
        """The COCO ``categories`` list."""
        return [{"id": c.id, "name": c.name} for c in self.categories]

    def id_of(self, name: str | None, where: str = "an instance") -> int:
        """The id of a category name (``None``: the :data:`UNLABELLED` class).

        Raises:
            ValidationError: the name is not among the categories (naming it and ``where``).
        """
        key = UNLABELLED if name is None else name
        try:
            return self._by_name[key]
        except KeyError:
            raise ValidationError(
                f"category {key!r} of {where} is not among the categories {self.names}: add it "
                "to categories=[...] or fix the sample") from None

    @classmethod
    def build(cls, categories: Sequence[str | Category | Mapping[str, Any]] | None,
              samples: Iterable[Sample] = ()) -> CategoryTable:
        """The table for ``samples``, from the caller's ``categories`` or from the samples.

        ``categories``: names (ids 1, 2, ... in that order), :class:`Category` objects or COCO
        ``{"id", "name"}`` mappings; when ``None``, the samples' own categories: their COCO ids
        where every named instance has one, else their names sorted and numbered from 1. An
        :data:`UNLABELLED` class is added (next free id) when some instance has no category.

        Raises:
            ValidationError: a sample names a category not in ``categories``, one name has two
                ids in the samples, or the categories are malformed.
        """
        samples = list(samples)
        insts = [(s, inst) for s in samples for inst in s.instances]
        table: list[Category]
        if categories is not None:
            table = [_category(c, k) for k, c in enumerate(categories)]
        else:
            named = [inst for _, inst in insts if inst.category is not None]
            if named and all(inst.category_id is not None for inst in named):
                pairs: dict[str, int] = {}
                for inst in named:
                    assert inst.category is not None and inst.category_id is not None
                    if pairs.setdefault(inst.category, inst.category_id) != inst.category_id:
                        raise ValidationError(
                            f"category {inst.category!r} has two ids in the samples "
                            f"({pairs[inst.category]} and {inst.category_id})")
                table = [Category(i, n) for n, i in pairs.items()]
            else:
                names = sorted({inst.category for inst in named if inst.category is not None})
                table = [Category(k + 1, n) for k, n in enumerate(names)]
        if any(inst.category is None for _, inst in insts) and \
                all(c.name != UNLABELLED for c in table):
            table.append(Category(max((c.id for c in table), default=0) + 1, UNLABELLED))
        out = cls(table)
        for s, inst in insts:  # every sample's category must be known: fail before any work
            out.id_of(inst.category, f"sample {s.file.describe()}")
        return out


def _category(raw: str | Category | Mapping[str, Any], k: int) -> Category:
    if isinstance(raw, Category):
        return raw
    if isinstance(raw, str):
        return Category(k + 1, raw)
    if isinstance(raw, Mapping) and "id" in raw and "name" in raw:
        return Category(raw["id"], str(raw["name"]))
    raise ValidationError(f"categories[{k}] must be a name, a Category or a mapping with 'id' "
                          f"and 'name', got {raw!r}")


def image_ids(samples: Iterable[Sample]) -> Iterator[tuple[Sample, int]]:
    """Each sample with its COCO image id (streamed): one id per file, stable for an input order.

    A sample read from COCO (``meta["coco_image_id"]``) keeps its input id; any other file gets
    the next id after the largest seen so far, in order of first appearance. The labeler's COCO
    file and the dataset's ``target["image_id"]`` both use this, so predictions evaluated
    against one line up with the other.
    """
    given: dict[FileRef, int] = {}
    top = 0
    for s in samples:
        iid = s.meta.get("coco_image_id") if isinstance(s.meta, Mapping) else None
        if iid is None:
            iid = given.get(s.file)
            if iid is None:
                iid = top + 1
        iid = int(iid)
        given.setdefault(s.file, iid)
        top = max(top, iid)
        yield s, iid


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
        cid = ann.get("category_id")
        if cid is not None and cid not in cats:
            raise ValidationError(f"{path}: annotation {ann.get('id')} has category_id {cid}, "
                                  f"which is not among the file's categories {sorted(cats)}")
        per_image.setdefault(img["id"], []).append(
            Instance(Prompt(box=box), cats.get(cid), None if cid is None else int(cid)))
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
