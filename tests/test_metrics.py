"""Mask metrics: IoU, boundary F, explicit matching, COCO mAP, agreement."""

from __future__ import annotations

import numpy as np
import pytest

from cogseg_ml.mask_codec import encode
from cogseg_ml.metrics import agreement, boundary_f, coco_map, mask_iou, match_by_iou


def square(x0: int, y0: int, s: int, size: int = 40) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y0 + s, x0:x0 + s] = True
    return m


def test_iou_and_boundary_f() -> None:
    a, b = square(5, 5, 10), square(6, 5, 10)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, b) == pytest.approx(90 / 110)
    assert mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert boundary_f(a, a) == 1.0
    assert boundary_f(a, b, tolerance=1) == 1.0  # one pixel off is within tolerance
    assert boundary_f(a, square(20, 20, 10), tolerance=1) < 0.2
    assert boundary_f(a, np.zeros_like(a)) == 0.0


def test_matching_is_one_to_one_and_greedy() -> None:
    truth = encode(np.stack([square(0, 0, 10), square(20, 20, 10)]))
    pred = encode(np.stack([square(21, 20, 10), square(1, 0, 10), square(0, 1, 10)]))
    pairs = match_by_iou(pred, truth, threshold=0.5)
    assert {(p, t) for p, t, _ in pairs} in ({(0, 1), (1, 0)}, {(0, 1), (2, 0)})
    assert len(pairs) == 2 and all(v >= 0.5 for _, _, v in pairs)
    assert match_by_iou(pred, truth, threshold=0.99) == []


def _coco(masks: list[np.ndarray]) -> dict:
    return {"images": [{"id": 1, "height": 40, "width": 40, "file_name": "a"}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                             "segmentation": r, "area": int(m.sum()), "bbox": [0, 0, 1, 1]}
                            for i, (m, r) in enumerate(zip(masks, encode(np.stack(masks)),
                                                           strict=True))]}


def test_coco_map_perfect_partial_and_empty() -> None:
    truth = [square(0, 0, 10), square(20, 20, 10)]
    gt = _coco(truth)
    perfect = [{"image_id": 1, "category_id": 1, "segmentation": a["segmentation"],
                "score": 0.9} for a in gt["annotations"]]
    assert coco_map(gt, perfect)["AP"] == pytest.approx(1.0)
    half = coco_map(gt, perfect[:1])
    assert half["AR100"] == pytest.approx(0.5)
    assert coco_map(gt, [])["AP"] == 0.0


def test_agreement_between_sources() -> None:
    a = encode(np.stack([square(0, 0, 10), square(20, 20, 10)]))
    b = encode(np.stack([square(0, 0, 10), square(25, 20, 10)]))
    ag = agreement([a[0], a[1], None], [b[0], b[1], b[0]])
    assert ag.per_item[0] == 1.0 and 0 < ag.per_item[1] < 1 and ag.per_item[2] == 0.0
    assert ag.share_above_0_9 == pytest.approx(1 / 3) and "3 items" in ag.summary()
