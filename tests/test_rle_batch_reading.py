"""Many COCO RLE strings read in one pass: the same runs, masks, areas, boxes and errors as
the one-mask readers (mask_codec) and pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from cogseg_ml import mask_codec as mc
from cogseg_ml.errors import ValidationError
from cogseg_ml.masks_at_size import (
    decode_many,
    decode_many_to_tensor,
    parse_many,
    rle_areas,
    run_lengths_many,
)

rng = np.random.default_rng(11)


def random_rles(n_sizes: int = 120) -> list[mc.Rle]:
    """RLEs of many sizes: random, empty, full, a foreground first pixel, a foreground last."""
    out: list[mc.Rle] = []
    for t in range(n_sizes):
        h, w = (int(v) for v in rng.integers(1, 50, size=2))
        masks = rng.random((3, h, w)) < rng.random()
        if t % 6 == 0:
            masks[:] = False
        elif t % 6 == 1:
            masks[:] = True
        elif t % 6 == 2:
            masks[:, 0, 0] = True
        elif t % 6 == 3:
            masks[:, -1, -1] = True
        out += mc.encode(masks)
    big = np.zeros((2, 1024, 1024), bool)
    big[0, 3:1000, 7:1020] = True  # counts above 2^20: several 5-bit groups
    big[1, 500:501, 2:3] = True
    return out + mc.encode(big)


def test_runs_of_many_strings_equal_the_one_string_reader() -> None:
    rles = random_rles()
    counts = [r["counts"] for r in rles]
    runs, offsets = run_lengths_many(counts)
    assert offsets.shape == (len(counts) + 1,) and offsets[0] == 0
    for n, c in enumerate(counts):
        assert np.array_equal(runs[offsets[n]:offsets[n + 1]], mc.run_lengths(c)), n
    # bytes, an empty string among others, and nothing at all
    runs, offsets = run_lengths_many([counts[5].encode(), "", counts[7]])
    assert np.array_equal(runs[offsets[0]:offsets[1]], mc.run_lengths(counts[5]))
    assert offsets[1] == offsets[2]
    assert np.array_equal(runs[offsets[2]:], mc.run_lengths(counts[7]))
    runs, offsets = run_lengths_many([])
    assert runs.size == 0 and offsets.tolist() == [0]


def test_negative_deltas_read_as_pycocotools_reads_them() -> None:
    # Shrinking runs are stored as negative differences to the count two places earlier.
    counts = [[3, 9, 1, 2, 40, 1, 1], [0, 56], [10, 20, 5, 10, 11]]
    strings = [coco_mask.frPyObjects({"size": [8, 7], "counts": c}, 8, 7)["counts"].decode()
               for c in counts]
    runs, offsets = run_lengths_many(strings)
    for n, c in enumerate(counts):
        assert runs[offsets[n]:offsets[n + 1]].tolist() == c


def test_decode_many_equals_decode_pixel_for_pixel_and_in_layout() -> None:
    rles = random_rles(60)
    by_size: dict[tuple[int, int], list[mc.Rle]] = {}
    for r in rles:
        by_size.setdefault((r["size"][0], r["size"][1]), []).append(r)
    parsed = parse_many(rles)
    for (h, w), group in by_size.items():
        ref = mc.decode(group)
        for got in (decode_many(group), decode_many(group, parsed)):
            assert got.dtype == bool and got.shape == (len(group), h, w)
            assert got.strides == ref.strides  # a view of the column-major buffer, no copy
            assert np.array_equal(got, ref)
        tensor = decode_many_to_tensor(group, h, w, parsed)
        assert np.array_equal(tensor.numpy(), ref)
    assert decode_many_to_tensor([], 5, 6).shape == (0, 5, 6)


def test_uncompressed_counts_take_the_one_mask_path() -> None:
    m = decode_many([{"size": [2, 3], "counts": [1, 2, 3]}])  # type: ignore[list-item]
    assert m[0].T.ravel().tolist() == [False, True, True, False, False, False]


@pytest.mark.parametrize("counts", ["!!", "0" * 3, "zz~~", "1Z", "PPP"])
def test_corrupt_counts_raise_what_the_one_mask_reader_raises(counts: str) -> None:
    good = mc.encode(np.ones((1, 4, 4), bool))[0]
    rles = [good, {"size": [4, 4], "counts": counts}]
    with pytest.raises(ValidationError) as one:
        mc.decode(rles)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as many:
        decode_many(rles)  # type: ignore[arg-type]
    assert str(many.value) == str(one.value) and "corrupt RLE" in str(many.value)
    parsed = parse_many(rles)  # type: ignore[arg-type]
    assert parsed[(good["counts"], 4, 4)].valid
    assert not parsed.get((counts, 4, 4), None) or not parsed[(counts, 4, 4)].valid
    with pytest.raises(ValidationError) as again:
        decode_many(rles, parsed)  # type: ignore[arg-type]
    assert str(again.value) == str(one.value)


def test_mixed_sizes_are_refused_as_decode_refuses_them() -> None:
    a = mc.encode(np.ones((1, 3, 3), bool))[0]
    b = mc.encode(np.ones((1, 4, 4), bool))[0]
    with pytest.raises(ValidationError, match="one size"):
        decode_many([a, b])


def test_areas_and_boxes_are_pycocotools() -> None:
    rles = random_rles()
    parsed = parse_many(rles)
    for r in rles:
        a, box = int(mc.area([r])[0]), mc.bbox_of([r])[0].tolist()
        p = parsed[(r["counts"], r["size"][0], r["size"][1])]
        assert p.valid and p.area == a
        if a:
            assert list(p.box) == box, r
        else:
            assert p.box == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("runs", [[2, 0, 4, 10], [5, 3, 0, 0, 8], [0, 0, 3, 13], [3, 5, 0, 8],
                                  [0, 16], [15, 1], [1, 2, 3, 4, 5, 1]])
def test_zero_length_runs_give_pycocotools_areas_and_boxes(runs: list[int]) -> None:
    coco = coco_mask.frPyObjects({"size": [4, 4], "counts": runs}, 4, 4)
    rle: mc.Rle = {"size": [4, 4], "counts": coco["counts"].decode()}
    p = parse_many([rle])[(rle["counts"], 4, 4)]
    assert p.valid and p.runs.tolist() == runs
    assert p.area == int(coco_mask.area(coco))
    assert list(p.box) == coco_mask.toBbox(coco).tolist()


def test_runs_that_do_not_fill_the_mask_are_not_valid() -> None:
    short = coco_mask.frPyObjects({"size": [4, 4], "counts": [3, 5]}, 4, 4)["counts"].decode()
    rle: mc.Rle = {"size": [4, 4], "counts": short}
    assert not parse_many([rle])[(short, 4, 4)].valid
    with pytest.raises(ValidationError, match="add up to 8"):
        decode_many([rle], parse_many([rle]))


def test_more_masks_than_pycocotools_takes_at_once() -> None:
    """pycocotools' area counts its RLEs in a byte: 300 masks are asked for in pieces."""
    masks = np.zeros((300, 30, 20), bool)
    for k in range(300):
        masks[k, k % 30, : 1 + k % 20] = True
    rles = mc.encode(masks)
    assert rle_areas(rles).tolist() == [1 + k % 20 for k in range(300)]
    assert rle_areas([]).shape == (0,)
    parsed = parse_many(rles)
    for k, r in enumerate(rles):
        p = parsed[(r["counts"], 30, 20)]
        assert p.area == 1 + k % 20
        assert list(p.box) == [0.0, float(k % 30), float(1 + k % 20), 1.0]
