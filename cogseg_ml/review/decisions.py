"""A reviewer's accept/reject decisions on the masks of one labels file, and applying them.

The review page (:mod:`cogseg_ml.review.page`) saves its decisions as a small JSON file::

    {"format": "cogseg-review-decisions", "version": 1,
     "labels_file": "labels.json", "labels_digest": "<sha256 hex>",
     "decisions": {"12": "accept", "13": "reject"}}

keyed by COCO annotation id. ``labels_digest`` (:func:`labels_digest`) identifies the labels
file by its content, so a decisions file saved for another labels file is refused
(:func:`load_decisions`) instead of silently dropping the wrong masks; re-indenting or renaming
the labels file does not change it. :func:`apply_decisions` keeps the accepted masks.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cogseg_ml.strict_json as strict_json
from cogseg_ml.errors import ValidationError

__all__ = ["DECISIONS_FORMAT", "DECISIONS_VERSION", "Decisions", "apply_decisions",
           "labels_digest", "load_decisions"]

DECISIONS_FORMAT = "cogseg-review-decisions"
DECISIONS_VERSION = 1
_VALUES = ("accept", "reject")


def _int_field(record: Any, key: str, where: str) -> int:
    if not isinstance(record, Mapping):
        raise ValidationError(f"the labels file's {where} must be objects, got "
                              f"{type(record).__name__}")
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"the labels file's {where} need an integer {key!r}, got "
                              f"{value!r}; is it a COCO file?")
    return value


def _records(coco: Mapping[str, Any], key: str) -> list[Any]:
    if not isinstance(coco, Mapping):
        raise ValidationError(f"a COCO labels file is a JSON object, got {type(coco).__name__}")
    records = coco.get(key, [])
    if not isinstance(records, list):
        raise ValidationError(f"the labels file's {key!r} must be a list, got "
                              f"{type(records).__name__}; is it a COCO file?")
    return records


def _annotation_ids(coco: Mapping[str, Any]) -> set[int]:
    return {_int_field(a, "id", "annotations") for a in _records(coco, "annotations")}


def labels_digest(coco: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) that identifies a COCO labels file by its content.

    Computed over a canonical JSON of the sorted ``(annotation id, image id, category id)``
    triples and the sorted ``(image id, file name)`` pairs: the same for the file however it
    is indented or named, different once masks or images are renumbered, added or removed.

    Raises:
        ValidationError: ``coco`` is not a COCO file (no integer ids).
    """
    anns = sorted((_int_field(a, "id", "annotations"), _int_field(a, "image_id", "annotations"),
                   _int_field(a, "category_id", "annotations"))
                  for a in _records(coco, "annotations"))
    images = sorted((_int_field(im, "id", "images"), str(im.get("file_name", "")))
                    for im in _records(coco, "images"))
    canonical = strict_json.dumps({"annotations": anns, "images": images}, separators=(",", ":"),
                           ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Decisions:
    """Accepted and rejected COCO annotation ids for one labels file.

    Attributes:
        labels_file: the labels file's name, as the review page showed it.
        labels_digest: :func:`labels_digest` of that file.
        accepted: annotation ids the reviewer accepted.
        rejected: annotation ids the reviewer rejected (never also accepted).
    """

    labels_file: str
    labels_digest: str
    accepted: frozenset[int]
    rejected: frozenset[int]

    def __post_init__(self) -> None:
        both = self.accepted & self.rejected
        if both:
            raise ValidationError(f"annotations {sorted(both)[:10]} are both accepted and "
                                  "rejected; decide each once")

    def to_json(self) -> str:
        """The decisions file's text (what the review page downloads)."""
        decisions = {str(i): "accept" for i in self.accepted}
        decisions.update({str(i): "reject" for i in self.rejected})
        ordered = dict(sorted(decisions.items(), key=lambda kv: int(kv[0])))
        return strict_json.dumps({"format": DECISIONS_FORMAT, "version": DECISIONS_VERSION,
                           "labels_file": self.labels_file,
                           "labels_digest": self.labels_digest,
                           "decisions": ordered}, indent=1) + "\n"


def _is_id(key: str) -> bool:
    """A whole number as JSON writes it: digits, no leading zero, no longer than an id read
    from a labels file can be (so ``int`` never meets Python's digit limit)."""
    return (0 < len(key) <= strict_json.MAX_INT_DIGITS and key.isascii() and key.isdigit()
            and (key == "0" or not key.startswith("0")))


def _shown(key: str) -> str:
    """A key for a message: a hostile one is cut short."""
    return repr(key) if len(key) <= 60 else f"{key[:40]!r}... ({len(key)} characters)"


def _parse(text: str, path: Path) -> Decisions:
    """A decisions file's content, checked for shape (not yet against the labels)."""
    data = strict_json.loads(text, f"decisions file {path.name}")
    if not isinstance(data, dict) or data.get("format") != DECISIONS_FORMAT:
        raise ValidationError(f"{path.name} is not a review decisions file (its \"format\" must "
                              f"be {DECISIONS_FORMAT!r}); save one with the review page's "
                              "Save decisions button")
    if data.get("version") != DECISIONS_VERSION:
        raise ValidationError(f"decisions file {path.name} has version {data.get('version')!r}; "
                              f"this version of cogseg reads version {DECISIONS_VERSION}")
    labels_file, digest = data.get("labels_file"), data.get("labels_digest")
    if not isinstance(labels_file, str) or not isinstance(digest, str) or not digest:
        raise ValidationError(f"decisions file {path.name} needs \"labels_file\" and "
                              "\"labels_digest\" strings; save it again from the review page")
    raw = data.get("decisions")
    if not isinstance(raw, dict):
        raise ValidationError(f"decisions file {path.name}: \"decisions\" must be an object "
                              "of annotation id to \"accept\" or \"reject\"")
    accepted: set[int] = set()
    rejected: set[int] = set()
    for key, value in raw.items():
        if not _is_id(key):
            raise ValidationError(f"decisions file {path.name}: {_shown(key)} is not an "
                                  "annotation id (a whole number)")
        if value not in _VALUES:
            raise ValidationError(f"decisions file {path.name}: annotation {key} is {value!r}; "
                                  "each decision is \"accept\" or \"reject\"")
        (accepted if value == "accept" else rejected).add(int(key))
    return Decisions(labels_file, digest, frozenset(accepted), frozenset(rejected))


def load_decisions(path: str | Path, coco: Mapping[str, Any], labels_name: str) -> Decisions:
    """Read and check a decisions file against the labels file it is applied to.

    Args:
        path: the decisions file (saved by the review page).
        coco: the labels file's content.
        labels_name: the labels file's name, for messages.

    Raises:
        ValidationError: the file cannot be read, is not a decisions file (format, version,
            values), was saved for another labels file (both are named), or names annotation
            ids the labels do not have.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValidationError(f"decisions file {p} cannot be read ({reason})") from None
    decisions = _parse(text, p)
    digest = labels_digest(coco)
    if decisions.labels_digest != digest and decisions.labels_file == labels_name:
        raise ValidationError(
            f"decisions file {p.name} was saved for an earlier version of {labels_name}: "
            f"{labels_name} changed since the decisions were saved (its masks or images "
            f"differ), so they may name the wrong masks; review it again with `cogseg review "
            f"{labels_name} --out DIR` and save new decisions")
    if decisions.labels_digest != digest:
        raise ValidationError(
            f"decisions file {p.name} was saved for labels file {decisions.labels_file!r}, "
            f"not for {labels_name!r} (their contents differ): review {labels_name} with "
            f"`cogseg review {labels_name} --out DIR` and save its decisions, or apply "
            f"{p.name} to {decisions.labels_file}")
    unknown = (decisions.accepted | decisions.rejected) - _annotation_ids(coco)
    if unknown:
        raise ValidationError(f"decisions file {p.name} names annotation ids "
                              f"{sorted(unknown)[:10]} that {labels_name} does not have; "
                              "save the decisions again from its review page")
    return decisions


def apply_decisions(coco: Mapping[str, Any], decisions: Decisions,
                    undecided: Literal["drop", "keep"] = "drop") -> dict[str, Any]:
    """A new COCO dict with only the accepted annotations (``coco`` is not changed).

    Args:
        coco: the labels the decisions were made on.
        decisions: from :func:`load_decisions` (or built for the same labels).
        undecided: what becomes of annotations without a decision: ``"drop"`` (default)
            or ``"keep"``. Rejected ones are always dropped.

    Images and categories are kept, also images left without annotations.

    Raises:
        ValidationError: ``undecided`` is neither value, or the decisions belong to other labels.
    """
    if undecided not in ("drop", "keep"):
        raise ValidationError(f"undecided must be 'drop' or 'keep', got {undecided!r}")
    if decisions.labels_digest != labels_digest(coco):
        raise ValidationError(f"these decisions were made on labels file "
                              f"{decisions.labels_file!r}, whose content differs from the labels "
                              "given; apply them to that file")

    def kept(ann: Mapping[str, Any]) -> bool:
        ann_id = ann["id"]
        if ann_id in decisions.accepted:
            return True
        return undecided == "keep" and ann_id not in decisions.rejected

    out = {k: copy.deepcopy(v) for k, v in coco.items() if k != "annotations"}
    out["annotations"] = [copy.deepcopy(a) for a in _records(coco, "annotations") if kept(a)]
    return out
