"""CdfSegmentationDataset with real DataLoaders (workers under fork and spawn) and the emulator."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.dataset import (
    CacheMissError,
    CdfSegmentationDataset,
    SampleError,
    collate_fn,
)
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image
from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import Box, FileRef, Prompt
from cogseg_ml.samples import Instance, Sample, samples_from_coco, samples_from_records


def samples_for(images: list[SyntheticImage]) -> list[Sample]:
    return [Sample(FileRef(external_id=im.name),
                   tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
            for im in images]


def check_against_truth(image: torch.Tensor, target: dict, truth: SyntheticImage) -> None:
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert tuple(image.shape) == (3, truth.height, truth.width)
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(truth.pixels))
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.bool
    assert masks.shape == (len(truth.objects), truth.height, truth.width)
    for m, obj in zip(masks, truth.objects, strict=True):
        assert np.array_equal(m.numpy(), obj.mask)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format.value == "XYXY"
    assert tuple(boxes.canvas_size) == (truth.height, truth.width)
    for b, obj in zip(boxes, truth.objects, strict=True):
        ys, xs = np.nonzero(obj.mask)
        assert b.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert target["labels"].dtype == torch.int64 and (target["labels"] > 0).all()
    assert target["scores"].dtype == torch.float32


@pytest.fixture
def ds_factory(shared_emulator: Emulator, images: list[SyntheticImage], tmp_path: Path):
    def make(**kw) -> CdfSegmentationDataset:
        kw.setdefault("cache", tmp_path / "cache")
        return CdfSegmentationDataset(kw.pop("samples", samples_for(images)),
                                      client=kw.pop("client", shared_emulator.config), **kw)
    return make


def test_fetch_on_miss_gives_exact_masks_and_caches_them(ds_factory, images, shared_emulator
                                                         ) -> None:
    ds = ds_factory()
    assert ds.categories == sorted({o.category for im in images for o in im.objects})
    image, target = ds[0]
    check_against_truth(image, target, images[0])
    before = len(shared_emulator.requests)
    ds2 = ds_factory(on_miss="raise")  # a new dataset over the same cache: no requests at all
    image2, target2 = ds2[0]
    assert torch.equal(target2["masks"], target["masks"])
    assert len(shared_emulator.requests) == before


def test_raise_and_skip_modes(ds_factory) -> None:
    ds = ds_factory(on_miss="raise")
    with pytest.raises(CacheMissError) as info:
        ds[1]
    assert "sample 1" in str(info.value) and "prefetch" in str(info.value)
    skip = ds_factory(on_miss="skip")
    _, target = skip[1]
    assert target["masks"].shape[0] == 0 and target["num_missing"] == 3
    assert target["boxes"].shape == (0, 4)


def test_prefetch_fills_cache_then_workers_read_only(ds_factory, images, shared_emulator
                                                     ) -> None:
    ds = ds_factory()
    report = ds.prefetch(progress=False)
    assert report.ok and report.images_downloaded == len(images)
    assert report.jobs_run == sum(len(im.objects) for im in images)
    again = ds.prefetch(progress=False)
    assert again.jobs_run == 0 and again.already_cached == report.jobs_run
    cached = ds_factory(on_miss="raise")
    before = len(shared_emulator.requests)
    for i in range(len(cached)):
        check_against_truth(*cached[i], images[i])
    assert len(shared_emulator.requests) == before


@pytest.mark.parametrize("workers,method", [(0, None), (2, "fork"), (2, "spawn")])
def test_dataloader_workers(ds_factory, images, workers: int, method: str | None) -> None:
    ds = ds_factory()
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_fn,
                        multiprocessing_context=method, persistent_workers=workers > 0)
    by_id = {ds.image_id(i): i for i in range(len(ds))}
    seen = 0
    for _epoch in range(2):
        for imgs, targets in loader:
            for img, tgt in zip(imgs, targets, strict=True):
                check_against_truth(img, tgt, images[by_id[tgt["image_id"]]])
                seen += 1
    assert seen == 2 * len(images)


def test_distributed_sampler_shares(ds_factory) -> None:
    ds = ds_factory()
    ids = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False)
        loader = DataLoader(ds, sampler=sampler, batch_size=3, collate_fn=collate_fn)
        ids.append({t["image_id"] for _, targets in loader for t in targets})
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {ds.image_id(i) for i in range(len(ds))}


def test_transforms_v2_flip_and_resize(ds_factory, images) -> None:
    tf = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.Resize((120, 160))])
    plain, flipped = ds_factory(), ds_factory(transforms=tf)
    _, t0 = plain[0]
    img, t1 = flipped[0]
    assert img.shape == (3, 120, 160) and t1["masks"].shape[-2:] == (120, 160)
    ref = v2.functional.resize(tv_tensors.Mask(t0["masks"].flip(-1)), [120, 160])
    assert torch.equal(t1["masks"], ref)
    assert t1["boxes"].canvas_size == (120, 160)


def test_maskrcnn_accepts_the_targets(ds_factory) -> None:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    ds = ds_factory()
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                  num_classes=len(ds.categories) + 1, min_size=240,
                                  max_size=320)
    model.train()
    image, target = ds[0]
    losses = model([image.float() / 255], [{k: target[k] for k in ("boxes", "labels",
                                                                      "masks")}])
    assert set(losses) >= {"loss_mask", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_pickles_without_a_live_client(ds_factory) -> None:
    ds = ds_factory()
    ds[0]
    assert ds._client is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._client is None and len(clone) == len(ds)


def test_bad_samples_give_clear_errors(make_emulator, images, tmp_path: Path) -> None:
    emu = make_emulator()
    emu.add_image(b"definitely not a png", "broken.png", external_id="broken")
    emu.add_image(encode_image(images[0].pixels), "scan.gif", external_id="gif",
                  mime_type="image/gif")
    bad = [Sample(FileRef(external_id="nope.png"), (Instance(Prompt(box=Box(0, 0, 1, 1))),)),
           Sample(FileRef(external_id="broken"), (Instance(Prompt(box=Box(0, 0, 1, 1))),)),
           Sample(FileRef(external_id="gif"), (Instance(Prompt(box=Box(0.1, 0.1, 0.5, 0.5))),))]
    ds = CdfSegmentationDataset(bad, client=emu.config, cache=tmp_path / "c")
    with pytest.raises(SampleError, match=r"sample 0 \(externalId='nope.png'\)"):
        ds[0]
    with pytest.raises(SampleError, match="not a readable image"):
        ds[1]
    with pytest.raises(SampleError, match=r"sample 2 .*instance 0"):
        ds[2]
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValidationError, match="on_miss"):
        CdfSegmentationDataset(bad, client=emu.config, cache=tmp_path / "c",
                               on_miss="ignore")  # type: ignore[arg-type]
    report = ds.prefetch(progress=False)
    assert {i for i, _, _ in report.failures} == {0, 1, 2}


def test_sample_constructors(tmp_path: Path, images) -> None:
    recs = [{"file": "a.png", "box": [0.1, 0.1, 0.4, 0.5], "category": "valve"},
            {"file": "a.png", "points": [[0.2, 0.2, 1], [0.9, 0.9, 0]]},
            {"file": {"id": 7}, "instances": [{"box": [0, 0, 1, 1]}]}]
    samples = samples_from_records(recs)
    assert [len(s.instances) for s in samples] == [2, 1]
    assert samples[0].instances[0].category == "valve"
    with pytest.raises(ValidationError, match="record 0"):
        samples_from_records([{"file": "a.png", "box": [0.5, 0.1, 0.4, 0.5]}])
    import json

    coco = {"images": [{"id": 1, "file_name": "x.png", "width": 200, "height": 100}],
            "categories": [{"id": 3, "name": "pump"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3,
                             "bbox": [20, 10, 40, 50]},
                            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1],
                             "iscrowd": 1}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    (s,) = samples_from_coco(path)
    assert s.file == FileRef(external_id="x.png") and len(s.instances) == 1
    assert s.instances[0].prompt.box == Box(0.1, 0.1, 0.3, 0.6)
    assert s.instances[0].category == "pump"


def test_repr_and_len(ds_factory, images) -> None:
    ds = ds_factory()
    assert len(ds) == len(images) and "samples=6" in repr(ds)
    assert isinstance(ds.cache, MaskCache)


def test_dataset_with_a_local_backend(ds_factory, images) -> None:
    from cogseg_ml.backends.local_sam import LocalSamBackend, build_tiny_sam

    local = LocalSamBackend(model=build_tiny_sam(), device="cpu")
    ds = ds_factory(backend=local)
    image, target = ds[0]
    assert target["masks"].shape[1:] == image.shape[1:]
    assert ds.cache.stats().by_backend == {"local-sam": len(images[0].objects)}
    cached = ds_factory(backend=local, on_miss="raise")
    assert torch.equal(cached[0][1]["masks"], target["masks"])


def test_prefetch_progress_counts_every_prompt(ds_factory, images) -> None:
    import io

    from tqdm import tqdm

    n = sum(len(im.objects) for im in images)
    for _ in range(2):  # a cold cache (jobs run), then a warm one (all found cached)
        ds = ds_factory()
        buf = io.StringIO()

        def bar(*a, _buf=buf, **kw):
            return tqdm(*a, file=_buf, mininterval=0, **kw)

        ds.prefetch(progress=True, tqdm_class=bar)
        assert f"{n}/{n}" in buf.getvalue()
