"""CdfSegmentationDataset at training size (size=, max_size=), compact masks across DataLoader
workers (mask_format="rle", decode_masks), and the dense-mask budget; on the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import JpegImagePlugin
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

import cogseg_ml
from cogseg_ml.dataset import CdfSegmentationDataset, collate_fn
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, make_dataset
from cogseg_ml.errors import SampleError, ValidationError
from cogseg_ml.masks_at_size import CompactMasks, MaskBudgetError, target_size
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample


def samples_for(images: list[SyntheticImage], suffix: str = ".png") -> list[Sample]:
    return [Sample(FileRef(external_id=im.name.removesuffix(".png") + suffix),
                   tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
            for im in images]


@pytest.fixture
def ds_factory(shared_emulator: Emulator, images: list[SyntheticImage], tmp_path: Path):
    def make(**kw) -> CdfSegmentationDataset:
        kw.setdefault("cache", tmp_path / "cache")
        return CdfSegmentationDataset(kw.pop("samples", samples_for(images)),
                                      client=kw.pop("client", shared_emulator.config), **kw)
    return make


def tight_xyxy(masks: torch.Tensor) -> torch.Tensor:
    out = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def check_resized(full: tuple, small: tuple, out_hw: tuple[int, int], *, exact_image: bool,
                  categories: list[str]) -> None:
    """``small`` is ``full`` after v2.Resize to ``out_hw``: image, masks, boxes, area."""
    (img0, t0), (img1, t1) = full, small
    assert tuple(img1.shape) == (3, *out_hw) and isinstance(img1, tv_tensors.Image)
    ref_img = tvf.resize(img0.as_subclass(torch.Tensor), list(out_hw), antialias=True)
    if exact_image:
        assert torch.equal(img1.as_subclass(torch.Tensor), ref_img)
    else:  # a DCT-domain JPEG reduction: close, not equal
        diff = (img1.as_subclass(torch.Tensor).float() - ref_img.float()).abs()
        assert float(diff.mean()) < 3.0
    ref = tvf.resize(tv_tensors.Mask(t0["masks"]), list(out_hw))  # what v2.Resize does
    masks = t1["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.bool
    assert masks.shape == (len(t0["masks"]), *out_hw)
    for m, r in zip(masks, ref, strict=True):
        assert iou(m, r) >= 0.98
    assert torch.equal(masks.as_subclass(torch.Tensor), ref.as_subclass(torch.Tensor).bool())
    boxes = t1["boxes"]
    assert tuple(boxes.canvas_size) == out_hw
    assert torch.equal(boxes.as_subclass(torch.Tensor), tight_xyxy(masks))
    # v2.Resize's boxes: within a pixel for axis-aligned rectangles (nearest sampling can miss
    # a thin tip of another shape: within one source step plus a pixel)
    scaled = tvf.resize(t0["boxes"], list(out_hw)).as_subclass(torch.Tensor)
    err = (boxes.as_subclass(torch.Tensor) - scaled).abs().amax(1)
    rect = torch.tensor([c == "rectangle" for c in categories])
    assert (err[rect] <= 1).all()
    step = max(img0.shape[-2] / out_hw[0], img0.shape[-1] / out_hw[1])
    assert (err <= 1 + step).all()
    assert torch.equal(t1["area"], masks.flatten(1).sum(1).float())
    assert torch.equal(t1["labels"], t0["labels"]) and torch.equal(t1["instances"],
                                                                   t0["instances"])


@pytest.mark.parametrize("size,max_size", [(100, None), (200, 250), ((90, 130), None),
                                           (None, 160), (480, None)])
def test_png_at_size_equals_full_decode_then_resize(ds_factory, images, size, max_size
                                                    ) -> None:
    full, small = ds_factory(), ds_factory(size=size, max_size=max_size)
    for i in range(2):
        out_hw = target_size(images[i].height, images[i].width, size, max_size)
        check_resized(full[i], small[i], out_hw, exact_image=True,
                      categories=[o.category for o in images[i].objects])


def test_jpeg_is_decoded_reduced_in_the_dct_domain(make_emulator, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    big = make_dataset(2, seed=5, height=960, width=1280)
    emu = make_emulator(images=big, image_format="jpeg")
    drafts: list[tuple[tuple[int, int], tuple[int, int]]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        out = original(self, mode, size)
        drafts.append((size, self.size))
        return out

    samples = samples_for(big, ".jpg")
    full = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    small = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c", size=240)
    reference = [full[i] for i in range(2)]
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    for i in range(2):
        check_resized(reference[i], small[i], (240, 320), exact_image=False,
                      categories=[o.category for o in big[i].objects])
    # asked for the target, decoded at 1/4 (no smaller than it)
    assert drafts == [((320, 240), (320, 240))] * 2


def test_user_transforms_apply_after_the_resize(ds_factory) -> None:
    plain = ds_factory(size=100)
    flipped = ds_factory(size=100, transforms=v2.RandomHorizontalFlip(p=1.0))
    (img0, t0), (img1, t1) = plain[0], flipped[0]
    assert torch.equal(img1, img0.flip(-1)) and torch.equal(t1["masks"], t0["masks"].flip(-1))
    assert t1["boxes"].canvas_size == t0["boxes"].canvas_size == (100, 133)


def test_masks_that_vanish_at_the_size_are_dropped(ds_factory, images) -> None:
    full, tiny = ds_factory(), ds_factory(size=(3, 4))
    for i in range(len(images)):
        _, t0 = full[i]
        _, t1 = tiny[i]
        ref = tvf.resize(tv_tensors.Mask(t0["masks"]), [3, 4]).as_subclass(torch.Tensor)
        alive = ref.flatten(1).any(1)
        assert torch.equal(t1["masks"].as_subclass(torch.Tensor), ref[alive])
        assert torch.equal(t1["instances"], t0["instances"][alive])
        assert t1["num_dropped"] == t0["num_dropped"] + int((~alive).sum())
        assert (t1["area"] > 0).all() and len(t1["boxes"]) == len(t1["labels"])


@pytest.mark.parametrize("size", [None, 100, (90, 130)])
def test_rle_format_decodes_to_the_dense_path(ds_factory, size) -> None:
    dense, compact = ds_factory(size=size), ds_factory(size=size, mask_format="rle")
    for i in range(3):
        img0, t0 = dense[i]
        img1, t1 = compact[i]
        assert isinstance(t1["masks"], CompactMasks) and torch.equal(img0, img1)
        for key in ("boxes", "labels", "area", "scores", "instances", "iscrowd"):
            assert torch.equal(t1[key], t0[key]), key
        assert t1["boxes"].canvas_size == t0["boxes"].canvas_size
        (decoded,) = cogseg_ml.decode_masks([t1], device="cpu")
        assert isinstance(decoded["masks"], tv_tensors.Mask)
        assert torch.equal(decoded["masks"], t0["masks"])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_compact_masks_through_dataloader_workers(ds_factory, images, method: str) -> None:
    dense = ds_factory(size=100)
    ds = ds_factory(size=100, mask_format="rle")
    ds[0]  # the parent used the dataset (its session holds a connection) before the workers
    expected = {dense.image_id(i): dense[i][1] for i in range(len(dense))}
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_fn,
                        multiprocessing_context=method)
    seen = 0
    for _imgs, targets in loader:
        assert all(isinstance(t["masks"], CompactMasks) for t in targets)
        targets = cogseg_ml.decode_masks(targets, device="cpu")
        for t in targets:
            ref = expected[t["image_id"]]
            assert torch.equal(t["masks"], ref["masks"]) and torch.equal(t["boxes"],
                                                                         ref["boxes"])
            seen += 1
    assert seen == len(images)


def test_rle_format_refuses_worker_transforms(ds_factory) -> None:
    with pytest.raises(ValidationError) as info:
        ds_factory(mask_format="rle", transforms=v2.RandomHorizontalFlip())
    assert "decode_masks" in str(info.value) and "transforms" in str(info.value)


@pytest.mark.parametrize("kw", [{"size": 800, "max_size": 700}, {"size": (10, 10),
                                                                  "max_size": 20},
                                {"size": 0}, {"size": "big"}, {"mask_format": "bitmap"},
                                {"mask_budget_bytes": -1}, {"mask_budget_bytes": 1.5}])
def test_bad_size_options_fail_before_any_io(ds_factory, kw) -> None:
    with pytest.raises(ValidationError):
        ds_factory(**kw)


def test_mask_budget_names_the_sample_and_the_knobs(ds_factory, images) -> None:
    ds = ds_factory(mask_budget_bytes=1000)
    with pytest.raises(MaskBudgetError) as info:
        ds[1]
    err = info.value
    assert isinstance(err, SampleError) and isinstance(err, ValidationError)
    text = str(err)
    assert "sample 1" in text and images[1].name in text
    for knob in ("size=", 'mask_format="rle"', "mask_budget_bytes"):
        assert knob in text
    assert err.needed_bytes == len(images[1].objects) * images[1].height * images[1].width
    # the budget applies at the returned size, and compact masks are not dense
    n = len(images[1].objects)
    assert len(ds_factory(size=(10, 10), mask_budget_bytes=n * 100)[1][1]["masks"]) == n
    assert len(ds_factory(mask_format="rle", mask_budget_bytes=1000)[1][1]["masks"]) == n
    assert len(ds_factory(mask_budget_bytes=None)[1][1]["masks"]) == n


class _ReductionsOver(TorchDispatchMode):
    """Records the reductions (sum, any, argmax, ...) run on tensors of ``shape``."""

    REDUCTIONS = ("sum", "any", "all", "argmax", "argmin", "amax", "amin", "max", "min",
                  "nonzero", "count_nonzero")

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape, self.seen = shape, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.__name__.split(".")[0]
        if name in self.REDUCTIONS and any(
                isinstance(a, torch.Tensor) and tuple(a.shape) == self.shape for a in args):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("size", [100, (90, 130), 480])
def test_dense_boxes_and_areas_come_from_the_runs_not_a_scan(ds_factory, size) -> None:
    """At training size the dense masks are painted once: boxes and areas are read off the
    resized runs, never by reducing N x H x W bools (the cost that dominated high-res samples),
    and they are exactly the masks' tight boxes and pixel counts (upscaling included)."""
    dense = ds_factory(size=size)
    _, ref = dense[1]
    masks = ref["masks"].as_subclass(torch.Tensor)
    assert torch.equal(ref["boxes"].as_subclass(torch.Tensor), tight_xyxy(masks))
    assert torch.equal(ref["area"], masks.flatten(1).sum(1).float())
    with _ReductionsOver(tuple(masks.shape)) as spy:
        _, again = dense[1]
    assert spy.seen == []
    assert torch.equal(again["masks"], ref["masks"]) and torch.equal(again["boxes"],
                                                                     ref["boxes"])
