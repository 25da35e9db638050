"""Mask quality: per-mask IoU, boundary F-score, COCO mAP, and agreement between two sources.

Matching of predictions to ground truth is explicit: :func:`match_by_iou` pairs them greedily
by IoU (highest first), each side used at most once, pairs below ``threshold`` left unmatched.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cogseg_ml.errors import ValidationError
from cogseg_ml.mask_codec import Rle, decode, iou_matrix

__all__ = ["Agreement", "agreement", "boundary_f", "coco_map", "mask_iou", "match_by_iou"]

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``(H, W)`` boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _boundary(m: np.ndarray) -> np.ndarray:
    edge: np.ndarray = m & ~ndimage.binary_erosion(m, border_value=0)
    return edge


def boundary_f(pred: np.ndarray, truth: np.ndarray, tolerance: int = 2) -> float:
    """Boundary F-score: precision and recall of boundary pixels within ``tolerance`` pixels.

    1.0 when both masks are empty, 0.0 when exactly one is.
    """
    p, t = _boundary(np.asarray(pred, bool)), _boundary(np.asarray(truth, bool))
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    dt_t = ndimage.distance_transform_edt(~t)
    dt_p = ndimage.distance_transform_edt(~p)
    precision = float((dt_t[p] <= tolerance).mean())
    recall = float((dt_p[t] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def match_by_iou(pred: Sequence[Rle], truth: Sequence[Rle], threshold: float = 0.5
                 ) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU: ``(pred index, truth index, iou)`` pairs."""
    ious = iou_matrix(pred, truth)
    pairs = []
    used_p, used_t = set(), set()
    for flat in np.argsort(-ious, axis=None):
        i, j = np.unravel_index(flat, ious.shape)
        v = float(ious[i, j])
        if v < threshold:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(int(i))
        used_t.add(int(j))
        pairs.append((int(i), int(j), v))
    return pairs


def coco_map(ground_truth: str | Path | dict[str, Any], detections: str | Path | list[Any],
             ) -> dict[str, float]:
    """COCO ``segm`` evaluation with pycocotools' COCOeval: the 12 standard figures by name.

    ``detections`` is a results file or list (``image_id``, ``category_id``,
    ``segmentation``, ``score``), or a whole COCO file (its ``annotations`` are used).
    Segmentations may be compressed or uncompressed RLE or polygons.

    The caller's data is never modified (pycocotools writes into the dicts it is given, so
    both sides are copied). Results' ``bbox`` fields are dropped, as detectron2 does for
    ``segm`` evaluation: pycocotools' ``loadRes`` would otherwise take each result's area from
    its box, putting thin or L-shaped masks in the wrong size bucket (AP_small/medium/large).
    Without a box, the area is the mask's pixel count.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = (copy.deepcopy(ground_truth) if isinstance(ground_truth, dict)
                      else json.loads(Path(ground_truth).read_text()))
        gt.createIndex()
        dets = detections
        if not isinstance(dets, list):
            data = json.loads(Path(dets).read_text())
            dets = data["annotations"] if isinstance(data, dict) else data
        if not dets:
            return {name: 0.0 for name in STAT_NAMES}
        results = []
        for d in dets:
            res = {k: copy.deepcopy(v) for k, v in d.items() if k not in ("bbox", "area")}
            if res.get("image_id") not in gt.imgs:
                raise ValidationError(f"result for image_id {res.get('image_id')!r}, which "
                                      "the ground truth does not have")
            if "segmentation" not in res:
                raise ValidationError("a result has no 'segmentation' (segm evaluation)")
            # loadRes computes areas with maskUtils.area, which takes compressed RLE only:
            # polygons and uncompressed RLE are converted at the image's size.
            res["segmentation"] = gt.annToRLE(res)
            results.append(res)
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats, strict=True)}


@dataclass(frozen=True)
class Agreement:
    """How two sources agree on the same prompts."""

    per_item: list[float]

    @property
    def mean_iou(self) -> float:
        """Mean IoU over items (NaN when there are none)."""
        return float(np.mean(self.per_item)) if self.per_item else float("nan")

    @property
    def share_above_0_9(self) -> float:
        """Fraction of items with IoU >= 0.9."""
        return float(np.mean([v >= 0.9 for v in self.per_item])) if self.per_item else 0.0

    def summary(self) -> str:
        """One line a person can read."""
        return (f"{len(self.per_item)} items: mean IoU {self.mean_iou:.3f}, "
                f"{100 * self.share_above_0_9:.0f}% at IoU >= 0.9")


def agreement(a: Sequence[Rle | None], b: Sequence[Rle | None]) -> Agreement:
    """Per-item IoU between two sources' masks for the same prompts (``None``: missing → 0)."""
    out = []
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            out.append(0.0)
        else:
            out.append(mask_iou(decode([x])[0], decode([y])[0]))
    return Agreement(out)
