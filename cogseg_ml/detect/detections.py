"""What a text-prompted detector gives: boxes with the user's class name and a score.

A :class:`Detection` is one box in an image's pixel frame (continuous ``x0, y0, x1, y1``, the
origin at the top-left corner of the first pixel) named by one of the caller's class phrases,
exactly as given. :class:`RawDetections` is what a model adapter hands to the shared
post-processing (:mod:`cogseg_ml.detect.suppression`): every candidate box of one image with
its box score and one score per class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import Box

if TYPE_CHECKING:
    import torch

__all__ = ["Detection", "RawDetections"]


@dataclass(frozen=True)
class Detection:
    """One detected object.

    Attributes:
        label: the class phrase it was found for, as the caller gave it (never a word piece).
        score: the box's confidence (what ``box_threshold`` is compared with), in ``[0, 1]``.
        box: ``(x0, y0, x1, y1)`` in pixels, inside the image, ``x0 < x1`` and ``y0 < y1``.
        class_score: how well the whole phrase matched the box (what ``text_threshold`` is
            compared with), in ``[0, 1]``.
    """

    label: str
    score: float
    box: tuple[float, float, float, float]
    class_score: float

    def prompt_box(self, width: int, height: int) -> Box:
        """The box as a normalized box prompt for an image of ``width`` x ``height``."""
        return Box.from_pixels(*self.box, width=width, height=height)

    def xywh(self) -> list[float]:
        """The box as COCO's ``[x, y, width, height]`` in pixels."""
        x0, y0, x1, y1 = self.box
        return [x0, y0, x1 - x0, y1 - y0]

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what the detection cache stores)."""
        return {"label": self.label, "score": round(self.score, 6),
                "box": [round(v, 4) for v in self.box], "class_score": round(self.class_score, 6)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Detection:
        """The inverse of :meth:`as_json`.

        Raises:
            ValidationError: not a detection's JSON.
        """
        try:
            x0, y0, x1, y1 = (float(v) for v in data["box"])
            return cls(str(data["label"]), float(data["score"]), (x0, y0, x1, y1),
                       float(data["class_score"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"not a stored detection: {data!r} ({exc})") from None


@dataclass(frozen=True)
class RawDetections:
    """Every candidate box a model proposed for one image, before thresholds and suppression.

    Attributes:
        boxes: ``(Q, 4)`` float ``x0, y0, x1, y1`` in the image's pixels (not yet clipped).
        box_scores: ``(Q,)`` the box's confidence in ``[0, 1]``.
        class_scores: ``(Q, C)`` how well each of the ``C`` classes (in the caller's order)
            matches each box, in ``[0, 1]``.
    """

    boxes: torch.Tensor
    box_scores: torch.Tensor
    class_scores: torch.Tensor

    def __post_init__(self) -> None:
        q = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4 or self.box_scores.shape != (q,) \
                or self.class_scores.ndim != 2 or self.class_scores.shape[0] != q:
            raise ValidationError(
                f"raw detections need boxes (Q, 4), box_scores (Q,), class_scores (Q, C); got "
                f"{tuple(self.boxes.shape)}, {tuple(self.box_scores.shape)}, "
                f"{tuple(self.class_scores.shape)}")
