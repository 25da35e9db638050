"""From every candidate box of an image to the detections kept: thresholds, then suppression.

The same steps for every detector (Grounding DINO, OWLv2, the ground-truth double), in order:

1. boxes are clipped to the image; one left without area is dropped (``"empty box"``);
2. ``box_threshold``: a box scoring lower is dropped (``"below box threshold"``);
3. the box takes the class whose whole phrase matches it best; when even that class scores
   below ``text_threshold`` the box is dropped (``"below text threshold"``): no class name is
   invented for a box no phrase fits;
4. class-aware NMS: of two boxes of one class overlapping by IoU ``>= nms_iou`` the lower
   scoring one goes (``"same-class duplicate"``);
5. cross-class duplicates: of two boxes of *different* classes overlapping by IoU
   ``>= cross_class_iou`` the lower scoring one goes (``"cross-class duplicate"``), so one
   object keeps one class; ``cross_class_iou=None`` keeps both;
6. at most ``max_per_image`` boxes, the best scoring (``"over max per image"``).

Thresholds are inclusive (a score equal to the threshold is kept). What was dropped is counted
by reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torchvision.ops import batched_nms, box_iou

from cogseg_ml.detect.detections import Detection, RawDetections
from cogseg_ml.errors import ValidationError

__all__ = ["DROP_REASONS", "DetectionSettings", "select"]

DROP_REASONS = ("empty box", "below box threshold", "below text threshold",
                "same-class duplicate", "cross-class duplicate", "over max per image")


def _unit(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValidationError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DetectionSettings:
    """How candidate boxes become detections (see the module docstring).

    Attributes:
        box_threshold: keep boxes scoring at least this (Grounding DINO's usual 0.35; 0.3).
        text_threshold: the best class phrase must match at least this well.
        nms_iou: IoU at which two boxes of one class are one object.
        cross_class_iou: IoU at which two boxes of different classes are one object (``None``:
            never; both are kept).
        max_per_image: keep at most this many boxes per image.
    """

    box_threshold: float = 0.3
    text_threshold: float = 0.25
    nms_iou: float = 0.5
    cross_class_iou: float | None = 0.7
    max_per_image: int = 100

    def __post_init__(self) -> None:
        for name in ("box_threshold", "text_threshold", "nms_iou"):
            object.__setattr__(self, name, _unit(name, getattr(self, name)))
        if self.cross_class_iou is not None:
            object.__setattr__(self, "cross_class_iou",
                               _unit("cross_class_iou", self.cross_class_iou))
        m = self.max_per_image
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValidationError(f"max_per_image must be a positive integer, got {m!r}")

    def key(self) -> str:
        """A short digest of the settings (part of a detector's identity)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def select(raw: RawDetections, classes: Sequence[str], width: int, height: int,
           settings: DetectionSettings) -> tuple[list[Detection], Counter[str]]:
    """The detections kept from one image's candidates, best first, and what was dropped.

    Args:
        raw: the candidates (``class_scores`` has one column per class, in ``classes`` order).
        classes: the caller's class phrases (the labels detections get).
        width, height: the image's size in pixels (boxes are clipped to it).
        settings: thresholds and suppression.
    """
    if raw.class_scores.shape[1] != len(classes):
        raise ValidationError(f"raw detections score {raw.class_scores.shape[1]} classes, "
                              f"{len(classes)} were asked for")
    dropped: Counter[str] = Counter()
    boxes = raw.boxes.detach().float().cpu().clone()
    box_scores = raw.box_scores.detach().float().cpu()
    class_scores = raw.class_scores.detach().float().cpu()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0.0, float(width))
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0.0, float(height))

    def keep(mask: torch.Tensor, reason: str) -> torch.Tensor:
        dropped[reason] += int((~mask).sum())
        return mask

    idx = torch.arange(boxes.shape[0])
    ok = keep((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]), "empty box")
    idx = idx[ok]
    idx = idx[keep(box_scores[idx] >= settings.box_threshold, "below box threshold")]
    if len(classes) and idx.numel():
        best, label = class_scores[idx].max(dim=1)
    else:
        best = label = torch.zeros(0, dtype=torch.long)
    fits = keep(best >= settings.text_threshold, "below text threshold") if idx.numel() else \
        torch.zeros(0, dtype=torch.bool)
    idx, label, best = idx[fits], label[fits], best[fits]
    if idx.numel():
        order = batched_nms(boxes[idx], box_scores[idx], label, settings.nms_iou)
        dropped["same-class duplicate"] += int(idx.numel() - order.numel())
        idx, label, best = idx[order], label[order], best[order]  # best score first
    if settings.cross_class_iou is not None and idx.numel() > 1:
        iou = box_iou(boxes[idx], boxes[idx])
        kept: list[int] = []
        for i in range(idx.numel()):
            if any(label[j] != label[i] and iou[i, j] >= settings.cross_class_iou for j in kept):
                dropped["cross-class duplicate"] += 1
            else:
                kept.append(i)
        sel = torch.tensor(kept, dtype=torch.long)
        idx, label, best = idx[sel], label[sel], best[sel]
    if idx.numel() > settings.max_per_image:
        dropped["over max per image"] += int(idx.numel() - settings.max_per_image)
        idx, label, best = (t[:settings.max_per_image] for t in (idx, label, best))
    out = []
    for q, c, cs in zip(idx.tolist(), label.tolist(), best.tolist(), strict=True):
        x0, y0, x1, y1 = (float(v) for v in boxes[q].tolist())
        out.append(Detection(classes[c], float(box_scores[q]), (x0, y0, x1, y1), float(cs)))
    return out, +dropped
