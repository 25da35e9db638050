"""Polygons that keep holes and every part: mask -> polygons -> pycocotools RLE is the mask,
exactly (no tolerance), on random masks with holes, islands, one-pixel parts and pixels that
touch only at a corner; the single-ring form (YOLO, Label Studio) also under an independent
pixel-centre filler, by the even-odd and the non-zero rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from scipy import ndimage

from cogseg_ml import mask_codec as mc
from cogseg_ml.coco_io import CocoWriter
from cogseg_ml.errors import ValidationError
from tests.exports.readers import fill_polygons, iou
from tests.exports.shapes import SHAPES, random_masks


def coco_raster(polygons: list[list[tuple[int, int]]], h: int, w: int) -> np.ndarray:
    """pycocotools' rasterisation of polygons as one COCO segmentation (their union)."""
    if not polygons:
        return np.zeros((h, w), dtype=bool)
    flat = [[float(v) for xy in p for v in xy] for p in polygons]
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(flat, h, w))).astype(bool)


def test_coco_polygon_output_keeps_holes_and_parts(tmp_path: Path) -> None:
    # The labeler's and the cache export's polygon output goes through CocoWriter.
    h, w = 60, 80
    masks = {name: make(h, w) for name, make in SHAPES.items()}
    out = tmp_path / "poly.json"
    with CocoWriter(out, [{"id": 1, "name": "thing"}], segmentation="polygon") as coco:
        coco.add_image("img", file_name="img.png", height=h, width=w)
        for m in masks.values():
            coco.add_annotation("img", 1, mc.encode(m)[0], 0.9)
    anns = json.loads(out.read_text())["annotations"]
    assert len(anns) == len(masks)
    for (name, m), ann in zip(masks.items(), anns, strict=True):
        back = coco_mask.decode(coco_mask.merge(
            coco_mask.frPyObjects(ann["segmentation"], h, w))).astype(bool)
        assert np.array_equal(back, m), f"{name}: IoU {iou(back, m):.4f}"
        assert ann["area"] == int(m.sum())


def test_rings_rasterise_back_to_the_mask_exactly_on_random_masks() -> None:
    rng = np.random.default_rng(11)
    for m in random_masks(rng, 600):
        h, w = m.shape
        rings = mc.mask_to_rings(m)
        assert np.array_equal(coco_raster(rings, h, w), m)
        # One ring per 4-connected part, vertices on pixel corners inside the image.
        assert len(rings) == ndimage.label(m)[1]
        for ring in rings:
            a = np.asarray(ring)
            assert len(ring) >= 4 and a.min() >= 0
            assert (a[:, 0] <= w).all() and (a[:, 1] <= h).all()
        # The codec's own rasteriser agrees (pixel coordinates).
        rle = mc.polygons_to_rle(rings, h, w, normalized=False)
        assert np.array_equal(mc.decode([rle])[0], m)


@pytest.mark.parametrize("rule", ["evenodd", "nonzero"])
def test_single_ring_fills_back_to_the_mask_under_either_rule(rule: str) -> None:
    rng = np.random.default_rng(12)
    for m in random_masks(rng, 300):
        h, w = m.shape
        ring = mc.mask_to_ring(m)
        if not m.any():
            assert ring == []
            continue
        assert np.array_equal(fill_polygons([ring], h, w, rule), m)
        assert np.array_equal(coco_raster([ring], h, w), m)


def test_plain_mask_to_polygons_keeps_a_hole_exactly() -> None:
    # The plain call is the exact one: a square with a one-pixel hole and a second part.
    m = np.zeros((7, 9), dtype=bool)
    m[1:6, 1:6] = True
    m[3, 3] = False
    m[2, 7] = True
    polys = mc.mask_to_polygons(m)
    assert np.array_equal(coco_raster(polys, *m.shape), m)
    assert polys == mc.mask_to_rings(m)


def test_plain_mask_to_polygons_is_exact_on_shapes_and_random_masks() -> None:
    rng = np.random.default_rng(13)
    masks = [make(60, 80) for make in SHAPES.values()] + list(random_masks(rng, 200))
    for m in masks:
        assert np.array_equal(coco_raster(mc.mask_to_polygons(m), *m.shape), m)
        assert np.array_equal(coco_raster(mc.mask_to_polygons(m, outline="exact"), *m.shape), m)


def test_filled_outline_is_a_named_option_and_fills_holes() -> None:
    for name, make in SHAPES.items():
        m = make(60, 80)
        filled = coco_raster(mc.mask_to_polygons(m, outline="filled"), *m.shape)
        assert np.array_equal(filled, ndimage.binary_fill_holes(m, structure=np.ones((3, 3)))), \
            name


def test_unknown_outline_is_refused() -> None:
    with pytest.raises(ValidationError, match="outline"):
        mc.mask_to_polygons(np.ones((2, 2), dtype=bool), outline="holes")  # type: ignore[arg-type]


def test_shapes_with_holes_old_polygons_lose_them_new_ones_do_not() -> None:
    # The filled outlines are a union of filled parts (CDF polygons): holes go.
    for name, make in SHAPES.items():
        m = make(120, 160)
        old = coco_raster(mc.mask_to_polygons(m, outline="filled"), *m.shape)
        new = coco_raster(mc.mask_to_rings(m), *m.shape)
        ring = fill_polygons([mc.mask_to_ring(m)], *m.shape)
        assert np.array_equal(new, m) and np.array_equal(ring, m), name
        assert iou(old, m) < 1.0, name
        assert np.array_equal(old, ndimage.binary_fill_holes(m, structure=np.ones((3, 3))))


def test_corner_touching_pixels_are_separate_parts_and_holes_are_8_connected() -> None:
    diag = np.eye(3, dtype=bool)
    assert len(mc.mask_to_rings(diag)) == 3
    # A background pixel touching the outside at a corner is not a hole: one outline.
    m = np.ones((4, 4), dtype=bool)
    m[1, 1] = m[2, 2] = m[3, 3] = False
    assert len(mc.mask_to_rings(m)) == 1
    assert np.array_equal(coco_raster(mc.mask_to_rings(m), 4, 4), m)
    assert mc.mask_to_rings(np.zeros((3, 3), bool)) == []
    assert mc.mask_to_ring(np.zeros((2, 2), bool)) == []
