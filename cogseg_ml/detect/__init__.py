"""Text-prompted boxes: class names in, boxes named by those classes out.

:class:`~cogseg_ml.detect.text_boxes.TextBoxDetector` (Grounding DINO, MM-Grounding-DINO /
LLMDet and OWLv2 through ``transformers``, from local folders; the ``detect`` extra), the
ground-truth double for synthetic images (:mod:`cogseg_ml.detect.ground_truth`), and the
shared thresholds and suppression (:mod:`cogseg_ml.detect.suppression`). Names load on first
use, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cogseg_ml.detect.checkpoints import DetectorCheckpointError
    from cogseg_ml.detect.class_prompts import check_classes, split_classes
    from cogseg_ml.detect.detections import Detection
    from cogseg_ml.detect.ground_truth import Injections, save_ground_truth_detector
    from cogseg_ml.detect.suppression import DetectionSettings
    from cogseg_ml.detect.text_boxes import DetectorModel, TextBoxDetector
    from cogseg_ml.detect.truth_detector import ground_truth_detector

__all__ = ["Detection", "DetectionSettings", "DetectorCheckpointError", "DetectorModel",
           "Injections", "TextBoxDetector", "check_classes", "ground_truth_detector",
           "save_ground_truth_detector", "split_classes"]

_WHERE = {"Detection": "detections", "DetectionSettings": "suppression",
          "DetectorCheckpointError": "checkpoints", "DetectorModel": "text_boxes",
          "Injections": "ground_truth", "TextBoxDetector": "text_boxes",
          "check_classes": "class_prompts", "ground_truth_detector": "truth_detector",
          "save_ground_truth_detector": "ground_truth", "split_classes": "class_prompts"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"cogseg_ml.detect.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
