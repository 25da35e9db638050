"""The local model reads a large JPEG reduced to no less than its own input (SAM resizes to
1024 on the long side anyway), and only there: masks still come back at the full size."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the sam2 extra (transformers) is needed")

from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.base import BackendJob
from cogseg_ml.backends.local_sam import LocalSamBackend
from cogseg_ml.backends.prompt_geometry import CropOptions
from cogseg_ml.backends.sam2 import save_random_checkpoint, tiny_config
from cogseg_ml.emulator.synthetic_images import encode_image, make_image
from cogseg_ml.errors import FileValidationError
from cogseg_ml.image_decode import decode_array, decode_array_reduced
from cogseg_ml.mask_codec import decode
from cogseg_ml.prompts import Box, FileRef, Point, Prompt

INPUT = 256  # the tiny checkpoint's input size


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam2", "sam2", seed=0,
                                  config=tiny_config("sam2", image_size=INPUT))


class EncoderInputs:
    """Records the shape of every image the adapter is asked to encode."""

    def __init__(self, backend: LocalSamBackend) -> None:
        self.shapes: list[tuple[int, ...]] = []
        adapter = backend.adapter
        original = adapter.encode

        def encode(images: Sequence[np.ndarray]) -> list[Any]:
            self.shapes += [tuple(im.shape) for im in images]
            return original(images)

        adapter.encode = encode  # type: ignore[method-assign]


def _jobs(data: bytes, h: int, w: int, prompts: Sequence[Prompt], *, declared: tuple[int, int]
          | None = None) -> list[BackendJob]:
    key = hashlib.sha256(data).hexdigest()
    dh, dw = declared or (h, w)
    return [BackendJob(SegmentRequest(FileRef(id=7), p, tag=i), dh, dw, key, lambda: data)
            for i, p in enumerate(prompts)]


PROMPTS = [Prompt(points=(Point(0.4, 0.5, 1),)), Prompt(box=Box(0.2, 0.2, 0.7, 0.8))]


def _run(backend: LocalSamBackend, jobs: list[BackendJob]) -> list[np.ndarray]:
    outcomes = sorted(backend.run(jobs), key=lambda o: o.job.request.tag)
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    masks = []
    for o in outcomes:
        assert o.result is not None
        assert (o.result.height, o.result.width) == (o.job.height, o.job.width)
        masks.append(decode([o.result.segments[0].rle])[0])
    return masks


def test_a_large_jpeg_is_read_reduced_but_no_smaller_than_the_input(folder: Path) -> None:
    h, w = 1200, 1100  # 1/4 would be 300 x 275 (>= 256), 1/8 too small
    pixels = make_image(3, h, w).pixels
    data = encode_image(pixels, "jpeg", quality=95)
    be = LocalSamBackend.from_pretrained(folder, device="cpu")
    seen = EncoderInputs(be)
    masks = _run(be, _jobs(data, h, w, PROMPTS))
    assert seen.shapes == [(300, 275, 3)]  # one encode, at the largest reduction that fits
    assert all(m.shape == (h, w) for m in masks)
    # The same prompts on the fully decoded image: the encoder's own resize to 256 x 256 sees
    # nearly the same pixels, so the masks agree.
    full = LocalSamBackend.from_pretrained(folder, device="cpu")
    ref = [decode([r.segments[0].rle])[0]
           for r in full.segment_image(decode_array(data), PROMPTS)]
    for got, want in zip(masks, ref, strict=True):
        union = (got | want).sum()
        assert union == 0 or (got & want).sum() / union >= 0.95


@pytest.mark.parametrize("case", ["png", "small-jpeg", "crop"])
def test_full_resolution_where_the_input_is_not_smaller(folder: Path, case: str) -> None:
    h, w = (400, 300) if case == "small-jpeg" else (1200, 1100)
    pixels = make_image(4, h, w).pixels
    data = encode_image(pixels, "png" if case == "png" else "jpeg")
    crop = CropOptions(margin=0.5, min_side=16) if case == "crop" else None
    be = LocalSamBackend.from_pretrained(folder, device="cpu", crop=crop)
    seen = EncoderInputs(be)
    prompts = [Prompt(box=Box.from_pixels(500, 500, 530, 520, w, h))] if case == "crop" \
        else PROMPTS
    _run(be, _jobs(data, h, w, prompts))
    if case == "crop":  # the window is cut from the full-resolution image
        assert seen.shapes and all(s[0] < h and s[1] < w for s in seen.shapes)
        window_h, window_w = seen.shapes[0][:2]
        assert window_h >= 20 and window_w >= 30
    else:
        assert seen.shapes == [(h, w, 3)]


def test_a_declared_size_that_disagrees_is_refused_before_reducing(folder: Path) -> None:
    h, w = 1200, 1100
    data = encode_image(make_image(5, h, w).pixels, "jpeg")
    be = LocalSamBackend.from_pretrained(folder, device="cpu")
    outcomes = list(be.run(_jobs(data, h, w, PROMPTS[:1], declared=(h, w + 8))))
    assert len(outcomes) == 1 and isinstance(outcomes[0].error, FileValidationError)
    assert "1100x1200" in str(outcomes[0].error) and "1108x1200" in str(outcomes[0].error)


def test_decode_array_reduced_keeps_the_minimum_and_reports_the_full_size() -> None:
    pixels = make_image(6, 1000, 1600).pixels
    jpeg = encode_image(pixels, "jpeg")
    arr, full = decode_array_reduced(jpeg, 200, 300)
    assert full == (1000, 1600) and arr.shape == (250, 400, 3)  # 1/4; 1/8 is under 200 high
    arr, full = decode_array_reduced(jpeg, 600, 600)  # 1/2 would be 500 high: no reduction
    assert full == (1000, 1600) and arr.shape == (1000, 1600, 3)
    arr, _ = decode_array_reduced(encode_image(pixels, "png"), 200, 300)
    assert arr.shape == (1000, 1600, 3)
