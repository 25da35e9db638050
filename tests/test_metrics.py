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


def _size_bucket_case() -> tuple[dict, list[dict]]:
    """Objects whose mask area is small (< 32^2) while their box is large (> 96^2).

    Ground truth (300x300): ``A`` a one-pixel-wide L (area 199, box 100x100) given as a
    polygon, ``B`` a 130x130 square. Results, each with the labeler's tight ``bbox``: ``A``
    and ``B`` exactly, and a false positive ``C`` (an anti-diagonal line: area 120, box
    120x120) with the highest score.
    """
    from cogseg_ml.mask_codec import bbox_of, mask_to_polygons

    size = 300
    a = np.zeros((size, size), bool)
    a[0, :100] = True
    a[:100, 0] = True
    b = np.zeros((size, size), bool)
    b[150:280, 150:280] = True
    c = np.zeros((size, size), bool)
    idx = np.arange(120)
    c[size - 1 - idx, idx] = True
    ra, rb, rc = encode(np.stack([a, b, c]))
    (poly_a,) = mask_to_polygons(a)
    gt = {"images": [{"id": 1, "height": size, "width": size, "file_name": "a"}],
          "categories": [{"id": 1, "name": "x"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
               "segmentation": [[float(v) for xy in poly_a for v in xy]],
               "area": int(a.sum()), "bbox": [float(v) for v in bbox_of([ra])[0]]},
              {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rb,
               "area": int(b.sum()), "bbox": [float(v) for v in bbox_of([rb])[0]]}]}
    dets = [{"image_id": 1, "category_id": 1, "segmentation": r, "score": s,
             "bbox": [float(v) for v in bbox_of([r])[0]]}
            for r, s in ((rc, 0.95), (ra, 0.9), (rb, 0.8))]
    assert a.sum() < 32 ** 2 and c.sum() < 32 ** 2 and b.sum() > 96 ** 2
    assert all(d["bbox"][2] * d["bbox"][3] > 96 ** 2 for d in dets)
    return gt, dets


def test_coco_map_size_buckets_use_mask_areas_not_boxes() -> None:
    gt, dets = _size_bucket_case()
    with_box = coco_map(gt, dets)
    without_box = coco_map(gt, [{k: v for k, v in d.items() if k != "bbox"} for d in dets])
    # Small: truth A found, but after the false positive C (a small mask) -> 0.5. Large: B
    # found, C is not a large object and does not count -> 1.0. No medium objects -> -1.
    assert with_box["AP_small"] == pytest.approx(0.5)
    assert with_box["AP_large"] == pytest.approx(1.0)
    assert with_box["AP_medium"] == -1.0
    assert with_box == pytest.approx(without_box)
    # Predictions equal to the truth: every bucket with objects is perfect.
    perfect = coco_map(gt, dets[1:])
    assert perfect["AP"] == pytest.approx(1.0)
    assert perfect["AP_small"] == pytest.approx(1.0)
    assert perfect["AP_large"] == pytest.approx(1.0)


def test_coco_map_leaves_the_callers_data_unchanged() -> None:
    import copy
    import json

    gt, dets = _size_bucket_case()
    # Polygon results too (the labeler's ``segmentation="polygon"`` output), with a bbox.
    poly_dets = [dict(dets[1], segmentation=gt["annotations"][0]["segmentation"])]
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    poly_before = copy.deepcopy(poly_dets)
    coco_map(gt, dets)
    stats = coco_map(gt, poly_dets)
    assert stats["AP_small"] == pytest.approx(1.0)
    assert gt == gt_before and dets == dets_before and poly_dets == poly_before
    json.dumps(gt)
    json.dumps(dets)
    json.dumps(poly_dets)
