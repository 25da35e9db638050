"""Every per-instance field stays aligned through the dataset's ``transforms`` when they drop
instances, with torchvision's default ``SanitizeBoundingBoxes()`` (no special ``labels_getter``).

A 3x3 grid of flat rectangles (nine instances, categories cycling) is cropped so that some
instances leave the frame; ``masks``, ``boxes``, ``labels``, ``scores``, ``area``, ``iscrowd``
and ``instances`` must all describe the same instances, in the same order, in the main process
and in real DataLoader workers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cogseg_ml.dataset import INSTANCE_FIELDS, CdfSegmentationDataset, collate_fn
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import CATEGORIES, SyntheticImage, SyntheticObject
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample

CELL, CELLS = 32, 3
SIDE = CELL * CELLS  # 96


def grid(name: str = "grid.png") -> SyntheticImage:
    """Nine 24x24 rectangles, one per 32x32 cell (row-major), categories cycling."""
    objs = []
    px = np.full((SIDE, SIDE, 3), 10, dtype=np.uint8)
    for i in range(CELLS * CELLS):
        r, c = divmod(i, CELLS)
        m = np.zeros((SIDE, SIDE), dtype=bool)
        m[r * CELL + 4:r * CELL + 28, c * CELL + 4:c * CELL + 28] = True
        px[m] = (40 + 20 * i, 230 - 20 * i, 60 + 15 * i)
        objs.append(SyntheticObject(CATEGORIES[i % len(CATEGORIES)], m))
    return SyntheticImage(name, px, tuple(objs))


def samples_for(images: list[SyntheticImage]) -> list[Sample]:
    return [Sample(FileRef(external_id=im.name),
                   tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
            for im in images]


class FixedCrop(v2.Transform):
    """Crop every input at fixed coordinates (a module-level class: spawn workers pickle it)."""

    def __init__(self, top: int, left: int, height: int, width: int) -> None:
        super().__init__()
        self.box = dict(top=top, left=left, height=height, width=width)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **self.box)


# Rows and columns 32..95: the four bottom-right cells stay, instances 4, 5, 7 and 8.
KEPT = [4, 5, 7, 8]


def crop_then_sanitize() -> v2.Compose:
    return v2.Compose([FixedCrop(32, 32, 64, 64), v2.SanitizeBoundingBoxes()])


@pytest.fixture
def gridded(make_emulator) -> tuple[Emulator, list[SyntheticImage]]:
    images = [grid("grid_a.png"), grid("grid_b.png")]
    return make_emulator(images=images, processing_time_s=0.0), images


def check_against(plain: dict[str, Any], t: dict[str, Any]) -> list[int]:
    """Every field of ``t`` is a field of ``plain`` gathered at ``t["instances"]``."""
    n = int(t["boxes"].shape[0])
    assert t["masks"].shape[0] == n
    for key in INSTANCE_FIELDS:
        assert key in t, key  # none is dropped
        assert type(t[key]) is torch.Tensor and t[key].shape == (n,), key
    kept = t["instances"].tolist()
    pos = [plain["instances"].tolist().index(k) for k in kept]
    assert torch.equal(t["labels"], plain["labels"][pos])
    assert torch.equal(t["scores"], plain["scores"][pos])
    assert torch.equal(t["iscrowd"], torch.zeros(n, dtype=torch.int64))
    assert torch.equal(t["area"], t["masks"].flatten(1).sum(1).float())
    return kept


def check_fixed_crop(plain: dict[str, Any], t: dict[str, Any], truth: SyntheticImage) -> None:
    assert check_against(plain, t) == KEPT
    for m, k in zip(t["masks"], KEPT, strict=True):
        assert np.array_equal(m.numpy(), truth.objects[k].mask[32:, 32:])
    assert t["labels"].tolist() == [plain["labels"][k].item() for k in KEPT]


def test_default_sanitize_keeps_scores_and_instances_aligned(
        gridded, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    emu, images = gridded
    samples = samples_for(images)
    plain = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    cropped = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c",
                                     transforms=crop_then_sanitize())
    with caplog.at_level(logging.WARNING, logger="cogseg_ml.dataset"):
        for i in range(len(cropped)):
            _, p = plain[i]
            assert p["instances"].tolist() == list(range(9))
            image, t = cropped[i]
            assert tuple(image.shape) == (3, 64, 64)
            check_fixed_crop(p, t, images[i])
    assert not [r for r in caplog.records if r.name == "cogseg_ml.dataset"]


def test_random_iou_crop_with_default_sanitize_keeps_every_field_aligned(
        gridded, tmp_path: Path) -> None:
    emu, images = gridded
    samples = samples_for(images)
    plain = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    tf = v2.Compose([v2.RandomIoUCrop(), v2.RandomHorizontalFlip(), v2.Resize((48, 48)),
                     v2.SanitizeBoundingBoxes()])
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c",
                                transforms=tf)
    plains = [plain[i][1] for i in range(len(plain))]
    torch.manual_seed(3)
    counts = []
    for _ in range(8):
        for i in range(len(ds)):
            _, t = ds[i]
            kept = check_against(plains[i], t)
            assert kept == sorted(set(kept))  # each once, in the sample's order
            counts.append(len(kept))
    assert sum(counts) > 0
    assert min(counts) < 9  # some crops dropped instances: the case under test happened


def test_reference_preset_with_pure_tensors_keeps_scores(gridded, tmp_path: Path) -> None:
    """The reference scripts' chain ends with ``ToPureTensor()``: still every field."""
    emu, images = gridded
    samples = samples_for(images)
    plain = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    tf = v2.Compose([FixedCrop(32, 32, 64, 64), v2.ToDtype(torch.float, scale=True),
                     v2.SanitizeBoundingBoxes(), v2.ToPureTensor()])
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c",
                                transforms=tf)
    image, t = ds[0]
    assert image.dtype == torch.float32 and type(image) is torch.Tensor
    assert check_against(plain[0][1], t) == KEPT


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers_keep_every_field_aligned(gridded, tmp_path: Path,
                                                     method: str) -> None:
    emu, images = gridded
    samples = samples_for(images)
    plain = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    plains = [plain[i][1] for i in range(len(plain))]
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c",
                                transforms=crop_then_sanitize())
    check_fixed_crop(plains[0], ds[0][1], images[0])  # the parent used it first
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_fn,
                        multiprocessing_context=method)
    by_id = {ds.image_id(i): i for i in range(len(ds))}
    seen = 0
    for _imgs, targets in loader:
        for t in targets:
            i = by_id[t["image_id"]]
            check_fixed_crop(plains[i], t, images[i])
            seen += 1
    assert seen == len(images)
