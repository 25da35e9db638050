"""The ground-truth double as a :class:`~cogseg_ml.detect.text_boxes.TextBoxDetector`
(above both the double and the detector, so neither imports the other)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cogseg_ml.detect.ground_truth import GroundTruthModel, Injections, truth_of
from cogseg_ml.detect.text_boxes import TextBoxDetector

if TYPE_CHECKING:
    from cogseg_ml.emulator.synthetic_images import SyntheticImage

__all__ = ["ground_truth_detector"]


def ground_truth_detector(images: Sequence[SyntheticImage], *,
                          class_names: Mapping[str, str] | None = None,
                          injections: Injections | None = None, **settings: Any) -> Any:
    """A :class:`~cogseg_ml.detect.text_boxes.TextBoxDetector` on the ground-truth double.

    ``settings`` are the detector's (``box_threshold``, ``cross_class_iou``, ...).
    """
    return TextBoxDetector(GroundTruthModel(truth_of(images, class_names), injections),
                           **settings)
