"""The ground-truth detector: perfect boxes for the synthetic images, failure modes on demand,
handled by the same post-processing as a real model's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cogseg_ml.detect.ground_truth import Injections, pixels_key, save_ground_truth_detector
from cogseg_ml.detect.text_boxes import TextBoxDetector
from cogseg_ml.detect.truth_detector import ground_truth_detector
from cogseg_ml.emulator.synthetic_images import SyntheticImage, make_dataset
from cogseg_ml.errors import DetectorCheckpointError, ValidationError

NAMES = {"rectangle": "valve", "ellipse": "pressure gauge", "triangle": "flange"}
CLASSES = ["valve", "pressure gauge", "flange"]


@pytest.fixture(scope="module")
def shapes() -> list[SyntheticImage]:
    return make_dataset(4, seed=11, height=120, width=160)


def tight(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def test_every_object_is_found_under_its_class_with_a_loose_box(
        shapes: list[SyntheticImage]) -> None:
    det = ground_truth_detector(shapes, class_names=NAMES)
    found = det.detect([im.pixels for im in shapes], CLASSES)
    for im, dets in zip(shapes, found, strict=True):
        assert sorted(d.label for d in dets) == sorted(NAMES[o.category] for o in im.objects)
        h, w = im.pixels.shape[:2]
        boxes = {(d.label, d.box) for d in dets}
        for o in im.objects:
            x0, y0, x1, y1 = tight(o.mask)  # padded by two pixels, clipped to the image
            assert (NAMES[o.category], (max(0.0, x0 - 2), max(0.0, y0 - 2), min(w, x1 + 2),
                                        min(h, y1 + 2))) in boxes
    assert det.dropped == {}


def test_only_requested_classes_are_reported(shapes: list[SyntheticImage]) -> None:
    det = ground_truth_detector(shapes, class_names=NAMES)
    found = det.detect([im.pixels for im in shapes], ["flange"])
    want = [sum(o.category == "triangle" for o in im.objects) for im in shapes]
    assert [len(d) for d in found] == want and {d.label for ds in found for d in ds} <= {"flange"}


def test_injected_duplicates_and_distractors_are_suppressed_and_counted(
        shapes: list[SyntheticImage]) -> None:
    inj = Injections(duplicates=1, repeats=1, distractors=2)
    raw_view = ground_truth_detector(shapes, class_names=NAMES, injections=inj,
                                     box_threshold=0.0, text_threshold=0.0, nms_iou=1.0,
                                     cross_class_iou=None)
    clean = ground_truth_detector(shapes, class_names=NAMES)
    handled = ground_truth_detector(shapes, class_names=NAMES, injections=inj)
    px = [im.pixels for im in shapes]
    noisy = raw_view.detect(px, CLASSES)
    assert [len(d) for d in noisy] == [len(im.objects) + 1 + 1 + 2 for im in shapes]
    # The shared post-processing takes every injected box out again...
    got = handled.detect(px, CLASSES)
    assert [[(d.label, d.box) for d in ds] for ds in got] == \
        [[(d.label, d.box) for d in ds] for ds in clean.detect(px, CLASSES)]
    n = len(shapes)
    assert handled.dropped == {"cross-class duplicate": n, "same-class duplicate": n,
                               "below text threshold": 2 * n}
    # ...and a distractor is named by a class the image does not hold.
    for im, ds in zip(shapes, noisy, strict=True):
        present = {NAMES[o.category] for o in im.objects}
        extra = [d for d in ds if d.class_score < 0.2]
        assert len(extra) == 2 and all(d.label not in present for d in extra) or \
            present == set(CLASSES)


def test_misses_leave_objects_out(shapes: list[SyntheticImage]) -> None:
    det = ground_truth_detector(shapes, class_names=NAMES, injections=Injections(misses=1))
    found = det.detect([im.pixels for im in shapes], CLASSES)
    assert [len(d) for d in found] == [len(im.objects) - 1 for im in shapes]


def test_an_image_it_does_not_know_gets_no_boxes(shapes: list[SyntheticImage]) -> None:
    det = ground_truth_detector(shapes[:1], class_names=NAMES)
    other = make_dataset(1, seed=99, height=120, width=160)[0]
    assert det.detect([other.pixels], CLASSES) == [[]]
    assert det.model.unknown_images == 1  # type: ignore[attr-defined]
    assert pixels_key(other.pixels) != pixels_key(shapes[0].pixels)


def test_saved_as_a_folder_it_loads_like_a_real_detector(shapes: list[SyntheticImage],
                                                         tmp_path: Path) -> None:
    inj = Injections(duplicates=1, distractors=1)
    folder = save_ground_truth_detector(tmp_path / "gt", shapes, class_names=NAMES,
                                        injections=inj)
    loaded = TextBoxDetector.from_pretrained(folder, device="cpu")
    direct = ground_truth_detector(shapes, class_names=NAMES, injections=inj)
    px = [im.pixels for im in shapes]
    assert loaded.detect(px, CLASSES) == direct.detect(px, CLASSES)
    assert loaded.identity == direct.identity and loaded.name == "ground-truth"
    other = save_ground_truth_detector(tmp_path / "gt2", shapes, class_names=NAMES)
    assert TextBoxDetector.from_pretrained(other, device="cpu").identity != loaded.identity
    (folder / "truth.json").write_text("{not json")
    with pytest.raises(DetectorCheckpointError, match="truth.json"):
        TextBoxDetector.from_pretrained(folder, device="cpu")
    assert json.loads((folder / "config.json").read_text())["model_type"] == \
        "cogseg-ground-truth"


def test_injection_counts_are_checked() -> None:
    with pytest.raises(ValidationError, match="duplicates"):
        Injections(duplicates=-1)
