"""The array form of the tracer (mask_to_polygon_arrays) and the segment service's exact wire
path built on it: the same polygons as the linked-boundary walk, vertex for vertex, and a mask
that goes out as polygons (JSON, camelCase) and comes back through the client's parsing and
polygon-to-RLE is the mask, bit for bit, on fragmented masks like a random-weight model's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cogseg_ml import mask_codec as mc
from cogseg_ml.api.results import result_from_job
from cogseg_ml.api.wire_schema import (
    JobStatus,
    SegmentFileRef,
    SegmentJob,
    SegmentPolygon,
    SegmentResult,
    SegmentVertex,
)
from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import Point
from cogseg_ml.service.segment_wire import job_view, mask_segment
from tests.exports.shapes import SHAPES, random_masks


def fragmented(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smoothed noise cut at a random level: hundreds of parts, holes, islands in holes and
    pixels touching at corners, as a random-weight model's masks have."""
    noise = ndimage.uniform_filter(rng.random((h, w)), size=int(rng.integers(1, 4)))
    return noise > np.quantile(noise, rng.uniform(0.2, 0.8))  # type: ignore[no-any-return]


def masks_to_check(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = random_masks(rng, 150)
    out += [make(37, 53) for make in SHAPES.values()]
    out += [fragmented(rng, int(rng.integers(20, 90)), int(rng.integers(20, 120)))
            for _ in range(12)]
    out += [np.zeros((5, 7), dtype=bool), np.ones((5, 7), dtype=bool),
            np.eye(6, dtype=bool), np.pad(np.ones((1, 1), dtype=bool), 3)]
    return out


def walked_rings(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """The exact rings by the linked boundary: each hole spliced in one at a time, each part
    walked node by node from the top edge of its top-left pixel."""
    found = mc._cropped(mask)
    if found is None:
        return []
    m, x0, y0 = found
    b, starts = mc._parts(m)
    return [[(x + x0, y + y0) for x, y in ring]
            for ring in b.corners([b.walk(s) for s in starts])]


def coco_raster(polygons: list[list[tuple[int, int]]], h: int, w: int) -> np.ndarray:
    return mc.decode([mc.polygons_to_rle(polygons, h, w, normalized=False)])[0]


def test_exact_rings_are_the_linked_boundary_walk_vertex_for_vertex() -> None:
    for m in masks_to_check(3):
        assert mc.mask_to_rings(m) == walked_rings(m)


def test_exact_rings_of_fragmented_masks_are_exact_and_well_formed() -> None:
    rng = np.random.default_rng(8)
    for _ in range(8):
        m = fragmented(rng, 96, 128)
        h, w = m.shape
        rings = mc.mask_to_rings(m)
        assert np.array_equal(coco_raster(rings, h, w), m)
        labels, parts = ndimage.label(m)
        assert len(rings) == parts > 20
        for k, ring in enumerate(rings, start=1):
            a = np.asarray(ring, dtype=np.int64)
            # Twice the area is the part's pixels (holes taken out), the ring clockwise on
            # screen: the cuts are walked there and back and add nothing.
            area2 = int((a[:, 0] * np.roll(a[:, 1], -1) - np.roll(a[:, 0], -1) * a[:, 1]).sum())
            assert area2 == 2 * int((labels == k).sum())
            # It starts at the top-left corner of the part's first pixel in raster order.
            r, c = divmod(int(np.flatnonzero(labels == k)[0]), w)
            assert ring[0] == (c, r)


@pytest.mark.parametrize("outline", ["exact", "filled", "loops"])
def test_polygon_arrays_are_the_polygons(outline: mc.Outline) -> None:
    for m in masks_to_check(5):
        pts, lens = mc.mask_to_polygon_arrays(m, outline=outline)
        polys = mc.mask_to_polygons(m, outline=outline)
        assert pts.dtype == np.int64 and lens.dtype == np.int64
        assert pts.shape == (int(lens.sum()), 2)
        assert lens.tolist() == [len(p) for p in polys]
        assert [tuple(v) for v in pts.tolist()] == [v for p in polys for v in p]


def test_polygon_arrays_of_an_empty_mask_and_a_bad_outline() -> None:
    pts, lens = mc.mask_to_polygon_arrays(np.zeros((4, 4), dtype=bool))
    assert pts.shape == (0, 2) and lens.shape == (0,)
    with pytest.raises(ValidationError, match="outline"):
        mc.mask_to_polygon_arrays(np.ones((4, 4), dtype=bool), outline="holes")  # type: ignore[arg-type]


def test_mask_segment_is_the_polygons_normalized_vertex_by_vertex() -> None:
    for m in masks_to_check(7)[::3]:
        h, w = m.shape
        for outline in ("exact", "filled"):
            seg = mask_segment(m, 0.123456, outline=outline)
            built = SegmentResult(score=0.1235, polygons=[
                SegmentPolygon(vertices=[SegmentVertex(x=x / w, y=y / h) for x, y in poly])
                for poly in mc.mask_to_polygons(m, outline=outline)])
            assert seg == built
            assert seg.model_dump_json(by_alias=True) == built.model_dump_json(by_alias=True)


def test_exact_segments_round_trip_through_the_wire_bit_for_bit() -> None:
    rng = np.random.default_rng(21)
    masks = [fragmented(rng, 120, 160) for _ in range(4)] + masks_to_check(9)[::4]
    for m in masks:
        h, w = m.shape
        view = job_view(job_id=1, status=JobStatus.COMPLETED, created_time=1, start_time=1,
                        status_time=2, ref=SegmentFileRef(file_id=5), points=[Point(0.5, 0.5, 1)],
                        box=None, segments=[mask_segment(m, 0.9)], created=False)
        body = view.model_dump_json(by_alias=True, exclude_none=True)
        job = SegmentJob.model_validate_json(body)  # as the client parses a GET
        segment = result_from_job(job).item.segments[0]
        back = mc.decode([segment.to_rle(h, w)])[0]
        assert np.array_equal(back, m)


def test_polygons_to_rle_in_one_call_is_the_union_of_each_polygon() -> None:
    rng = np.random.default_rng(4)
    h, w = 23, 31
    for _ in range(40):
        polys: list[list[tuple[float, float]]] = []
        for _ in range(int(rng.integers(1, 7))):
            n = int(rng.integers(1, 9))  # fewer than 3 vertices: skipped
            polys.append([(float(x), float(y)) for x, y in rng.uniform(-0.2, 1.2, (n, 2))])
        one_by_one = [mc.polygons_to_rle([p], h, w) for p in polys]
        union = mc.decode(one_by_one).any(axis=0)
        assert np.array_equal(mc.decode([mc.polygons_to_rle(polys, h, w)])[0], union)
