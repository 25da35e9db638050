"""Label Studio export: tasks with the masks as pre-annotations (predictions) to review.

Layout::

    OUT/
      tasks.json           one task per image: {"data": {"image": ...}, "predictions": [...]}
      label_config.xml     the labelling config whose tag names the results use
      images/<name>.png    the labelled images' bytes as stored in CDF

Each task's ``data.image`` is ``image_prefix`` + the image's file name (default prefix
``images/``; give the URL or path Label Studio serves the images from, e.g.
``/data/local-files/?d=site-a/images/`` for local storage, or a bucket URL). Its one prediction
carries ``model_version`` (the backends that made the masks, or the one given), ``score`` (the
mean of the masks' scores: what Label Studio sorts predictions by) and a ``polygonlabels``
result per mask: ``value.points`` in percent of the image's width and height,
``original_width``/``original_height`` in pixels, the mask's ``score``, and an ``id``
``cogseg-<annotation id>`` that names the COCO annotation it came from. ``data`` also holds the
COCO ``image_id`` and ``cdf_file``.

**Holes and parts.** A polygon result is one ring; each mask is written as the single ring of
:func:`~cogseg_ml.mask_codec.mask_to_ring` (parts and holes joined by zero-width cuts), which
the browser's canvas fills (non-zero winding) with its holes empty; the cuts show as lines in
the outline. Points are pixel corners, written with enough decimals to land within 0.01 pixel.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import cogseg_ml.strict_json as strict_json
from cogseg_ml.errors import ValidationError
from cogseg_ml.exports.labelled import Labelled, LabelledImage
from cogseg_ml.exports.report import ExportReport
from cogseg_ml.mask_codec import mask_to_ring
from cogseg_ml.store.image_fetcher import ImageFetcher
from cogseg_ml.version import __version__

__all__ = ["check_scores", "check_tag_names", "label_config", "model_version_of", "task",
           "write_labelstudio"]

_TAG = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _decimals(height: int, width: int) -> int:
    """Decimals of a percentage so that it lands within 0.01 pixel."""
    return max(4, math.ceil(math.log10(max(height, width) * 0.5)))


def check_tag_names(from_name: str, to_name: str) -> None:
    """Refuse tag names the labelling config cannot hold."""
    for flag, tag in (("from_name", from_name), ("to_name", to_name)):
        if not tag or not set(tag) <= _TAG:
            raise ValidationError(f"{flag} {tag!r} must be a tag name: letters, digits, _ "
                                  "and -")


def label_config(names: list[str], from_name: str = "label", to_name: str = "image") -> str:
    """The ``<View>`` labelling config matching the tasks' tag names and category names."""
    labels = "".join(f"    <Label value={quoteattr(n)}/>\n" for n in names)
    return (f"<View>\n  <Image name={quoteattr(to_name)} value=\"$image\"/>\n"
            f"  <PolygonLabels name={quoteattr(from_name)} toName={quoteattr(to_name)}>\n"
            f"{labels}  </PolygonLabels>\n</View>\n")


def task(item: LabelledImage, names: dict[int, str], *, image: str, model_version: str,
         from_name: str = "label", to_name: str = "image") -> tuple[dict[str, Any], int]:
    """One image's task, and how many of its masks were empty (left out)."""
    h, w = item.height, item.width
    decimals = _decimals(h, w)
    results, scores, empty = [], [], 0
    for ann in item.annotations:
        ring = mask_to_ring(item.mask(ann))
        if not ring:
            empty += 1
            continue
        score = float(ann.get("score", 1.0))
        scores.append(score)
        results.append({
            "id": f"cogseg-{ann['id']}", "from_name": from_name, "to_name": to_name,
            "type": "polygonlabels", "original_width": w, "original_height": h,
            "image_rotation": 0,
            "value": {"points": [[round(x * 100.0 / w, decimals), round(y * 100.0 / h, decimals)]
                                 for x, y in ring],
                      "polygonlabels": [names[int(ann["category_id"])]]},
            "score": score})
    out: dict[str, Any] = {"data": {"image": image, "image_id": item.record["id"],
                                    "cdf_file": item.record.get("cdf_file")},
                           "predictions": []}
    if results:
        out["predictions"].append({"model_version": model_version,
                                   "score": sum(scores) / len(scores), "result": results})
    return out, empty


def check_scores(labelled: Labelled) -> None:
    """Refuse a score that is not a finite number (tasks are JSON, read by browsers)."""
    for ann in labelled.coco["annotations"]:
        score = ann.get("score", 1.0)
        if not (isinstance(score, int | float) and math.isfinite(score)):
            raise ValidationError(f"{labelled.path}: annotation {ann.get('id')!r} has score "
                                  f"{score!r}, which is not a JSON number (tasks.json is read "
                                  "by browsers); give a finite score")


def model_version_of(labelled: Labelled) -> str:
    """The predictions' default ``model_version``: the backends that made the masks."""
    sources = sorted({str(a["source"]) for a in labelled.coco["annotations"]
                      if isinstance(a.get("source"), str) and a["source"]})
    return "+".join(sources) if sources else f"cogseg_ml {__version__}"


def write_labelstudio(labelled: Labelled, fetcher: ImageFetcher, folder: Path, *,
                      image_prefix: str = "images/", model_version: str | None = None,
                      from_name: str = "label", to_name: str = "image") -> ExportReport:
    """Write the Label Studio export into ``folder`` (an empty folder)."""
    check_tag_names(from_name, to_name)
    if not isinstance(image_prefix, str):
        raise ValidationError(f"image_prefix must be a string, got {type(image_prefix).__name__}")
    check_scores(labelled)
    version = model_version or model_version_of(labelled)
    names = {int(c["id"]): str(c["name"]) for c in labelled.categories}
    report = ExportReport(folder, "labelstudio")
    (folder / "images").mkdir()
    with open(folder / "tasks.json", "w", encoding="utf-8") as f:
        f.write("[")
        for n, item in enumerate(labelled.each(fetcher)):
            (folder / "images" / item.file_name).write_bytes(item.data)
            one, empty = task(item, names, image=image_prefix + item.file_name,
                              model_version=version, from_name=from_name, to_name=to_name)
            f.write(("," if n else "") + "\n" + strict_json.dumps(one, ensure_ascii=False))
            report.images += 1
            report.objects += len(one["predictions"][0]["result"]) if one["predictions"] else 0
            report.empty += empty
        f.write("\n]\n")
    (folder / "label_config.xml").write_text(
        label_config(list(names.values()), from_name, to_name), encoding="utf-8")
    return report
