"""mask_to_inset_rings: OpenCV's fillPoly, fed vertices truncated (Ultralytics) or rounded
(supervision) to pixels, paints back exactly the mask; every 3x3 mask, random masks, the stress
shapes, and a YOLO line of an image 65,536 pixels wide."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cogseg_ml.errors import ValidationError
from cogseg_ml.exports.labelled import LabelledImage
from cogseg_ml.exports.yolo import label_lines
from cogseg_ml.mask_codec import encode, mask_to_inset_rings
from tests.exports.readers import pieces
from tests.exports.shapes import random_masks, stress_masks


def fill(rings: list[list[tuple[float, float]]], shape: tuple[int, ...], how: str
         ) -> list[np.ndarray]:
    """Each ring as OpenCV fills it after its vertices are made pixels by ``how``."""
    out = []
    for ring in rings:
        xy = np.asarray(ring, dtype=np.float32)
        pts = xy.astype(np.int32) if how == "truncate" else np.round(xy).astype(np.int32)
        m = np.zeros(shape, dtype=np.uint8)
        cv2.fillPoly(m, [pts], color=1)
        out.append(m.astype(bool))
    return out


def every_3x3() -> list[np.ndarray]:
    masks = [((bits >> np.arange(9)) & 1).astype(bool).reshape(3, 3) for bits in range(512)]
    return masks + [np.pad(m, 1) for m in masks]


@pytest.mark.parametrize("how", ["truncate", "round"])
def test_every_small_mask_and_random_masks_come_back_exactly(how: str) -> None:
    rng = np.random.default_rng(7)
    masks = every_3x3() + random_masks(rng, 300) + list(stress_masks(30, 40).values())
    for mask in masks:
        rings = mask_to_inset_rings(mask)
        got = fill(rings, mask.shape, how)
        want = pieces(mask)
        assert len(got) == len(want)  # one ring per 8-connected piece
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b), (mask.astype(int), rings)


def test_vertices_lie_in_the_top_left_quarter_of_a_boundary_pixel() -> None:
    rng = np.random.default_rng(8)
    for mask in random_masks(rng, 100):
        for ring in mask_to_inset_rings(mask):
            xy = np.asarray(ring)
            assert len(xy) >= 4
            assert set((xy % 1).ravel().tolist()) <= {1 / 16, 7 / 16}
            r, c = xy[:, 1].astype(int), xy[:, 0].astype(int)
            assert mask[r, c].all()


def test_joined_is_one_ring_and_paints_only_its_cuts_outside() -> None:
    rng = np.random.default_rng(9)
    masks = random_masks(rng, 200) + list(stress_masks(30, 40).values())
    grew = 0
    for mask in masks:
        rings = mask_to_inset_rings(mask, parts="joined")
        if not mask.any():
            assert rings == []
            continue
        assert len(rings) == 1
        (got,) = fill(rings, mask.shape, "truncate")
        assert (got | mask).sum() == got.sum()
        if len(pieces(mask)) == 1:
            assert np.array_equal(got, mask)
        grew += int(got.sum() - mask.sum())
    assert grew > 0


def test_a_line_of_a_wide_image_keeps_its_pixels() -> None:
    h, w = 3, 65_536
    mask = np.zeros((h, w), dtype=bool)
    mask[0, w - 1] = mask[1, w - 3: w - 1] = mask[2, 0] = mask[2, 5:9] = True
    item = LabelledImage(record={"id": 1, "height": h, "width": w}, file_name="wide.png",
                         data=b"", annotations=[{"category_id": 7,
                                                 "segmentation": dict(encode(mask)[0])}])
    lines, empty = label_lines(item, {7: 0})
    assert empty == 0
    got = {how: np.zeros((h, w), dtype=bool) for how in ("truncate", "round")}
    for line in lines:
        cls, *coords = line.split()
        assert cls == "0"
        xy = np.asarray(coords, dtype=np.float32).reshape(-1, 2)
        xy *= np.asarray([w, h], dtype=np.float32)  # float32, as Ultralytics and supervision
        for how, union in got.items():
            (m,) = fill([xy.tolist()], (h, w), how)
            union |= m
    assert all(np.array_equal(union, mask) for union in got.values())


def test_bad_arguments_are_refused() -> None:
    assert mask_to_inset_rings(np.zeros((4, 5), dtype=bool)) == []
    with pytest.raises(ValidationError, match="'separate' or 'joined'"):
        mask_to_inset_rings(np.ones((2, 2), dtype=bool), parts="all")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"\(H, W\)"):
        mask_to_inset_rings(np.ones((2, 2, 2), dtype=bool))
