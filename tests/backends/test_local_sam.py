"""The local Segment-Anything backend on the CPU with a tiny random-weight model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.base import BackendJob
from cogseg_ml.backends.local_sam import (
    CropOptions,
    LocalSamBackend,
    SamCheckpointError,
    build_sam,
    build_tiny_sam,
    to_model_frame,
    weights_digest,
)
from cogseg_ml.backends.prompt_geometry import crop_window
from cogseg_ml.emulator.synthetic_images import encode_image, make_image
from cogseg_ml.errors import ValidationError
from cogseg_ml.mask_codec import decode, iou_matrix
from cogseg_ml.prompts import Box, FileRef, Point, Prompt


@pytest.fixture(scope="module")
def backend() -> LocalSamBackend:
    return LocalSamBackend(model=build_tiny_sam(seed=0), device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_image(11, 120, 200, n_objects=3).pixels


def test_prompt_conversion_arithmetic() -> None:
    # 200x100 image, longest side resized to 1024: scale 5.12. A normalized x lands at
    # x*W pixels; SAM's frame is that minus 0.5 (its encoder adds 0.5), times the scale.
    p = Prompt(points=(Point(0.5, 0.25, 1), Point(0.0, 1.0, 0)), box=Box(0.1, 0.2, 0.9, 0.8))
    pts, labels, box = to_model_frame(p, height=100, width=200, target_length=1024)
    assert pts[0] == pytest.approx([(100 - 0.5) * 5.12, (25 - 0.5) * 5.12])
    assert pts[1] == pytest.approx([-0.5 * 5.12, 99.5 * 5.12])
    assert labels.tolist() == [1.0, 0.0]
    assert box is not None
    assert box == pytest.approx([19.5 * 5.12, 19.5 * 5.12, 179.5 * 5.12, 79.5 * 5.12])
    # Non-uniform rounding: 333x500 -> 682x1024 (SAM rounds the short side).
    pts, _, _ = to_model_frame(Prompt(points=(Point(1.0, 1.0),)), 333, 500, 1024)
    assert pts[0] == pytest.approx([(500 - 0.5) * 1024 / 500, (333 - 0.5) * 682 / 333])
    _, _, none = to_model_frame(Prompt(points=(Point(0.5, 0.5),)), 10, 10, 1024)
    assert none is None


def test_shapes_dtypes_and_scores(backend: LocalSamBackend, image: np.ndarray) -> None:
    prompts = [Prompt(points=(Point(0.3, 0.4),)), Prompt(box=Box(0.1, 0.1, 0.6, 0.7)),
               Prompt(points=(Point(0.5, 0.5), Point(0.9, 0.9, 0)), box=Box(0.2, 0.2, 0.8, 0.8))]
    results = backend.segment_image(image, prompts)
    assert len(results) == 3
    for r in results:
        assert (r.height, r.width) == (120, 200) and r.backend == "local-sam"
        assert len(r.segments) == 1 and 0.0 <= r.segments[0].score <= 1.0
        m = r.masks()
        assert m.shape == (1, 120, 200) and m.dtype == torch.bool


def test_batching_equals_one_by_one(image: np.ndarray) -> None:
    prompts = [Prompt(points=(Point(0.2 + 0.1 * i, 0.5),)) for i in range(5)] + [
        Prompt(points=(Point(0.5, 0.5), Point(0.6, 0.6), Point(0.1, 0.1, 0)))]
    batched = LocalSamBackend(model=build_tiny_sam(seed=1), device="cpu")
    single = LocalSamBackend(model=build_tiny_sam(seed=1), device="cpu")
    together = batched.segment_image(image, prompts)
    alone = [single.segment_image(image, [p])[0] for p in prompts]
    for a, b in zip(together, alone, strict=True):
        iou = iou_matrix([a.segments[0].rle], [b.segments[0].rle])[0, 0]
        assert iou > 0.999 or (decode([a.segments[0].rle]).sum() == 0
                               and decode([b.segments[0].rle]).sum() == 0)
        assert a.segments[0].score == pytest.approx(b.segments[0].score, abs=1e-4)


def test_embedding_cache_encodes_each_image_once(image: np.ndarray) -> None:
    be = LocalSamBackend(model=build_tiny_sam(seed=2), device="cpu", embedding_cache_size=2)
    for _ in range(3):
        be.segment_image(image, [Prompt(points=(Point(0.5, 0.5),))], key="img-a")
    assert be.encoder_calls == 1
    other = make_image(12, 120, 200).pixels
    be.segment_image(other, [Prompt(points=(Point(0.5, 0.5),))], key="img-b")
    be.segment_image(image, [Prompt(points=(Point(0.5, 0.5),))], key="img-c")
    be.segment_image(image, [Prompt(points=(Point(0.5, 0.5),))], key="img-a")  # evicted
    assert be.encoder_calls == 4


def test_run_groups_jobs_by_image(backend: LocalSamBackend) -> None:
    img = make_image(13, 64, 96)
    data = encode_image(img.pixels)
    key = hashlib.sha256(data).hexdigest()
    jobs = [BackendJob(SegmentRequest(FileRef(id=1), Prompt(box=o.box()), tag=i), 64, 96, key,
                       lambda: data) for i, o in enumerate(img.objects)]
    jobs.append(BackendJob(SegmentRequest(FileRef(id=2), Prompt(points=(Point(0.5, 0.5),)),
                                          tag="bad"), 10, 10, "broken", lambda: b"nope"))
    before = backend.encoder_calls
    outs = {o.job.request.tag: o for o in backend.run(jobs)}
    assert backend.encoder_calls == before + 1
    assert all(outs[i].result is not None for i in range(len(img.objects)))
    assert outs["bad"].error is not None and "not a readable image" in str(outs["bad"].error)


def test_checkpoint_errors_name_the_file_and_type(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="does not exist"):
        build_sam("vit_b", tmp_path / "missing.pth")
    with pytest.raises(ValidationError, match="model_type must be one of"):
        build_sam("vit_x", None)
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValidationError, match="could not be read"):
        build_sam("vit_b", bad)
    tiny = tmp_path / "tiny.pth"
    torch.save(build_tiny_sam().state_dict(), tiny)
    with pytest.raises(ValidationError) as info:
        build_sam("vit_b", tiny)
    assert "tiny.pth" in str(info.value) and "vit_b" in str(info.value)


def test_real_architecture_builds_with_random_weights() -> None:
    model = build_sam("vit_b", None)
    n = sum(p.numel() for p in model.parameters())
    assert 90e6 < n < 95e6  # the real ViT-B SAM


def test_a_folder_is_pointed_to_from_pretrained(tmp_path: Path) -> None:
    with pytest.raises(SamCheckpointError) as info:
        build_sam("vit_b", tmp_path)
    assert str(tmp_path) in str(info.value) and "from_pretrained" in str(info.value)
    assert isinstance(info.value, ValidationError)


def test_random_models_of_one_config_get_different_versions() -> None:
    a = LocalSamBackend(model=build_tiny_sam(seed=5), device="cpu")
    b = LocalSamBackend(model=build_tiny_sam(seed=6), device="cpu")
    c = LocalSamBackend(model=build_tiny_sam(seed=5), device="cpu")
    assert a.model_version != b.model_version and a.model_version == c.model_version
    assert weights_digest(a.model) != weights_digest(a.model, extra="other preprocessing")


def test_several_images_per_encoder_call_equal_one_by_one() -> None:
    imgs = [make_image(30 + i, 80, 120).pixels for i in range(3)]
    batched = LocalSamBackend(model=build_tiny_sam(seed=3), device="cpu", encoder_batch_size=3)
    single = LocalSamBackend(model=build_tiny_sam(seed=3), device="cpu")
    together = batched.embed_many(imgs)
    alone = [single.embed(px) for px in imgs]
    assert batched.encoder_batches == 1 and single.encoder_batches == 3
    for a, b in zip(together, alone, strict=True):
        assert a.shape == b.shape == (1, 64, 16, 16)
        assert torch.allclose(a, b, atol=1e-4)
    assert batched.embed_many(imgs) is not None and batched.encoder_calls == 3  # cached


def test_crop_mode_keeps_a_small_prompt_inside_its_window() -> None:
    options = CropOptions(margin=0.5, min_side=32)
    be = LocalSamBackend(model=build_tiny_sam(seed=4), device="cpu", crop=options)
    h, w = 400, 600
    pixels = make_image(33, h, w).pixels
    prompt = Prompt(box=Box.from_pixels(300, 200, 320, 216, w, h))
    (res,) = be.segment_image(pixels, [prompt])
    assert (res.height, res.width) == (h, w) and be.encoder_calls == 1
    win = crop_window(prompt, h, w, options)
    assert win is not None and (win.width, win.height) == (40, 40)  # twice the box's 20 px
    m = decode([res.segments[0].rle])[0]
    inside = np.zeros_like(m)
    inside[win.y0:win.y1, win.x0:win.x1] = True
    assert m.any() and not (m & ~inside).any()


def test_weights_digest_counts_scalar_tensors() -> None:
    """A 0-d parameter (e.g. a logit scale) is hashed like any tensor, not a crash."""

    class WithScale(torch.nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(scale))
            self.proj = torch.nn.Linear(2, 2)
            torch.nn.init.zeros_(self.proj.weight)
            torch.nn.init.zeros_(self.proj.bias)

    one, same, other = WithScale(1.0), WithScale(1.0), WithScale(2.0)
    assert weights_digest(one) == weights_digest(same)
    assert weights_digest(one) != weights_digest(other)
