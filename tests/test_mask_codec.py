"""The codec against pycocotools' own rasterization, on random and adversarial input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from scipy import ndimage

from cogseg_ml import mask_codec as mc
from cogseg_ml.errors import ValidationError


def test_pixel_convention_matches_pycocotools_on_pixel_coordinates() -> None:
    # A normalized vertex x lands at x * width pixels; the codec must equal pycocotools'
    # rasterization of the same polygon given in pixels.
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(5, 80, size=2))
        n = int(rng.integers(3, 9))
        norm = rng.random((n, 2))
        pixels = norm * [w, h]
        ours = mc.decode([mc.polygons_to_rle([norm], h, w)])[0]
        ref = coco_mask.decode(coco_mask.frPyObjects([pixels.ravel().tolist()], h, w))[..., 0]
        assert np.array_equal(ours, ref.astype(bool))


def test_vertex_at_half_is_a_pixel_boundary() -> None:
    # x in [0.25, 0.5] of an 8-wide image covers columns 2 and 3 exactly.
    rle = mc.polygons_to_rle([[(0.25, 0.0), (0.5, 0.0), (0.5, 1.0), (0.25, 1.0)]], 4, 8)
    cols = np.nonzero(mc.decode([rle])[0].any(axis=0))[0]
    assert cols.tolist() == [2, 3]


def test_several_polygons_merge_into_one_mask() -> None:
    a = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)]
    b = [(0.25, 0.25), (1.0, 0.25), (1.0, 1.0), (0.25, 1.0)]
    m = mc.decode([mc.polygons_to_rle([a, b], 8, 8)])[0]
    assert m.sum() == 16 + 36 - 4


@pytest.mark.parametrize("polys", [
    [],
    [[(0.1, 0.1), (0.5, 0.5)]],              # 2 vertices: would be read as a box otherwise
    [[(0.2, 0.2), (0.2, 0.2), (0.2, 0.2)]],  # zero area
    [[(0.1, 0.1), (0.9, 0.1), (0.5, 0.1)]],  # collinear
])
def test_degenerate_polygons_give_empty_masks(polys: list) -> None:
    rle = mc.polygons_to_rle(polys, 10, 12)
    assert rle["size"] == [10, 12] and mc.area([rle])[0] == 0


def test_vertices_slightly_outside_are_clipped() -> None:
    rle = mc.polygons_to_rle([[(-0.01, -0.02), (1.01, -0.01), (1.02, 1.01), (-0.01, 1.03)]],
                             6, 7)
    assert mc.area([rle])[0] == 42


def test_nan_vertex_is_rejected() -> None:
    with pytest.raises(ValidationError, match="NaN"):
        mc.polygons_to_rle([[(0.1, 0.1), (float("nan"), 0.5), (0.5, 0.5)]], 4, 4)


def test_trace_then_rasterize_reproduces_masks_exactly() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        m = rng.random((h, w)) < rng.random()
        polys = mc.mask_to_polygons(m, outline="filled")
        back = mc.decode([mc.polygons_to_rle(polys, h, w, normalized=False)])[0]
        # Holes are not represented (union of filled outlines); background is 8-connected.
        assert np.array_equal(back, ndimage.binary_fill_holes(m, structure=np.ones((3, 3))))


def test_trace_returns_holes_on_request_and_corner_touching_pixels_split() -> None:
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert len(mc.mask_to_polygons(ring, outline="filled")) == 1
    assert len(mc.mask_to_polygons(ring, outline="loops")) == 2
    diag = np.eye(3, dtype=bool)
    assert len(mc.mask_to_polygons(diag)) == 3
    assert mc.mask_to_polygons(np.zeros((4, 4), bool)) == []


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8])
def test_encode_decode_round_trip_numpy_and_torch(dtype: type) -> None:
    rng = np.random.default_rng(2)
    masks = (rng.random((5, 17, 23)) < 0.4).astype(dtype)
    rles = mc.encode(masks)
    assert all(isinstance(r["counts"], str) for r in rles)
    back = mc.decode(rles)
    assert back.shape == (5, 17, 23) and back.dtype == bool
    assert np.array_equal(back, masks.astype(bool))
    t = torch.from_numpy(masks.astype(bool))
    assert [r["counts"] for r in mc.encode(t)] == [r["counts"] for r in rles]
    single = mc.encode(masks[0])
    assert len(single) == 1 and single[0] == rles[0]


def test_decode_to_tensor_is_a_view_of_pycocotools_buffer() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((4, 32, 48)) < 0.5
    t = mc.decode_to_tensor(mc.encode(masks))
    assert t.dtype == torch.bool and t.shape == (4, 32, 48)
    assert t.stride() == (32 * 48, 1, 32)  # column-major per mask: no copy was made
    assert torch.equal(t, torch.from_numpy(masks))
    empty = mc.decode_to_tensor([], 7, 9)
    assert empty.shape == (0, 7, 9)
    with pytest.raises(ValidationError):
        mc.decode_to_tensor([])


def test_area_bbox_iou_merge() -> None:
    a = np.zeros((10, 10), bool)
    a[2:5, 3:7] = True
    b = np.zeros((10, 10), bool)
    b[3:6, 3:7] = True
    ra, rb = mc.encode(np.stack([a, b]))
    assert mc.area([ra, rb]).tolist() == [12, 12]
    assert mc.bbox_of([ra]).tolist() == [[3.0, 2.0, 4.0, 3.0]]
    iou = mc.iou_matrix([ra, rb], [ra, rb])
    assert iou[0, 0] == 1.0 and iou[0, 1] == pytest.approx(8 / 16)
    assert mc.area([mc.merge([ra, rb], 10, 10)])[0] == 16
    assert mc.iou_matrix([], [ra]).shape == (0, 1)
    with pytest.raises(ValidationError):
        mc.decode([ra, mc.encode(np.zeros((3, 3), bool))[0]])


@pytest.mark.parametrize("n", [255, 256, 300, 600])
def test_area_bbox_iou_merge_take_any_number_of_rles(n: int) -> None:
    """pycocotools' ``area`` counts its RLEs in a byte (it raised OverflowError from 256 on):
    every function of the codec that hands it a list answers for 256 RLEs and more."""
    masks = np.zeros((n, 30, 20), bool)
    for k in range(n):
        masks[k, k % 30, : 1 + k % 20] = True
    rles = mc.encode(masks)
    widths = np.array([1 + k % 20 for k in range(n)], dtype=np.int64)
    rows = np.array([k % 30 for k in range(n)], dtype=np.float64)

    areas = mc.area(rles)
    assert areas.dtype == np.int64 and areas.tolist() == widths.tolist()
    boxes = mc.bbox_of(rles)
    assert boxes.shape == (n, 4)
    assert boxes.tolist() == np.stack([np.zeros(n), rows, widths.astype(np.float64),
                                       np.ones(n)], axis=1).tolist()
    for a, b in ((rles, rles[:3]), (rles[:3], rles)):
        iou = mc.iou_matrix(a, b)
        assert iou.shape == (len(a), len(b))
        assert np.diag(iou[:3, :3]).tolist() == [1.0, 1.0, 1.0]
    union = masks.any(axis=0)
    merged = mc.merge(rles, 30, 20)
    assert mc.decode([merged])[0].tolist() == union.tolist()
    assert mc.area([merged]).tolist() == [int(union.sum())]


def test_numpy_decoder_equals_pycocotools_on_random_and_edge_masks() -> None:
    rng = np.random.default_rng(4)
    for t in range(400):
        h, w = (int(v) for v in rng.integers(1, 70, size=2))
        masks = rng.random((3, h, w)) < rng.random()
        if t % 10 == 0:
            masks[:] = False
        elif t % 10 == 1:
            masks[:] = True
        elif t % 10 == 2:
            masks[:, 0, 0] = True  # a foreground first pixel: the first run is empty
        rles = mc.encode(masks)
        ref = [coco_mask.decode({"size": r["size"], "counts": r["counts"].encode()})
               for r in rles]
        assert np.array_equal(mc.decode(rles), np.stack(ref).astype(bool))
    big = np.zeros((1, 1024, 1024), bool)
    big[0, 3:1000, 7:1020] = True  # counts above 2^20 need several 5-bit groups
    assert np.array_equal(mc.decode(mc.encode(big)), big)


@pytest.mark.parametrize("counts", ["!!", "0" * 3, "zz~~", "1Z", "PPP"])
def test_corrupt_counts_are_a_validation_error(counts: str) -> None:
    with pytest.raises(ValidationError, match="corrupt RLE"):
        mc.decode([{"size": [4, 4], "counts": counts}])


def test_uncompressed_counts_decode() -> None:
    m = mc.decode([{"size": [2, 3], "counts": [1, 2, 3]}])[0]  # type: ignore[list-item]
    assert m.T.ravel().tolist() == [False, True, True, False, False, False]


_TRI = [(0.1, 0.1), (0.9, 0.1), (0.5, 0.9)]


@pytest.mark.parametrize(("polys", "match"), [
    ([[(0.1, 0.1), ("a", 0.5), (0.5, 0.5)]], r"polygon 0 .*numbers"),   # non-numeric
    ([[(0.1, 0.1), (None, 0.5), (0.5, 0.5)]], r"polygon 0 .*numbers"),  # None
    ([_TRI, [(0.1, 0.1), (0.2,), (0.5, 0.5)]], r"polygon 1 .*\(x, y\)"),  # ragged vertex
    ([[{"x": 0.1, "y": 0.1}, {"x": 0.9, "y": 0.1}, {"x": 0.5, "y": 0.9}]],
     r"polygon 0 .*numbers"),                                            # wire-format dicts
    (_TRI, r"polygon 0 .*\(x, y\)"),                        # a bare polygon, not a list of them
    ([[_TRI]], r"polygon 0 .*nested"),                      # one level too deep
    ([[_TRI, _TRI]], r"polygon 0 .*nested"),                # two polygons read as one
    ([[(0.1, 0.1, 0.0), (0.9, 0.1, 0.0)]], r"polygon 0 .*\(x, y\)"),  # (x, y, z) triples
    ([[0.1, 0.1, 0.9, 0.1, 0.5, 0.9]], r"polygon 0 .*\(x, y\)"),      # COCO's flat list
    ([_TRI, 5], r"polygon 1 .*\(x, y\)"),                   # not a sequence at all
    (None, r"polygons must be"),                            # no iterable of polygons
    ([_TRI, [(0.1, 0.1), (0.5, float("inf")), (0.5, 0.5)]], r"polygon 1 .*NaN or infinite"),
    ([[(0.1, 0.1), (0.5, float("nan"))]], r"polygon 0 .*NaN"),  # even when it would be skipped
], ids=["text", "none", "ragged", "dicts", "bare-polygon", "too-deep", "two-as-one", "triples",
        "flat", "scalar", "no-iterable", "inf", "nan-short"])
def test_malformed_polygons_are_a_validation_error_naming_the_polygon(
        polys: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as info:
        mc.polygons_to_rle(polys, 10, 12)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work


def test_polygons_in_any_sequence_form_still_rasterize() -> None:
    want = mc.polygons_to_rle([_TRI], 10, 12)
    assert mc.area([want])[0] > 0
    for polys in ([np.asarray(_TRI)], (tuple(_TRI),), (p for p in [_TRI]),
                  [[[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]], [_TRI, []], [[], _TRI]):
        assert mc.polygons_to_rle(polys, 10, 12) == want  # type: ignore[arg-type]
    ints = mc.polygons_to_rle([[(1, 1), (9, 1), (5, 8)]], 10, 12, normalized=False)
    assert mc.area([ints])[0] > 0
    assert mc.area([mc.polygons_to_rle([[]], 10, 12)])[0] == 0  # no vertices: nothing added
