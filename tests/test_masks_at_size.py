"""Masks at training size and the batch RLE decoder, against pycocotools and torchvision.

References are computed the long way in each test: pycocotools decodes at full resolution and
``torchvision.transforms.v2`` resizes (its nearest mode for masks); the module under test must
match them pixel for pixel.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

from cogseg_ml import mask_codec
from cogseg_ml.errors import SampleError, ValidationError
from cogseg_ml.masks_at_size import (
    CompactMasks,
    MaskBudgetError,
    check_mask_budget,
    compact_at_size,
    decode_masks,
    decode_rle_batch,
    polygons_at_size,
    rle_at_size,
    source_indices,
    target_size,
)

MODES = {"nearest": v2.InterpolationMode.NEAREST,
         "nearest-exact": v2.InterpolationMode.NEAREST_EXACT}


# --- helpers ------------------------------------------------------------------------------------

def coco_rles(dense: np.ndarray) -> list[dict[str, Any]]:
    """pycocotools' own RLEs (bytes counts) of ``(N, H, W)`` masks."""
    return coco_mask.encode(np.asfortranarray(dense.transpose(1, 2, 0).astype(np.uint8)))


def coco_decode(rles: list[dict[str, Any]]) -> torch.Tensor:
    """pycocotools' dense decode as ``(N, H, W)`` bool."""
    return torch.from_numpy(coco_mask.decode(rles).transpose(2, 0, 1).astype(bool))


def resized(full: torch.Tensor, out_h: int, out_w: int, mode: str = "nearest") -> torch.Tensor:
    """torchvision's resize of a full-resolution mask (what v2.Resize does to masks)."""
    out = tvf.resize(tv_tensors.Mask(full), [out_h, out_w], interpolation=MODES[mode])
    return out.as_subclass(torch.Tensor)


def adversarial(h: int, w: int) -> np.ndarray:
    """Empty, full, one pixel (first, last, middle), a run across every column end, stripes."""
    masks = np.zeros((8, h, w), dtype=bool)
    masks[1] = True
    masks[2, 0, 0] = True
    masks[3, h - 1, w - 1] = True
    masks[4, h // 2, w // 2] = True
    masks[5, h // 2:, :] = True  # column-major: each run wraps from one column into the next
    masks[5, : h // 3, :] = True
    masks[6, :, ::2] = True  # alternating full columns: runs of exactly one column
    masks[7, ::2, :] = True  # one-pixel runs everywhere
    return masks


def blobs(n: int, h: int, w: int, seed: int) -> list[dict[str, Any]]:
    """Wobbly blobs rasterised by pycocotools straight to RLE (no dense array)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.3) * min(h, w)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        rad = r * (1 + 0.25 * np.sin(3 * t + rng.uniform(0, 6)) + 0.1 * rng.standard_normal(48))
        xs = np.clip(cx + rad * np.cos(t), 0, w)
        ys = np.clip(cy + rad * np.sin(t) * rng.uniform(0.5, 1.5), 0, h)
        poly = np.stack([xs, ys], 1).ravel().tolist()
        out.append(coco_mask.frPyObjects([poly], h, w)[0])
    return out


# --- target_size --------------------------------------------------------------------------------

def _v2_size(h: int, w: int, size: Any, max_size: int | None) -> tuple[int, int]:
    # A zero-channel image: v2.Resize computes the output size without resampling any pixel.
    out = v2.Resize(size, max_size=max_size)(torch.empty((0, h, w), dtype=torch.uint8))
    return int(out.shape[-2]), int(out.shape[-1])


def test_target_size_is_what_v2_resize_gives() -> None:
    rng = np.random.default_rng(0)
    shapes = [(3000, 4000), (4000, 3000), (480, 640), (1, 1), (1, 5000), (7, 3), (1000, 1000),
              (2160, 3840), (6000, 8000), (801, 1333)]
    shapes += [tuple(int(v) for v in rng.integers(1, 9000, 2)) for _ in range(300)]
    checked = 0
    for h, w in shapes:
        for size, max_size in [(800, None), (800, 1333), (512, 513), ([640], 1000), (1, None),
                               ((600, 900), None), ([77, 1001], None), (None, 1333),
                               (int(rng.integers(1, 2000)), None)]:
            try:
                expected = _v2_size(h, w, size, max_size)
            except ValueError:
                with pytest.raises(ValidationError):
                    target_size(h, w, size, max_size)
                continue
            if min(expected) < 1:  # torchvision would go on to fail; we say why up front
                with pytest.raises(ValidationError, match="larger max_size"):
                    target_size(h, w, size, max_size)
                continue
            assert target_size(h, w, size, max_size) == expected, (h, w, size, max_size)
            checked += 1
    assert checked > 2500


def test_target_size_refuses_what_torchvision_refuses() -> None:
    with pytest.raises(ValidationError, match="max_size"):
        target_size(3000, 4000, (800, 1000), 1333)
    with pytest.raises(ValidationError, match="greater than size"):
        target_size(3000, 4000, 800, 800)
    with pytest.raises(ValidationError, match="needs max_size"):
        target_size(3000, 4000, None)
    for bad in (0, -3, 2.5, True, "800", (1, 2, 3)):
        with pytest.raises(ValidationError):
            target_size(3000, 4000, bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="height"):
        target_size(0, 4000, 800)


# --- the sampling rule --------------------------------------------------------------------------

def test_nearest_rule_is_the_float32_formula_in_the_docstring() -> None:
    sizes = list(range(1, 130)) + [479, 480, 640, 800, 1066, 1067, 1333, 3000, 3024, 4000, 6000]
    for n_in in sizes:
        for n_out in sizes[::3]:
            i = np.arange(n_out)
            scale = np.float32(n_in) / np.float32(n_out)
            rule = np.minimum(np.floor(i.astype(np.float32) * scale).astype(np.int64), n_in - 1)
            if n_in == n_out:
                rule = i
            assert np.array_equal(source_indices(n_in, n_out), rule), (n_in, n_out)


def test_source_indices_refuse_bad_input() -> None:
    with pytest.raises(ValidationError, match="mode"):
        source_indices(10, 5, "bilinear")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        source_indices(0, 5)
    assert np.array_equal(source_indices(10, 5, v2.InterpolationMode.NEAREST_EXACT),  # type: ignore[arg-type]
                          source_indices(10, 5, "nearest-exact"))


# --- rle_at_size ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
def test_rle_at_size_equals_full_decode_then_torchvision_resize(mode: str) -> None:
    rng = np.random.default_rng(1)
    for trial in range(250):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        out_h, out_w = (int(v) for v in rng.integers(1, 64, 2))
        if trial % 3 == 0:
            dense = adversarial(h, w)
        else:
            dense = rng.random((int(rng.integers(1, 5)), h, w)) < rng.random()
        rles = coco_rles(dense)
        full = coco_decode(rles)
        expected = resized(full, out_h, out_w, mode)
        got = rle_at_size(rles, h, w, out_h, out_w, mode=mode)  # type: ignore[arg-type]
        assert got.dtype == torch.bool and got.shape == (len(rles), out_h, out_w)
        assert torch.equal(got, expected), (h, w, out_h, out_w)
        # uint8 masks take the same pixels in torchvision (no cast to float there)
        assert torch.equal(resized(full.to(torch.uint8), out_h, out_w, mode).bool(), expected)


def test_rle_at_size_takes_every_counts_form() -> None:
    rng = np.random.default_rng(2)
    dense = np.concatenate([adversarial(37, 23), rng.random((4, 37, 23)) < 0.4])
    coco = coco_rles(dense)
    as_str = mask_codec.encode(dense)  # str counts
    uncompressed = [{"size": [37, 23], "counts": mask_codec.run_lengths(r["counts"]).tolist()}
                    for r in as_str]
    expected = resized(torch.from_numpy(dense), 11, 17)
    for rles in (coco, as_str, uncompressed):
        assert torch.equal(rle_at_size(rles, 37, 23, 11, 17), expected)


def test_rle_at_size_on_realistic_high_resolution_blobs() -> None:
    h, w = 3000, 4000
    rles = blobs(4, h, w, seed=3)
    out_h, out_w = target_size(h, w, 800, 1333)
    assert torch.equal(rle_at_size(rles, h, w, out_h, out_w),
                       resized(coco_decode(rles), out_h, out_w))


def test_rle_at_size_never_builds_the_full_frame() -> None:
    # 100000 x 100000 is 10 GB as a dense bool mask: only run lengths can get through this.
    h = w = 100_000
    r0, r1, c0, c1 = 12_345, 67_890, 3_000, 99_999
    runs = [c0 * h + r0]
    for _ in range(c0, c1 - 1):
        runs += [r1 - r0, h - (r1 - r0)]
    runs += [r1 - r0, (w - c1 + 1) * h - r1]
    rect = {"size": [h, w], "counts": runs}
    empty = {"size": [h, w], "counts": [h * w]}
    out_h, out_w = 90, 120
    got = rle_at_size([rect, empty], h, w, out_h, out_w)
    rows, cols = source_indices(h, out_h), source_indices(w, out_w)
    expected = ((rows >= r0) & (rows < r1))[:, None] & ((cols >= c0) & (cols < c1))[None, :]
    assert torch.equal(got[0], torch.from_numpy(expected))
    assert not got[1].any()
    compact = compact_at_size([rect, empty], h, w, out_h, out_w)
    assert torch.equal(compact.to_dense(), got)


def test_rle_at_size_upscales_too() -> None:
    dense = adversarial(5, 7)
    rles = coco_rles(dense)
    for out_h, out_w in [(13, 29), (10, 14), (5, 70), (1, 1)]:
        expected = resized(torch.from_numpy(dense), out_h, out_w)
        assert torch.equal(rle_at_size(rles, 5, 7, out_h, out_w), expected)
        assert torch.equal(compact_at_size(rles, 5, 7, out_h, out_w).to_dense(), expected)


def test_rle_at_size_refuses_bad_input() -> None:
    rles = coco_rles(adversarial(10, 12))
    with pytest.raises(ValidationError, match="not the 12x10"):
        rle_at_size(rles, 12, 10, 5, 5)
    with pytest.raises(ValidationError, match="add up to"):
        rle_at_size([{"size": [10, 12], "counts": [5, 5]}], 10, 12, 5, 5)
    with pytest.raises(ValidationError, match="negative"):
        rle_at_size([{"size": [10, 12], "counts": [130, -10]}], 10, 12, 5, 5)
    with pytest.raises(ValidationError, match="COCO RLE"):
        rle_at_size([{"counts": "abc"}], 10, 12, 5, 5)
    with pytest.raises(ValidationError, match="out_w"):
        rle_at_size(rles, 10, 12, 5, 0)
    with pytest.raises(ValidationError, match="mode"):
        rle_at_size(rles, 10, 12, 5, 5, mode="bilinear")  # type: ignore[arg-type]
    assert rle_at_size([], 10, 12, 5, 6).shape == (0, 5, 6)


def test_compact_at_size_is_the_same_masks_and_small() -> None:
    h, w = 600, 900
    rles = blobs(6, h, w, seed=4) + coco_rles(adversarial(h, w))
    out_h, out_w = target_size(h, w, 200)
    compact = compact_at_size(rles, h, w, out_h, out_w)
    dense = rle_at_size(rles, h, w, out_h, out_w)
    assert compact.shape == (len(rles), out_h, out_w)
    assert torch.equal(compact.to_dense(), dense)
    # zero-length runs are merged away (only a leading one, for a mask starting foreground)
    counts, offsets = compact.counts.numpy(), compact.offsets.numpy()
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        assert (counts[a + 1:b] > 0).all()
    # its RLEs are the ones pycocotools encodes from the dense masks
    ref = coco_rles(dense.numpy())
    assert [r["counts"] for r in compact.to_rles()] == [r["counts"].decode() for r in ref]


def test_polygons_at_size_equals_full_raster_then_resize() -> None:
    rng = np.random.default_rng(5)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(20, 300, 2))
        out_h, out_w = (int(v) for v in rng.integers(5, 120, 2))
        instances = [[rng.random((int(rng.integers(3, 9)), 2)).tolist()
                      for _ in range(int(rng.integers(1, 3)))] for _ in range(3)]
        full = torch.from_numpy(mask_codec.decode(
            [mask_codec.polygons_to_rle(p, h, w) for p in instances]).copy())
        assert torch.equal(polygons_at_size(instances, h, w, out_h, out_w),
                           resized(full, out_h, out_w))


def test_axis_aligned_rectangle_is_exact_at_a_whole_factor() -> None:
    # A rectangle on the 5-pixel grid of a 5x downscale lands on whole output pixels.
    rect = [[(500, 250), (1500, 250), (1500, 2000), (500, 2000)]]
    got = polygons_at_size([rect], 3000, 4000, 600, 800, normalized=False)[0]
    expected = torch.zeros((600, 800), dtype=torch.bool)
    expected[50:400, 100:300] = True
    assert torch.equal(got, expected)


# --- the batch decoder --------------------------------------------------------------------------

@pytest.mark.parametrize("scan", ["auto", "rows", "cumsum"])
def test_decode_rle_batch_equals_pycocotools(scan: str) -> None:
    rng = np.random.default_rng(6)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        if trial % 4 == 0:
            dense = adversarial(h, w)
        else:
            dense = rng.random((int(rng.integers(1, 6)), h, w)) < rng.random()
        rles = coco_rles(dense)
        got = decode_rle_batch(rles, h, w, device="cpu", scan=scan)  # type: ignore[arg-type]
        assert got.is_contiguous() and got.dtype == torch.bool
        assert torch.equal(got, coco_decode(rles)), (h, w)


def test_decoder_scans_agree_and_bad_scan_is_refused() -> None:
    rles = blobs(5, 123, 77, seed=12) + coco_rles(adversarial(123, 77))
    compact = CompactMasks.from_rles(rles, 123, 77)
    ref = coco_decode(rles)
    for scan in ("auto", "rows", "cumsum"):
        assert torch.equal(compact.to_dense("cpu", scan=scan), ref)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="scan"):
        compact.to_dense(scan="sideways")  # type: ignore[arg-type]
    joined = CompactMasks.cat([compact, CompactMasks.from_rles(rles[:2], 123, 77), compact])
    assert torch.equal(joined.to_dense(), torch.cat([ref, ref[:2], ref]))


def test_decode_rle_batch_on_blobs_and_zero_runs() -> None:
    h, w = 480, 641
    rles = blobs(12, h, w, seed=7)
    assert torch.equal(decode_rle_batch(rles, h, w), coco_decode(rles))
    # uncompressed counts may hold zero-length runs anywhere: they change nothing
    runs = [0, 3, 0, 0, 5, 0, 2, h * w - 10]
    got = decode_rle_batch([{"size": [h, w], "counts": runs}], h, w)[0]
    expected = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(w, h).T
    assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(expected)))
    assert torch.equal(got, coco_decode(coco_mask.frPyObjects(
        [{"size": [h, w], "counts": runs}], h, w))[0])


def test_compact_masks_pickle_small_and_check_their_input() -> None:
    h, w = 800, 1066
    rles = blobs(30, h, w, seed=8)
    compact = CompactMasks.from_rles(rles, h, w)
    data = pickle.dumps(compact)
    back = pickle.loads(data)
    assert isinstance(back, CompactMasks) and back.shape == (30, h, w)
    assert torch.equal(back.to_dense(), coco_decode(rles))
    assert len(data) < compact.nbytes + 512  # the run lengths, not the pixels
    assert "n=30" in repr(compact)
    with pytest.raises(ValidationError, match="add up to"):
        CompactMasks([5, 5], [0, 2], 3, 4)
    with pytest.raises(ValidationError, match="offsets"):
        CompactMasks([12], [0, 2], 3, 4)
    with pytest.raises(ValidationError, match="negative"):
        CompactMasks([13, -1], [0, 2], 3, 4)
    with pytest.raises(ValidationError, match="int32"):
        CompactMasks([50_000 * 50_000], [0, 1], 50_000, 50_000)
    with pytest.raises(ValidationError, match="one size"):
        CompactMasks.cat([CompactMasks([12], [0, 1], 3, 4), CompactMasks([12], [0, 1], 4, 3)])
    dense = adversarial(9, 11)
    assert torch.equal(CompactMasks.from_dense(dense).to_dense(), torch.from_numpy(dense))


def test_decode_masks_replaces_only_compact_masks() -> None:
    a = blobs(3, 50, 70, seed=9)
    b = blobs(2, 50, 70, seed=10)
    c = blobs(4, 31, 17, seed=11)
    dense_already = tv_tensors.Mask(torch.ones((1, 5, 5), dtype=torch.bool))
    targets = ({"masks": CompactMasks.from_rles(a, 50, 70), "labels": torch.tensor([1, 2, 3])},
               {"masks": dense_already},
               {"labels": torch.tensor([7])},
               {"masks": CompactMasks.from_rles(c, 31, 17)},
               {"masks": CompactMasks.from_rles(b, 50, 70)},
               {"masks": CompactMasks([], [0], 8, 9)})
    out = decode_masks(targets, device="cpu")
    assert out is targets
    for t, rles in ((targets[0], a), (targets[3], c), (targets[4], b)):
        assert isinstance(t["masks"], tv_tensors.Mask)
        assert torch.equal(t["masks"].as_subclass(torch.Tensor), coco_decode(rles))
    assert targets[1]["masks"] is dense_already
    assert set(targets[2]) == {"labels"}
    assert targets[5]["masks"].shape == (0, 8, 9)
    assert torch.equal(targets[0]["labels"], torch.tensor([1, 2, 3]))
    one = {"masks": CompactMasks.from_rles(a, 50, 70)}
    assert decode_masks(one) is one and isinstance(one["masks"], tv_tensors.Mask)
    with pytest.raises(ValidationError, match="sequence"):
        decode_masks(42)


# --- across DataLoader workers ------------------------------------------------------------------

class CompactSamples(Dataset[tuple[int, dict[str, Any]]]):
    """Each sample: blob masks as CompactMasks, plus their COCO RLEs to check against."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> tuple[int, dict[str, Any]]:
        h, w = (60 + 7 * index, 90 - 5 * index)
        rles = blobs(2 + index, h, w, seed=100 + index)
        return index, {"masks": CompactMasks.from_rles(rles, h, w), "rles": rles,
                       "labels": torch.arange(len(rles))}


def tuple_collate(batch: list[tuple[int, dict[str, Any]]]) -> tuple[tuple[Any, ...], ...]:
    return tuple(zip(*batch, strict=True))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_compact_masks_cross_dataloader_workers(method: str) -> None:
    loader = DataLoader(CompactSamples(), batch_size=3, num_workers=2, collate_fn=tuple_collate,
                        multiprocessing_context=method)
    seen = []
    for indices, targets in loader:
        assert all(isinstance(t["masks"], CompactMasks) for t in targets)
        decode_masks(targets, device="cpu")
        for i, t in zip(indices, targets, strict=True):
            seen.append(i)
            assert isinstance(t["masks"], tv_tensors.Mask)
            assert torch.equal(t["masks"].as_subclass(torch.Tensor), coco_decode(t["rles"]))
    assert sorted(seen) == list(range(6))


# --- the memory budget --------------------------------------------------------------------------

def test_mask_budget_error_names_sample_bytes_and_knobs() -> None:
    assert check_mask_budget(30, 800, 1066, 10**9, "sample 3") == 30 * 800 * 1066
    assert check_mask_budget(30, 3000, 4000, None, "sample 3") == 30 * 3000 * 4000
    with pytest.raises(MaskBudgetError) as info:
        check_mask_budget(30, 3000, 4000, 256 * 10**6, "sample 7 (file id 42)")
    err = info.value
    assert isinstance(err, ValidationError) and isinstance(err, SampleError)
    msg = str(err)
    for part in ("sample 7 (file id 42)", "360.0 MB", "256.0 MB", "size=", 'mask_format="rle"',
                 "mask_budget_bytes=", "800x1066"):
        assert part in msg, part
    assert (err.needed_bytes, err.budget_bytes, err.n) == (360_000_000, 256_000_000, 30)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, MaskBudgetError) and str(back) == msg and back.what == err.what
    with pytest.raises(MaskBudgetError, match="max_masks_bytes="):
        check_mask_budget(2, 10, 10, 100, "sample 0", knob="max_masks_bytes")
    with pytest.raises(ValidationError, match="non-negative"):
        check_mask_budget(2, 10, 10, -1, "sample 0")
