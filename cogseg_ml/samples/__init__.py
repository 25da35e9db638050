"""Samples: one image (a CDF file) with the prompts of the objects to segment in it.

The dataset and the labeler take the same samples. Constructors read them from a plain list,
from a COCO detection file (its boxes become box prompts, its categories carried over), or from
CDF object-detection annotations (their boxes and labels).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cogseg_ml.strict_json as strict_json
from cogseg_ml.errors import PromptValidationError, ValidationError
from cogseg_ml.prompts import Box, FileRef, Point, Prompt, box_corners

if TYPE_CHECKING:
    from cogseg_ml.api.client import SegmentationClient

__all__ = ["UNLABELLED", "AnnotationSamples", "BadPromptPolicy", "Category", "CategoryTable",
           "CocoSamples", "Instance", "PromptRecords", "Sample", "image_ids", "load_records",
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


# --- reading prompt files -------------------------------------------------------------------

BadPromptPolicy = Literal["fail", "skip", "clip"]
"""What to do with prompts that cannot be used as given (see :func:`samples_from_coco`)."""

_POLICIES = ("fail", "skip", "clip")
_LISTED = 5  # bad prompts named in an error or warning; the rest are counted
_WS = re.compile(r"[ \t\n\r]*")
_log = logging.getLogger("cogseg_ml.samples")


class PromptRecords(list[dict[str, Any]]):
    """Records read by :func:`load_records`, remembering where each one came from.

    Attributes:
        path: the file read.
        locations: one per record: ``"line 11"`` (JSON Lines, 1-based file lines, blank lines
            counted) or ``"record 11 (1-based), line 14"`` (a JSON list).
    """

    def __init__(self, records: Iterable[dict[str, Any]], *, path: str,
                 locations: Sequence[str]) -> None:
        super().__init__(records)
        self.path = path
        self.locations = list(locations)


class CocoSamples(list[Sample]):
    """The samples of a COCO file (:func:`samples_from_coco`) with every category the file
    lists, used by an annotation or not, in file order.

    Pass ``categories=samples.categories`` to :class:`~cogseg_ml.labeler.SegmentationLabeler`
    so the labels file (and every export of it) keeps the input's class numbering: a train and
    a val split of one source then agree on every class id, whichever classes each uses.
    """

    def __init__(self, samples: Iterable[Sample], *, categories: Sequence[Category]) -> None:
        super().__init__(samples)
        self.categories = list(categories)


class AnnotationSamples(list[Sample]):
    """The samples of :func:`samples_from_annotations`, with what was read and skipped.

    Attributes:
        read: the annotations CDF returned (of the type and status asked for).
        skipped: annotations that gave no prompt, counted by reason.
        status: the status asked for (``None``: any).
    """

    def __init__(self, samples: Iterable[Sample], *, read: int, skipped: Counter[str],
                 status: str | None) -> None:
        super().__init__(samples)
        self.read = read
        self.skipped = skipped
        self.status = status

    def summary(self) -> str:
        """One line: annotations read, prompts made, skipped by reason."""
        which = f"{self.status} " if self.status else ""
        prompts = sum(len(s.instances) for s in self)
        skips = ", ".join(f"{n} with {why}" for why, n in self.skipped.most_common())
        return (f"{self.read} {which}ObjectDetection annotations read: {prompts} box prompts"
                f" on {len(self)} files" + (f"; skipped {skips}" if skips else ""))


class _Triage:
    """Collects the bad prompts of one input and applies the ``on_bad_prompt`` policy."""

    def __init__(self, policy: str, source: str | None) -> None:
        if policy not in _POLICIES:
            raise ValidationError(f"on_bad_prompt must be one of 'fail', 'skip', 'clip', "
                                  f"got {policy!r}")
        self.policy = policy
        self.source = source
        self.bad: list[str] = []
        self.clipped = 0

    @property
    def clip(self) -> bool:
        return self.policy == "clip"

    def reject(self, where: str, reason: object) -> None:
        self.bad.append(f"{where}: {reason}")

    def finish(self) -> None:
        """Raise (``fail``) or log one warning (``skip``, ``clip``) for what was collected."""
        n = len(self.bad)
        listed = "; ".join(self.bad[:_LISTED]) + (f"; and {n - _LISTED} more" if n > _LISTED
                                                   else "")
        src = f"{self.source}: " if self.source else ""
        if self.policy == "fail" and n:
            them = "them" if n > 1 else "it"
            raise PromptValidationError(
                f"{src}{n} bad prompt{_plural(n)}: {listed}. Fix {them}, or pass "
                f"on_bad_prompt='skip' to drop {them} or 'clip' to clip boxes to the image "
                "(CLI: --on-bad-prompt skip|clip)", bad_prompts=n, problems=tuple(self.bad))
        if self.policy == "skip" and n:
            _log.warning("%sskipped %d bad prompt%s: %s", src, n, _plural(n), listed)
        if self.policy == "clip" and (n or self.clipped):
            dropped = (f"; dropped {n} prompt{_plural(n)} that were empty once clipped or not "
                       f"usable: {listed}") if n else ""
            _log.warning("%sclipped %d box%s to the image%s", src, self.clipped,
                         "" if self.clipped == 1 else "es", dropped)


def _plural(n: int) -> str:
    return "" if n == 1 else "s"


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, a leading BOM dropped); ValidationError for what stops that."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValidationError(f"file not found: {path}", path=str(path)) from None
    except IsADirectoryError:
        raise ValidationError(f"{path} is a directory, not a file", path=str(path)) from None
    except PermissionError:
        raise ValidationError(f"cannot read {path}: permission denied", path=str(path)) from None
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror or exc}",
                              path=str(path)) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded); "
                              "save it as UTF-8", path=str(path)) from None


def _not_json(path: Path, exc: json.JSONDecodeError, where: str = "") -> ValidationError:
    return ValidationError(f"{path}{where}: not JSON: {exc.msg} at line {exc.lineno}, "
                           f"column {exc.colno}", path=str(path))


def _json_list(path: Path, text: str) -> tuple[list[Any], list[str]]:
    """The items of a JSON list with the 1-based record number and line of each."""
    items: list[Any] = []
    locations: list[str] = []
    i = _WS.match(text, 0).end() + 1  # type: ignore[union-attr]  # past the "["
    line, counted = 1, 0
    i = _WS.match(text, i).end()  # type: ignore[union-attr]
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            try:
                item, end = strict_json.raw_decode(text, i, str(path))
            except json.JSONDecodeError as exc:
                raise _not_json(path, exc) from None
            line += text.count("\n", counted, i)
            counted = i
            items.append(item)
            locations.append(f"record {len(items)} (1-based), line {line}")
            i = _WS.match(text, end).end()  # type: ignore[union-attr]
            if text.startswith(",", i):
                i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            elif text.startswith("]", i):
                i += 1
                break
            else:
                where = text.count("\n", 0, i) + 1
                raise ValidationError(f"{path}: not JSON: expected ',' or ']' after record "
                                      f"{len(items)} at line {where}", path=str(path))
    i = _WS.match(text, i).end()  # type: ignore[union-attr]
    if i < len(text):
        raise ValidationError(f"{path}: unexpected text after the list at line "
                              f"{text.count(chr(10), 0, i) + 1}", path=str(path))
    return items, locations


def _one_document_hint(text: str) -> str:
    """Why a file whose first line is not a record might still be JSON."""
    try:
        whole = strict_json.loads(text, "the file")
    except ValidationError:
        return ""
    if isinstance(whole, Mapping) and "images" in whole and "annotations" in whole:
        return ("; the file is one JSON object that looks like a COCO file: read it with "
                "samples_from_coco (CLI: --coco-boxes)")
    return ("; the file is one JSON document over several lines: prompts files hold one record "
            "per line (JSON Lines) or a JSON list of records")


def _json_lines(path: Path, text: str) -> tuple[list[Any], list[str]]:
    items: list[Any] = []
    locations: list[str] = []
    # Split on "\n" only: str.splitlines() also cuts at U+2028, which JSON strings may hold.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item, end = strict_json.raw_decode(line, len(line) - len(line.lstrip()),
                                               f"{path} line {n}")
            if line[end:].strip():
                raise json.JSONDecodeError("Extra data", line, end)
            items.append(item)
        except json.JSONDecodeError as exc:
            hint = _one_document_hint(text) if not items else ""
            raise ValidationError(f"{path} line {n}: not JSON ({exc.msg}, column {exc.colno})"
                                  f"{hint}", path=str(path)) from None
        locations.append(f"line {n}")
    return items, locations


def load_records(path: str | Path) -> PromptRecords:
    """Read a JSON list or JSON Lines file of records (UTF-8; a leading BOM is accepted).

    The result remembers each record's line, so :func:`samples_from_records` names it:
    ``"PATH line 11"`` for JSON Lines (the file's own 1-based line number, blank lines
    counted), ``"PATH record 11 (1-based), line 14"`` for a JSON list.

    Raises:
        ValidationError: ``file not found: PATH``, not readable, not UTF-8, empty, or not JSON
            (naming the line).
    """
    p = Path(path)
    text = _read_text(p)
    if not text.strip():
        raise ValidationError(f"{p} is empty: it holds no records", path=str(p))
    if text.lstrip(" \t\r\n").startswith("["):
        items, locations = _json_list(p, text)
    else:
        items, locations = _json_lines(p, text)
    return PromptRecords(items, path=str(p), locations=locations)


# --- samples from records -------------------------------------------------------------------


def _unit_box(raw: object, triage: _Triage) -> tuple[Box, bool]:
    """A normalized box from any accepted shape; with ``clip``, clipped to ``[0, 1]``."""
    corners = box_corners(raw)
    clipped = False
    if triage.clip:
        inside = tuple(min(max(v, 0.0), 1.0) for v in corners)
        if inside != corners:
            if not (inside[0] < inside[2] and inside[1] < inside[3]):
                raise PromptValidationError(f"box {list(corners)} is empty once clipped to "
                                            "[0, 1]")
            corners, clipped = (inside[0], inside[1], inside[2], inside[3]), True
    return Box.parse(corners), clipped


def _instance(raw: Mapping[str, Any], where: str, triage: _Triage) -> Instance | None:
    """One record's instance, or ``None`` when its prompt is bad (recorded in ``triage``)."""
    try:
        if "box" in raw and "boundingBox" in raw:
            raise PromptValidationError("has both 'box' and 'boundingBox': give one of them")
        box_raw = raw.get("box", raw.get("boundingBox"))
        box, clipped = (None, False) if box_raw is None else _unit_box(box_raw, triage)
        prompt = Prompt.of(raw.get("points"), box)
    except PromptValidationError as exc:
        triage.reject(where, exc)
        return None
    triage.clipped += clipped
    cat = raw.get("category")
    return Instance(prompt, None if cat is None else str(cat))


def samples_from_records(records: Iterable[Mapping[str, Any]], *,
                         on_bad_prompt: BadPromptPolicy = "fail") -> list[Sample]:
    """Samples from plain records; instances of one file are grouped in input order.

    Each record: ``{"file": 123 | "external-id" | {"id": ...}, "points": [[x, y, label], ...],
    "box": [x0, y0, x1, y1], "category": "valve"}`` (normalized coordinates), or
    ``{"file": ..., "instances": [{...}, ...]}``. Points and the box take every shape
    :meth:`Prompt.of` takes, CDF's wire objects included (``"points": [{"x", "y", "label"}]``,
    ``"box"`` or ``"boundingBox": {"xMin", "yMin", "xMax", "yMax"}``).

    Args:
        records: the records; :func:`load_records`'s result names file lines in errors, a
            plain list its 0-based positions (``record 0``).
        on_bad_prompt: ``"fail"`` (default) raises one error counting every bad prompt and
            listing the first few; ``"skip"`` drops them with one WARNING; ``"clip"`` clips
            boxes to ``[0, 1]`` and drops what is empty once clipped or bad otherwise (one
            WARNING with both counts). An instance is kept or dropped whole; a file left
            without instances gives no sample.

    Raises:
        PromptValidationError: bad prompts under ``"fail"`` (``bad_prompts`` holds the count,
            ``problems`` every one).
        ValidationError: a record that is not an object, lacks a usable ``file``, or has a
            malformed ``instances`` list (whatever the policy), naming the record.
    """
    src = records.path if isinstance(records, PromptRecords) else None
    triage = _Triage(on_bad_prompt, src)
    locations = records.locations if isinstance(records, PromptRecords) else None
    grouped: dict[FileRef, list[Instance]] = {}
    for i, rec in enumerate(records):
        where = locations[i] if locations is not None and i < len(locations) else f"record {i}"
        here = f"{src} {where}" if src else where
        if not isinstance(rec, Mapping) or "file" not in rec:
            coco = isinstance(rec, Mapping) and "images" in rec and "annotations" in rec
            raise ValidationError(f"{here}: needs a 'file' (id, external id or mapping)" + (
                "; this looks like a COCO file: read its boxes with samples_from_coco (CLI: "
                "--coco-boxes instead of --prompts)" if coco else ""))
        try:
            ref = FileRef.parse(rec["file"])
        except ValidationError as exc:
            raise ValidationError(f"{here}: {exc}") from None
        raws: list[tuple[str, Any]] = [(where, rec)]
        if "instances" in rec:
            given = rec["instances"]
            if isinstance(given, (str, bytes, Mapping)) or not isinstance(given, Sequence) \
                    or not given:
                raise ValidationError(f"{here}: 'instances' must be a non-empty list of "
                                      f"{{points, box, category}} objects, got {given!r}")
            raws = [(f"{where}, instances[{j}]", r) for j, r in enumerate(given)]
        insts = grouped.setdefault(ref, [])
        for w, raw in raws:
            if not isinstance(raw, Mapping):
                raise ValidationError(f"{src + ' ' if src else ''}{w}: an instance is an object "
                                      f"with points and/or a box, got {raw!r}")
            inst = _instance(raw, w, triage)
            if inst is not None:
                insts.append(inst)
    triage.finish()
    return [Sample(ref, tuple(insts)) for ref, insts in grouped.items() if insts]


# --- samples from COCO ----------------------------------------------------------------------


def _coco_list(data: Mapping[str, Any], key: str, src: str, required: bool = True) -> list[Any]:
    if key not in data:
        if not required:
            return []
        raise ValidationError(f"{src}: a COCO file needs {key!r} (a list); it has "
                              f"{sorted(data) or 'no keys'}")
    value = data[key]
    if not isinstance(value, list):
        raise ValidationError(f"{src}: {key!r} must be a list, got {type(value).__name__}")
    return value


def _coco_int(value: object) -> int | None:
    """A JSON integer (``640`` or ``640.0``) as an int; ``None`` when it is not one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    v = float(value)
    return int(v) if v.is_integer() else None


def _coco_images(data: Mapping[str, Any], src: str) -> dict[int, tuple[Mapping[str, Any], int,
                                                                       int]]:
    images: dict[int, tuple[Mapping[str, Any], int, int]] = {}
    for k, img in enumerate(_coco_list(data, "images", src)):
        if not isinstance(img, Mapping) or "id" not in img:
            raise ValidationError(f"{src}: images[{k}] must be an object with an 'id', "
                                  f"got {img!r}")
        iid = img["id"]
        if isinstance(iid, bool) or not isinstance(iid, int):
            raise ValidationError(f"{src}: images[{k}] has id {iid!r}: image ids are integers")
        if iid in images:
            raise ValidationError(f"{src}: image {iid} is listed twice")
        size = []
        for name in ("width", "height"):
            if name not in img:
                raise ValidationError(f"{src}: image {iid} has no {name} (COCO images need "
                                      "width and height in pixels)")
            v = _coco_int(img[name])
            if v is None or v <= 0:
                raise ValidationError(f"{src}: image {iid} has {name} {img[name]!r}: it must "
                                      "be a positive integer (pixels)")
            size.append(v)
        images[iid] = (img, size[0], size[1])
    return images


def _coco_categories(data: Mapping[str, Any], src: str) -> dict[int, str]:
    cats: dict[int, str] = {}
    for k, c in enumerate(_coco_list(data, "categories", src, required=False)):
        if not isinstance(c, Mapping) or "id" not in c or "name" not in c:
            raise ValidationError(f"{src}: categories[{k}] must be an object with 'id' and "
                                  f"'name', got {c!r}")
        if isinstance(c["id"], bool) or not isinstance(c["id"], int):
            raise ValidationError(f"{src}: categories[{k}] has id {c['id']!r}: category ids "
                                  "are integers")
        if not isinstance(c["name"], str) or not c["name"]:
            raise ValidationError(f"{src}: categories[{k}] has name {c['name']!r}: names are "
                                  "non-empty strings")
        if c["id"] in cats:
            raise ValidationError(f"{src}: categories[{k}] has id {c['id']}, which "
                                  f"{cats[c['id']]!r} has already: each category needs its own "
                                  "id; fix the categories list")
        if c["name"] in cats.values():
            first = next(i for i, n in cats.items() if n == c["name"])
            raise ValidationError(f"{src}: categories[{k}] is named {c['name']!r} like "
                                  f"category {first}: each category needs its own name; merge "
                                  "them or rename one")
        cats[c["id"]] = c["name"]
    return cats


def _coco_box(ann: Mapping[str, Any], width: int, height: int, where: str,
              triage: _Triage) -> Box | None:
    """The annotation's box, normalized; ``None`` when it is bad (recorded in ``triage``)."""
    raw = ann.get("bbox")
    if raw is None:
        triage.reject(where, "has no bbox" if "bbox" not in ann else 'has "bbox": null')
        return None
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) != 4 or \
            any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in raw):
        triage.reject(where, f"bbox must be 4 numbers [x, y, width, height] in pixels, "
                             f"got {raw!r}")
        return None
    x, y, w, h = (float(v) for v in raw)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        triage.reject(where, f"bbox {raw} holds a non-finite number")
        return None
    if w <= 0 or h <= 0:
        triage.reject(where, f"bbox {raw} has zero or negative {'width' if w <= 0 else 'height'}")
        return None
    corners = (x, y, x + w, y + h)
    if corners[0] < 0 or corners[1] < 0 or corners[2] > width or corners[3] > height:
        if not triage.clip:
            triage.reject(where, f"bbox {raw} reaches outside the {width}x{height} image")
            return None
        x0, y0 = max(corners[0], 0.0), max(corners[1], 0.0)
        x1, y1 = min(corners[2], float(width)), min(corners[3], float(height))
        if not (x0 < x1 and y0 < y1):
            triage.reject(where, f"bbox {raw} lies outside the {width}x{height} image")
            return None
        corners = (x0, y0, x1, y1)
        triage.clipped += 1
    try:
        return Box.from_pixels(*corners, width=width, height=height)
    except PromptValidationError as exc:
        triage.reject(where, f"bbox {raw} in the {width}x{height} image: {exc}")
        return None


def _coco_file(img: Mapping[str, Any], iid: int, file_key: str, src: str) -> FileRef:
    if file_key not in img:
        raise ValidationError(f"{src}: image {iid} has no {file_key!r} (the file_key naming "
                              "its CDF file)")
    ident = img[file_key]
    try:
        if file_key == "file_name":
            if not isinstance(ident, str):
                raise ValidationError(f"file_name must be a string, got {ident!r}")
            return FileRef(external_id=ident)
        return FileRef.parse(ident)
    except ValidationError as exc:
        raise ValidationError(f"{src}: image {iid}, {file_key}: {exc}") from None


def samples_from_coco(path: str | Path, *, file_key: str = "file_name",
                      on_bad_prompt: BadPromptPolicy = "fail") -> CocoSamples:
    """Samples from a COCO detection file: each box becomes a box prompt.

    Args:
        path: the COCO JSON file (UTF-8; a leading BOM is accepted).
        file_key: the image field naming the CDF file: ``"file_name"`` (taken as the external
            id), or a field holding the internal id (e.g. ``"cdf_file_id"``).
        on_bad_prompt: what to do with an annotation whose ``bbox`` cannot be used (missing,
            ``null``, not 4 numbers, zero or negative size, reaching outside the image):
            ``"fail"`` (default) raises one error counting them all and listing the first few;
            ``"skip"`` drops them with one WARNING; ``"clip"`` clips boxes to the image and
            drops those empty once clipped or bad otherwise (one WARNING with both counts).

    Boxes are COCO ``[x, y, w, h]`` in pixels, normalized by the image's width and height;
    categories are carried over by name and id. Crowd annotations are skipped; an image left
    without boxes gives no sample.

    Raises:
        ValidationError: the file is missing, not JSON, not a COCO object (``images`` and
            ``annotations`` lists), an image lacks a positive integer ``width``/``height`` or
            the ``file_key``, an annotation names a missing image or an unknown category
            (whatever the policy; naming the file and the image or annotation id).
        PromptValidationError: bad boxes under ``"fail"`` (``bad_prompts`` holds the count,
            ``problems`` every one).
    """
    p = Path(path)
    src = str(p)
    triage = _Triage(on_bad_prompt, src)
    text = _read_text(p)
    try:
        data, end = strict_json.raw_decode(text, len(text) - len(text.lstrip()), src)
        if text[end:].strip():
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as exc:
        err = _not_json(p, exc)
        if exc.msg == "Extra data":
            err = ValidationError(f"{err.message} (a COCO file is one JSON object; a prompts "
                                  "file in JSON Lines goes to samples_from_records(load_records("
                                  "...)), CLI: --prompts)", path=src)
        raise err from None
    if not isinstance(data, Mapping):
        raise ValidationError(f"{src}: a COCO file is a JSON object with 'images' and "
                              f"'annotations', got a JSON {_json_kind(data)}")
    images = _coco_images(data, src)
    cats = _coco_categories(data, src)
    per_image: dict[int, list[Instance]] = {}
    for k, ann in enumerate(_coco_list(data, "annotations", src)):
        if not isinstance(ann, Mapping):
            raise ValidationError(f"{src}: annotations[{k}] must be an object, got {ann!r}")
        where = f"annotation {ann['id']}" if "id" in ann else f"annotations[{k}]"
        if ann.get("iscrowd"):
            continue
        if "image_id" not in ann:
            raise ValidationError(f"{src}: {where} has no image_id")
        iid = ann["image_id"]
        if isinstance(iid, bool) or not isinstance(iid, int) or iid not in images:
            raise ValidationError(f"{src}: {where} names unknown image {iid!r}")
        cid = ann.get("category_id")
        if cid is not None and (isinstance(cid, bool) or not isinstance(cid, int)
                                or cid not in cats):
            raise ValidationError(f"{src}: {where} has category_id {cid}, which is not among "
                                  f"the file's categories {sorted(cats)}")
        _, width, height = images[iid]
        box = _coco_box(ann, width, height, where, triage)
        if box is not None:
            per_image.setdefault(iid, []).append(
                Instance(Prompt(box=box), cats.get(cid) if cid is not None else None,
                         None if cid is None else int(cid)))
    triage.finish()
    out = []
    for iid, insts in per_image.items():
        img, width, height = images[iid]
        out.append(Sample(_coco_file(img, iid, file_key, src), tuple(insts),
                          meta={"coco_image_id": iid, "width": width, "height": height}))
    return CocoSamples(out, categories=[Category(i, n) for i, n in cats.items()])


def _json_kind(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


# --- samples from CDF annotations -----------------------------------------------------------


def _internal_ids(file_ids: object) -> list[int]:
    hint = ("samples_from_annotations takes internal file ids (positive integers): CDF's "
            "annotations/list filters by annotatedResourceIds [{\"id\": n}] only; look external "
            "ids up first, e.g. [m.id for m in client.file_metadata([...])]")
    if isinstance(file_ids, (str, bytes, Mapping)) or not isinstance(file_ids, Iterable):
        raise ValidationError(f"{hint}; got {file_ids!r}")
    out: list[int] = []
    for k, v in enumerate(file_ids):
        if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
            v = v.item()  # a 0-d array or tensor
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < 1:
            raise ValidationError(f"{hint}; file_ids[{k}] is {v!r}")
        out.append(int(v))
    return out


def samples_from_annotations(client: SegmentationClient, file_ids: Iterable[int], *,
                             status: str | None = "approved",
                             creating_app: str | None = None,
                             on_bad_prompt: BadPromptPolicy = "fail") -> AnnotationSamples:
    """Samples from CDF ``images.ObjectDetection`` annotations that carry a bounding box.

    Each annotation's box becomes a box prompt and its label the category; annotations with a
    polygon or polyline instead of a box are skipped.

    Args:
        client: a connected client.
        file_ids: internal file ids (ints, numpy ints too): ``annotations/list`` filters by
            internal id only.
        status: the annotation status to read (``None``: any).
        creating_app: only annotations created by this app.
        on_bad_prompt: as in :func:`samples_from_records` (boxes clipped to ``[0, 1]``).

    Raises:
        ValidationError: ``file_ids`` holds something other than positive integers (external
            ids, say), before any request.
        PromptValidationError: bad boxes under ``"fail"``.
    """
    ids = _internal_ids(file_ids)
    triage = _Triage(on_bad_prompt, "annotations/list")
    per_file: dict[int, list[Instance]] = {}
    skipped: Counter[str] = Counter()
    read = 0
    for ann in client.list_annotations(ids, annotation_type="images.ObjectDetection",
                                       status=status, creating_app=creating_app):
        read += 1
        bb = ann.data.get("boundingBox")
        if not isinstance(bb, Mapping):
            skipped["no bounding box (a polygon or polyline)"] += 1
            continue
        try:
            box, clipped = _unit_box(bb, triage)
        except PromptValidationError as exc:
            triage.reject(f"annotation {ann.id} on file {ann.annotated_resource_id}", exc)
            skipped["a box that cannot be used"] += 1
            continue
        triage.clipped += clipped
        label = ann.data.get("label")
        per_file.setdefault(ann.annotated_resource_id, []).append(
            Instance(Prompt(box=box), None if label is None else str(label)))
    triage.finish()
    return AnnotationSamples([Sample(FileRef(id=fid), tuple(insts))
                              for fid, insts in per_file.items()],
                             read=read, skipped=skipped, status=status)


def point_instance(x: float, y: float, category: str | None = None) -> Instance:
    """Shorthand: one foreground point."""
    return Instance(Prompt(points=(Point(x, y, 1),)), category)
