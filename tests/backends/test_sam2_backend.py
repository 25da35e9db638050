"""SAM 2.1 and SAM 1 in transformers' format: tiny random-weight checkpoints saved to a folder
and loaded back through ``LocalSamBackend.from_pretrained``, on the CPU."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

tf = pytest.importorskip("transformers", reason="the sam2 extra (transformers) is needed")

from cogseg_ml.api.results import SegmentRequest  # noqa: E402
from cogseg_ml.backends.base import BackendJob  # noqa: E402
from cogseg_ml.backends.local_sam import LocalSamBackend  # noqa: E402
from cogseg_ml.backends.prompt_geometry import (  # noqa: E402
    CropOptions,
    ModelFrame,
    to_model_frame,
)
from cogseg_ml.backends.sam2 import (  # noqa: E402
    SamCheckpointError,
    TransformersSamAdapter,
    save_random_checkpoint,
)
from cogseg_ml.emulator.synthetic_images import encode_image, make_image  # noqa: E402
from cogseg_ml.errors import FileValidationError, ValidationError  # noqa: E402
from cogseg_ml.mask_codec import decode, iou_matrix  # noqa: E402
from cogseg_ml.prompts import Box, FileRef, Point, Prompt  # noqa: E402

FAMILIES = ["sam2", "sam"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {fam: save_random_checkpoint(root / fam, fam, seed=0) for fam in FAMILIES}


@pytest.fixture(scope="module")
def sam2(folders: dict[str, Path]) -> LocalSamBackend:
    return LocalSamBackend.from_pretrained(folders["sam2"], device="cpu")


class Counter:
    """Counts forward calls of a module and the batch sizes it saw."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        first = args[0] if args else None
        self.batches.append(int(first.shape[0]) if isinstance(first, torch.Tensor) else -1)

    def close(self) -> None:
        self.handle.remove()


def _jobs(pixels: np.ndarray, prompts: Sequence[Prompt], file_id: int, tag0: int = 0
          ) -> list[BackendJob]:
    data = encode_image(pixels)
    key = hashlib.sha256(data).hexdigest()
    h, w = pixels.shape[:2]
    return [BackendJob(SegmentRequest(FileRef(id=file_id), p, tag=(file_id, tag0 + i)), h, w,
                       key, lambda data=data: data) for i, p in enumerate(prompts)]


def _mixed_prompts(n: int, seed: int) -> list[Prompt]:
    """``n`` prompts of three shapes: a point, a box, two points plus a box."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y = (float(v) for v in rng.uniform(0.2, 0.6, 2))
        if i % 3 == 0:
            out.append(Prompt(points=(Point(x, y),)))
        elif i % 3 == 1:
            out.append(Prompt(box=Box(x - 0.1, y - 0.1, x + 0.3, y + 0.3)))
        else:
            out.append(Prompt(points=(Point(x, y), Point(x + 0.2, y + 0.2, 0)),
                              box=Box(x - 0.1, y - 0.1, x + 0.3, y + 0.3)))
    return out


# --- loading -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_loads_the_folder(folders: dict[str, Path], family: str) -> None:
    be = LocalSamBackend.from_pretrained(str(folders[family]), device="cpu")
    assert isinstance(be.adapter, TransformersSamAdapter) and be.adapter.family == family
    expected = tf.Sam2Model if family == "sam2" else tf.SamModel
    assert isinstance(be.model, expected)
    assert be.model_version.startswith(f"{family}:") and be.name == "local-sam"
    assert be.identities() == [("local-sam", be.model_version)]
    assert be.target_length == 256  # the tiny config's input size, read from the folder
    assert not be.autocast and be.dtype == torch.float32  # autocast is for CUDA only
    assert str(folders[family]) not in repr(be)


def test_a_video_checkpoint_folder_loads_as_the_image_model(folders: dict[str, Path],
                                                            tmp_path: Path) -> None:
    # Published SAM 2.1 folders may say model_type "sam2_video" (image model plus memory).
    folder = tmp_path / "video"
    folder.mkdir()
    for f in folders["sam2"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    tiny = json.loads((folder / "config.json").read_text())
    video = tf.Sam2VideoConfig(vision_config=tiny["vision_config"],
                               prompt_encoder_config=tiny["prompt_encoder_config"],
                               mask_decoder_config=tiny["mask_decoder_config"])
    (folder / "config.json").write_text(json.dumps(video.to_dict()))
    be = LocalSamBackend.from_pretrained(folder, device="cpu")
    ref = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu")
    assert be.adapter.family == "sam2" and be.model_version == ref.model_version


def test_missing_and_wrong_folders_are_clear_errors(folders: dict[str, Path],
                                                    tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SamCheckpointError) as info:
        LocalSamBackend.from_pretrained(missing, device="cpu")
    msg = str(info.value)
    assert isinstance(info.value, ValidationError) and info.value.path == str(missing)
    assert str(missing) in msg and "does not exist" in msg and "config.json" in msg
    assert "hf download" in msg
    # A hub id is not fetched unless asked for.
    with pytest.raises(SamCheckpointError, match="allow_download=True"):
        LocalSamBackend.from_pretrained("facebook/sam2.1-hiera-tiny", device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SamCheckpointError, match="has no config.json"):
        LocalSamBackend.from_pretrained(empty, device="cpu")
    (empty / "sam2.1_hiera_tiny.pt").write_bytes(b"original format")
    with pytest.raises(SamCheckpointError, match="Meta's original format"):
        LocalSamBackend.from_pretrained(empty, device="cpu")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SamCheckpointError) as info:
        LocalSamBackend.from_pretrained(other, device="cpu")
    assert "'bert'" in str(info.value) and "'sam2'" in str(info.value)
    assert str(other) in str(info.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(SamCheckpointError, match="not a readable JSON config"):
        LocalSamBackend.from_pretrained(broken, device="cpu")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((folders["sam2"] / "config.json").read_bytes())
    with pytest.raises(SamCheckpointError, match="has no weights"):
        LocalSamBackend.from_pretrained(no_weights, device="cpu")
    bad_weights = tmp_path / "bad_weights"
    bad_weights.mkdir()
    (bad_weights / "config.json").write_bytes((folders["sam"] / "config.json").read_bytes())
    (bad_weights / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(SamCheckpointError, match="could not be loaded as SamModel"):
        LocalSamBackend.from_pretrained(bad_weights, device="cpu")
    pth = tmp_path / "sam_vit_b.pth"
    pth.write_bytes(b"x")
    with pytest.raises(SamCheckpointError, match=r"LocalSamBackend\(checkpoint=PATH"):
        LocalSamBackend.from_pretrained(pth, device="cpu")


def test_a_folder_without_processor_settings_gets_the_published_preprocessing(
        folders: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((folders["sam2"] / name).read_bytes())
    be = LocalSamBackend.from_pretrained(bare, device="cpu")
    ref = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu")
    assert be.target_length == 256 and be.model_version == ref.model_version


def test_model_version_identifies_the_weights(folders: dict[str, Path], tmp_path: Path) -> None:
    a = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu")
    other_seed = save_random_checkpoint(tmp_path / "seed1", "sam2", seed=1)
    b = LocalSamBackend.from_pretrained(other_seed, device="cpu")
    same_weights = save_random_checkpoint(tmp_path / "seed0", "sam2", seed=0)
    c = LocalSamBackend.from_pretrained(same_weights, device="cpu")
    assert a.model_version != b.model_version  # same config, other weights: never shared
    assert a.model_version == c.model_version  # the same weights in another folder: shared
    sam1 = LocalSamBackend.from_pretrained(folders["sam"], device="cpu")
    assert sam1.model_version.startswith("sam:") and sam1.model_version != a.model_version


# --- results ------------------------------------------------------------------------------------
def _reference(be: LocalSamBackend, pixels: np.ndarray, prompt: Prompt
               ) -> tuple[np.ndarray, float]:
    """transformers' own pipeline: processor, full forward, post_process_masks, best by IoU."""
    adapter = be.adapter
    assert isinstance(adapter, TransformersSamAdapter)
    proc, model = adapter.processor, be.model
    h, w = pixels.shape[:2]
    kw: dict[str, Any] = {}
    if prompt.points:
        kw["input_points"] = [[[[p.x * w - 0.5, p.y * h - 0.5] for p in prompt.points]]]
        kw["input_labels"] = [[[p.label for p in prompt.points]]]
    if prompt.box is not None:
        b = prompt.box
        kw["input_boxes"] = [[[b.x_min * w - 0.5, b.y_min * h - 0.5, b.x_max * w - 0.5,
                               b.y_max * h - 0.5]]]
    inputs = proc(images=pixels, return_tensors="pt", input_data_format="channels_last", **kw)
    with torch.inference_mode():
        out = model(pixel_values=inputs["pixel_values"],
                    **{k: inputs[k].float() if k != "input_labels" else inputs[k]
                       for k in ("input_points", "input_labels", "input_boxes") if k in inputs},
                    multimask_output=True)
        post = ([inputs["original_sizes"], inputs["reshaped_input_sizes"]]
                if adapter.family == "sam" else [inputs["original_sizes"]])
        masks = proc.post_process_masks(out.pred_masks, *post)[0][0]
    best = int(out.iou_scores[0, 0].argmax())
    return masks[best].numpy(), float(out.iou_scores[0, 0, best])


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_equal_transformers_own_pipeline(folders: dict[str, Path], family: str) -> None:
    be = LocalSamBackend.from_pretrained(folders[family], device="cpu")
    pixels = make_image(21, 120, 200, n_objects=3).pixels
    prompts = _mixed_prompts(6, seed=3)
    results = be.segment_image(pixels, prompts)
    for prompt, res in zip(prompts, results, strict=True):
        mask, score = _reference(be, pixels, prompt)
        ours = decode([res.segments[0].rle])[0]
        assert ours.shape == mask.shape == (120, 200)
        assert (ours != mask).mean() < 1e-3  # bilinear upscaling may flip a boundary pixel
        assert res.segments[0].score == pytest.approx(min(max(score, 0.0), 1.0), abs=1e-4)


def test_several_images_with_different_prompt_counts(sam2: LocalSamBackend) -> None:
    sizes = [(120, 200), (64, 96), (150, 90)]
    counts = [1, 4, 7]
    jobs: list[BackendJob] = []
    for i, ((h, w), n) in enumerate(zip(sizes, counts, strict=True)):
        jobs += _jobs(make_image(40 + i, h, w).pixels, _mixed_prompts(n, seed=i), file_id=i + 1)
    enc = Counter(sam2.model.vision_encoder)
    try:
        outs = list(sam2.run(jobs))
    finally:
        enc.close()
    assert len(enc.batches) == 3  # one encoder call per image
    assert sorted(o.job.request.tag for o in outs) == sorted(j.request.tag for j in jobs)
    for o in outs:
        assert o.error is None and o.result is not None
        file_id = o.job.request.tag[0]
        h, w = sizes[file_id - 1]
        assert (o.result.height, o.result.width) == (h, w)
        m = o.result.masks()
        assert m.shape == (1, h, w) and m.dtype == torch.bool
        assert 0.0 <= o.result.segments[0].score <= 1.0
        assert o.result.model_version == sam2.model_version


def test_an_image_used_twice_is_encoded_once(folders: dict[str, Path]) -> None:
    be = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu", embedding_cache_size=2)
    pixels = make_image(50, 120, 200).pixels
    enc = Counter(be.model.vision_encoder)
    try:
        first = list(be.run(_jobs(pixels, _mixed_prompts(3, 0), file_id=1)))
        again = list(be.run(_jobs(pixels, _mixed_prompts(5, 1), file_id=2, tag0=10)))
        assert len(enc.batches) == 1 and be.encoder_calls == 1
        # Two other images push it out of the two-entry cache; then it is encoded again.
        for i in range(2):
            list(be.run(_jobs(make_image(60 + i, 64, 64).pixels, _mixed_prompts(1, 0), 3 + i)))
        list(be.run(_jobs(pixels, _mixed_prompts(1, 2), file_id=9)))
        assert len(enc.batches) == 4
    finally:
        enc.close()
    assert all(o.result is not None for o in first + again)


def test_all_prompts_of_an_image_go_through_the_decoder_together(folders: dict[str, Path]
                                                                 ) -> None:
    pixels = make_image(70, 120, 200, n_objects=3).pixels
    prompts = _mixed_prompts(12, seed=5)  # three shapes, four prompts each
    batched = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu",
                                              decoder_batch_size=64)
    single = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu",
                                             decoder_batch_size=1)
    dec = Counter(batched.model.mask_decoder)
    try:
        together = batched.segment_image(pixels, prompts)
    finally:
        dec.close()
    assert len(dec.batches) == 3 and batched.decoder_calls == 3  # one call per prompt shape
    alone = single.segment_image(pixels, prompts)
    assert single.decoder_calls == 12
    for a, b in zip(together, alone, strict=True):
        ra, rb = a.segments[0].rle, b.segments[0].rle
        same = iou_matrix([ra], [rb])[0, 0] > 0.999 or (
            decode([ra]).sum() == 0 and decode([rb]).sum() == 0)
        assert same and a.segments[0].score == pytest.approx(b.segments[0].score, abs=1e-4)


def test_several_images_share_an_encoder_batch(folders: dict[str, Path]) -> None:
    imgs = [make_image(80 + i, 96, 128).pixels for i in range(3)]
    jobs = [j for i, px in enumerate(imgs) for j in _jobs(px, _mixed_prompts(2, i), i + 1)]
    batched = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu",
                                              encoder_batch_size=3)
    single = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu",
                                             encoder_batch_size=1)
    enc = Counter(batched.model.vision_encoder)
    try:
        together = {o.job.request.tag: o.result for o in batched.run(jobs)}
    finally:
        enc.close()
    assert enc.batches == [3] and batched.encoder_batches == 1
    alone = {o.job.request.tag: o.result for o in single.run(jobs)}
    assert single.encoder_batches == 3
    for tag, res in together.items():
        other = alone[tag]
        assert res is not None and other is not None
        assert res.segments[0].score == pytest.approx(other.segments[0].score, abs=1e-4)
        assert (decode([res.segments[0].rle]) != decode([other.segments[0].rle])).mean() < 1e-3


def test_bad_images_fail_their_own_jobs_only(sam2: LocalSamBackend) -> None:
    good = _jobs(make_image(90, 64, 96).pixels, _mixed_prompts(2, 0), file_id=1)
    unreadable = BackendJob(SegmentRequest(FileRef(id=2), Prompt(points=(Point(0.5, 0.5),)),
                                           tag="unreadable"), 10, 10, "broken", lambda: b"nope")
    data = encode_image(make_image(91, 64, 96).pixels)
    wrong_size = BackendJob(SegmentRequest(FileRef(id=3), Prompt(points=(Point(0.5, 0.5),)),
                                           tag="wrong-size"), 50, 96, "other", lambda: data)
    outs = {o.job.request.tag: o for o in sam2.run([good[0], unreadable, wrong_size, good[1]])}
    assert all(outs[j.request.tag].result is not None for j in good)
    assert isinstance(outs["unreadable"].error, FileValidationError)
    assert "not a readable image" in str(outs["unreadable"].error)
    err = outs["wrong-size"].error
    assert isinstance(err, FileValidationError) and "96x64" in str(err) and "96x50" in str(err)


def test_bf16_autocast_path(folders: dict[str, Path]) -> None:
    # CUDA runs under bf16 autocast; the same code path, forced on the CPU, keeps dtypes right.
    be = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu", autocast=True,
                                         dtype=torch.bfloat16)
    pixels = make_image(95, 64, 96).pixels
    results = be.segment_image(pixels, _mixed_prompts(3, 0))
    assert [r.masks().shape for r in results] == [(1, 64, 96)] * 3
    assert all(0.0 <= r.segments[0].score <= 1.0 for r in results)


def test_the_backend_pickles_for_dataloader_workers(sam2: LocalSamBackend) -> None:
    pixels = make_image(96, 64, 96).pixels
    before = sam2.segment_image(pixels, _mixed_prompts(2, 0))
    clone = pickle.loads(pickle.dumps(sam2))
    after = clone.segment_image(pixels, _mixed_prompts(2, 0))
    assert clone.model_version == sam2.model_version
    assert [r.segments[0].rle for r in after] == [r.segments[0].rle for r in before]


# --- crops ---------------------------------------------------------------------------------------
class BoxOracle:
    """A model that answers a box prompt with exactly that box, drawn in its low-resolution
    mask grid (the second of three candidates; the others are empty and score lower)."""

    def __init__(self, inner: TransformersSamAdapter) -> None:
        self.inner = inner
        self.family, self.model = inner.family, inner.model
        self.device, self.input_size = inner.device, inner.input_size

    def frame(self, height: int, width: int) -> ModelFrame:
        return self.inner.frame(height, width)

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        return self.inner.encode(images)

    def upscale(self, low_res: torch.Tensor, frame: ModelFrame) -> torch.Tensor:
        return self.inner.upscale(low_res, frame)

    def compile_encoder(self) -> None:
        raise AssertionError("not used")

    def decode(self, embedding: Any, points: torch.Tensor | None, labels: torch.Tensor | None,
               boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        assert boxes is not None
        n, size = len(boxes), self.input_size
        grid = size // 4
        centres = (torch.arange(grid) + 0.5) * size / grid  # continuous model-frame positions
        b = boxes + 0.5  # the prompt encoder's shift to the pixel centre
        inside_x = (centres >= b[:, 0, None]) & (centres < b[:, 2, None])
        inside_y = (centres >= b[:, 1, None]) & (centres < b[:, 3, None])
        box = torch.where(inside_y[:, :, None] & inside_x[:, None, :], 10.0, -10.0)
        empty = torch.full_like(box, -10.0)
        logits = torch.stack([empty, box, empty], dim=1)
        return logits, torch.tensor([[0.2, 0.9, 0.1]]).expand(n, 3)


def _box_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_crop_mode_segments_small_objects_at_full_resolution(sam2: LocalSamBackend) -> None:
    h, w = 1000, 1500
    pixels = make_image(100, h, w).pixels
    box = (750, 500, 780, 520)  # a 30x20 px object: 1.3 x 1.3 cells of the 64x64 mask grid
    prompt = Prompt(box=Box.from_pixels(*box, w, h))
    truth = _box_mask(h, w, *box)
    assert isinstance(sam2.adapter, TransformersSamAdapter)
    oracle = BoxOracle(sam2.adapter)
    whole = LocalSamBackend(adapter=oracle, model_version="oracle", device="cpu")
    cropped = LocalSamBackend(adapter=oracle, model_version="oracle", device="cpu",
                              crop=CropOptions(margin=0.5, min_side=16))
    (full_res,) = whole.segment_image(pixels, [prompt])
    (crop_res,) = cropped.segment_image(pixels, [prompt])
    full_mask = decode([full_res.segments[0].rle])[0]
    crop_mask = decode([crop_res.segments[0].rle])[0]
    assert crop_mask.shape == (h, w) and crop_res.segments[0].score == pytest.approx(0.9)
    iou_crop = (crop_mask & truth).sum() / (crop_mask | truth).sum()
    iou_full = (full_mask & truth).sum() / (full_mask | truth).sum()
    # Within a pixel at every edge in the crop (mask cells of 0.94 px); cells of 23 x 16 px on
    # the whole image.
    assert iou_crop >= 0.9 and iou_full < 0.8
    ys, xs = np.nonzero(crop_mask)  # the pasted mask sits on the object's own pixels
    assert abs(xs.min() - 750) <= 1 and abs(xs.max() + 1 - 780) <= 1
    assert abs(ys.min() - 500) <= 1 and abs(ys.max() + 1 - 520) <= 1


def test_crop_mode_with_the_model_keeps_masks_inside_their_windows(folders: dict[str, Path]
                                                                   ) -> None:
    be = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu",
                                         crop=CropOptions(margin=0.5, min_side=32))
    h, w = 600, 800
    pixels = make_image(110, h, w).pixels
    small = [Prompt(box=Box.from_pixels(100, 100, 130, 120, w, h)),
             Prompt(points=(Point.from_pixels(600, 400, w, h),))]
    large = Prompt(box=Box(0.1, 0.1, 0.9, 0.9))  # too large to crop: the whole image
    jobs = _jobs(pixels, [*small, large], file_id=1)
    enc = Counter(be.model.vision_encoder)
    try:
        outs = {o.job.request.tag: o.result for o in be.run(jobs)}
        assert len(enc.batches) == 3  # the image and two windows
        again = {o.job.request.tag: o.result for o in be.run(jobs)}
        assert len(enc.batches) == 3  # windows are cached like images
    finally:
        enc.close()
    for i, win in ((0, (85, 85, 145, 135)), (1, (584, 384, 616, 416))):
        res = outs[(1, i)]
        assert res is not None and (res.height, res.width) == (h, w)
        m = decode([res.segments[0].rle])[0]
        x0, y0, x1, y1 = win  # a margin-0.5 square around each prompt (min side 32)
        outside = m.copy()
        outside[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = False
        assert not outside.any()
    assert outs == again


# --- through the store and the fallback ------------------------------------------------------
def _labeled_sources(tmp_path: Path, backend: Any, images: list[Any]) -> list[str]:
    from cogseg_ml.labeler import SegmentationLabeler
    from cogseg_ml.samples import Instance, Sample

    samples = [Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
               for im in images]
    lab = SegmentationLabeler(backend, cache=tmp_path / "c", workdir=tmp_path / "w",
                              progress=False)
    rep = lab.label(samples)
    assert rep.failed == 0
    lab.to_coco(tmp_path / "out.json")
    return [a["source"] for a in json.loads((tmp_path / "out.json").read_text())["annotations"]]


def test_fallback_labels_with_sam2_during_an_outage(make_emulator: Callable[..., Any],
                                                    images: list[Any], tmp_path: Path) -> None:
    from cogseg_ml.backends.api_backend import ApiBackend
    from cogseg_ml.backends.fallback import CircuitBreaker, FallbackBackend
    from cogseg_ml.config import RetryConfig
    from cogseg_ml.emulator.faults import Fault

    emu = make_emulator(concurrency=8)
    cfg = emu.config.with_options(retry=RetryConfig(max_attempts=2, backoff_base_s=0.01,
                                                    total_timeout_s=2))
    emu.set_faults(Fault("status", status=503, path_contains="/context/vision/"))
    local = LocalSamBackend.from_pretrained(
        save_random_checkpoint(tmp_path / "ck", "sam2", seed=3), device="cpu")
    fb = FallbackBackend(ApiBackend(cfg, concurrency=8), local, chunk_size=4,
                         breaker=CircuitBreaker(cooldown_s=60, clock=lambda: 0.0))
    sources = _labeled_sources(tmp_path, fb, images[:3])
    assert sources == ["local-sam"] * sum(len(im.objects) for im in images[:3])
    assert fb.breaker.state == "open"


def test_dataset_with_a_sam2_backend(shared_emulator: Any, images: list[Any],
                                     tmp_path: Path) -> None:
    from cogseg_ml.dataset import CdfSegmentationDataset
    from cogseg_ml.samples import Instance, Sample

    local = LocalSamBackend.from_pretrained(
        save_random_checkpoint(tmp_path / "ck", "sam2", seed=4), device="cpu")
    samples = [Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
               for im in images[:2]]
    ds = CdfSegmentationDataset(samples, client=shared_emulator.config, cache=tmp_path / "c",
                                backend=local)
    image, target = ds[0]
    assert target["masks"].shape == (len(images[0].objects), *image.shape[1:])
    assert ds.cache.stats().by_backend == {"local-sam": len(images[0].objects)}
    cached = CdfSegmentationDataset(samples, client=shared_emulator.config,
                                    cache=tmp_path / "c", backend=local, on_miss="raise")
    assert torch.equal(cached[0][1]["masks"], target["masks"])


def test_prompt_frames_reach_the_model_unchanged(sam2: LocalSamBackend) -> None:
    # What the backend hands the decoder is the geometry module's arithmetic, nothing else.
    seen: list[torch.Tensor] = []
    adapter = sam2.adapter
    assert isinstance(adapter, TransformersSamAdapter)
    original = adapter.decode

    def spy(emb: Any, points: Any, labels: Any, boxes: Any) -> Any:
        seen.append(boxes.clone())
        return original(emb, points, labels, boxes)

    adapter.decode = spy  # type: ignore[method-assign]
    try:
        prompt = Prompt(box=Box(0.1, 0.2, 0.7, 0.9))
        sam2.segment_image(make_image(97, 90, 160).pixels, [prompt])
    finally:
        del adapter.decode
    expected = to_model_frame(prompt, adapter.frame(90, 160))[2]
    assert torch.allclose(seen[0][0], torch.from_numpy(expected))


def test_a_transformers_model_object_is_pointed_to_from_pretrained(sam2: LocalSamBackend
                                                                   ) -> None:
    with pytest.raises(ValidationError, match=r"save_pretrained\(FOLDER\)"):
        LocalSamBackend(model=sam2.model, device="cpu")
    for bad in ({"decoder_batch_size": 0}, {"encoder_batch_size": 1.5},
                {"crop": {"margin": 0.5}}):
        with pytest.raises(ValidationError):
            LocalSamBackend(adapter=sam2.adapter, model_version="x", device="cpu",
                            **bad)  # type: ignore[arg-type]


def test_cpu_decoder_batches_are_sized_by_the_feature_copies(folders: dict[str, Path]) -> None:
    from cogseg_ml.backends.local_sam import _cpu_decoder_batch

    # The decoder copies these per prompt: 16 MiB for SAM 2.1 at 1024 px, 4 MiB for SAM 1.
    sam2_published = [torch.zeros(1, 32, 256, 256), torch.zeros(1, 64, 128, 128),
                      torch.zeros(1, 256, 64, 64)]
    assert _cpu_decoder_batch(sam2_published) == 2
    assert _cpu_decoder_batch(torch.zeros(1, 256, 64, 64)) == 8
    be = LocalSamBackend.from_pretrained(folders["sam2"], device="cpu")
    assert be.decoder_batch_size is None  # sized on the CPU by the embedding
    be.segment_image(make_image(98, 64, 96).pixels, _mixed_prompts(12, 1))
    assert be.decoder_calls == 3  # tiny features: each prompt shape in one call
