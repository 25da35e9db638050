"""Thresholds and suppression on constructed candidates: what is kept, what is dropped and why."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from cogseg_ml.detect.detections import Detection, RawDetections
from cogseg_ml.detect.suppression import DetectionSettings, select
from cogseg_ml.errors import ValidationError

CLASSES = ["valve", "pressure gauge", "flange"]
W, H = 200, 100


def raw(rows: Sequence[tuple[tuple[float, float, float, float], float, Sequence[float]]]
        ) -> RawDetections:
    """Candidates from ``(box, box score, class scores)`` rows."""
    return RawDetections(torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
                         torch.tensor([r[1] for r in rows], dtype=torch.float32),
                         torch.tensor([list(r[2]) for r in rows],
                                      dtype=torch.float32).reshape(len(rows), len(CLASSES)))


def labels(dets: list[Detection]) -> list[str]:
    return [d.label for d in dets]


def run(rows: Sequence[tuple[tuple[float, float, float, float], float, Sequence[float]]],
        **settings: object) -> tuple[list[Detection], dict[str, int]]:
    dets, dropped = select(raw(rows), CLASSES, W, H, DetectionSettings(**settings))  # type: ignore[arg-type]
    return dets, dict(dropped)


def test_box_and_text_thresholds_drop_weak_boxes_and_phrases_that_do_not_fit() -> None:
    rows = [((10, 10, 40, 40), 0.9, (0.8, 0.1, 0.1)),   # kept
            ((60, 10, 90, 40), 0.2, (0.9, 0.1, 0.1)),   # weak box
            ((110, 10, 140, 40), 0.6, (0.1, 0.2, 0.15)),  # a box no phrase fits
            ((150, 10, 180, 40), 0.3, (0.1, 0.25, 0.1))]  # both exactly at the thresholds
    dets, dropped = run(rows, box_threshold=0.3, text_threshold=0.25)
    assert labels(dets) == ["valve", "pressure gauge"]
    assert dropped == {"below box threshold": 1, "below text threshold": 1}
    d = dets[1]
    assert (d.score, d.class_score) == (pytest.approx(0.3), pytest.approx(0.25))


def test_one_object_boxed_under_two_classes_keeps_the_better_class() -> None:
    rows = [((10, 10, 60, 60), 0.7, (0.1, 0.65, 0.1)),  # "pressure gauge"
            ((11, 11, 61, 61), 0.9, (0.85, 0.1, 0.1)),  # the same object as "valve", better
            ((120, 10, 170, 60), 0.8, (0.1, 0.1, 0.8))]  # another object
    dets, dropped = run(rows)
    assert labels(dets) == ["valve", "flange"]
    assert dropped == {"cross-class duplicate": 1}
    both, dropped = run(rows, cross_class_iou=None)  # configurable: keep both classes
    assert sorted(labels(both)) == ["flange", "pressure gauge", "valve"]
    assert dropped == {}


def test_class_aware_nms_removes_repeats_of_one_class_and_keeps_touching_objects() -> None:
    rows = [((10, 10, 60, 60), 0.9, (0.8, 0.1, 0.1)),
            ((12, 12, 62, 62), 0.6, (0.7, 0.1, 0.1)),  # the same valve again
            ((58, 10, 108, 60), 0.8, (0.8, 0.1, 0.1))]  # a neighbouring valve (IoU ~0.02)
    dets, dropped = run(rows)
    assert [d.box for d in dets] == [(10, 10, 60, 60), (58, 10, 108, 60)]
    assert dropped == {"same-class duplicate": 1}


def test_cross_class_suppression_leaves_overlapping_objects_of_other_classes() -> None:
    # A flange inside a larger valve assembly: IoU 0.25 is two objects, not one.
    rows = [((10, 10, 110, 90), 0.9, (0.8, 0.1, 0.1)), ((35, 30, 85, 70), 0.8, (0.1, 0.1, 0.8))]
    dets, dropped = run(rows)
    assert labels(dets) == ["valve", "flange"]
    assert dropped == {}


def test_max_per_image_keeps_the_best_scoring_boxes() -> None:
    rows = [((10 + 20 * i, 10, 25 + 20 * i, 30), 0.4 + 0.05 * i, (0.9, 0.1, 0.1))
            for i in range(6)]
    dets, dropped = run(rows, max_per_image=2)
    assert [round(d.score, 2) for d in dets] == [0.65, 0.6]
    assert dropped == {"over max per image": 4}


def test_boxes_are_clipped_to_the_image_and_empty_ones_dropped() -> None:
    rows = [((-5, -5, 30, 30), 0.9, (0.9, 0.1, 0.1)),
            ((W + 1, 10, W + 20, 30), 0.9, (0.1, 0.1, 0.9))]  # wholly outside
    dets, dropped = run(rows)
    assert [d.box for d in dets] == [(0.0, 0.0, 30.0, 30.0)]
    assert dropped == {"empty box": 1}
    box = dets[0].prompt_box(W, H)
    assert (box.x_min, box.y_max) == (0.0, 0.3)


def test_nothing_to_select_gives_nothing() -> None:
    assert run([]) == ([], {})


def test_settings_are_checked() -> None:
    for bad in ({"box_threshold": 1.5}, {"text_threshold": -0.1}, {"nms_iou": "0.5"},
                {"cross_class_iou": float("nan")}, {"max_per_image": 0},
                {"max_per_image": True}):
        with pytest.raises(ValidationError):
            DetectionSettings(**bad)  # type: ignore[arg-type]
    assert DetectionSettings().key() != DetectionSettings(cross_class_iou=None).key()


def test_raw_detections_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValidationError, match="class_scores"):
        RawDetections(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, 3))
    with pytest.raises(ValidationError, match="score 2 classes, 3 were asked for"):
        select(RawDetections(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, 2)), CLASSES, W,
               H, DetectionSettings())
