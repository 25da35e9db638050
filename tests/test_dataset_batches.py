"""A DataLoader's batches (``CdfSegmentationDataset.__getitems__``): the same samples and the
same errors as one sample at a time, with the cache read once per batch."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from cogseg_ml import mask_codec as mc
from cogseg_ml import masks_at_size
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import CachedResult, CachedSegment
from cogseg_ml.dataset import CacheMissError, CdfSegmentationDataset, SampleError, collate_fn
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, make_dataset
from cogseg_ml.errors import ValidationError
from cogseg_ml.masks_at_size import CompactMasks
from cogseg_ml.prompts import Box, FileRef, Prompt
from cogseg_ml.samples import Instance, Sample


def samples_for(images: list[SyntheticImage], suffix: str) -> list[Sample]:
    return [Sample(FileRef(external_id=im.name.removesuffix(".png") + suffix),
                   tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
            for im in images]


def without_addresses(error: BaseException) -> str:
    """An error's message less object addresses (Pillow names the ``BytesIO`` it read)."""
    return re.sub(r" at 0x[0-9a-f]+", "", str(error))


def same_value(a: Any, b: Any, where: str) -> None:
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
        if isinstance(a, tv_tensors.BoundingBoxes):
            assert (a.format, a.canvas_size) == (b.format, b.canvas_size), where
    elif isinstance(a, CompactMasks):
        assert (a.height, a.width) == (b.height, b.width), where
        assert torch.equal(a.counts, b.counts) and torch.equal(a.offsets, b.offsets), where
    else:
        assert a == b, where


def same_samples(got: list[Any], expected: list[Any]) -> None:
    assert len(got) == len(expected)
    for n, ((img, tgt), (ref_img, ref_tgt)) in enumerate(zip(got, expected, strict=True)):
        same_value(img, ref_img, f"sample {n}: image")
        assert tgt.keys() == ref_tgt.keys()
        for key in tgt:
            same_value(tgt[key], ref_tgt[key], f"sample {n}: {key}")


@pytest.fixture(scope="module")
def jpeg_images() -> list[SyntheticImage]:
    return make_dataset(5, seed=7, height=120, width=160, n_objects=4)


@pytest.fixture
def jpeg_emulator(make_emulator: Callable[..., Emulator],
                  jpeg_images: list[SyntheticImage]) -> Emulator:
    return make_emulator(images=jpeg_images, image_format="jpeg")


@pytest.fixture
def cached(jpeg_emulator: Emulator, jpeg_images: list[SyntheticImage], tmp_path: Path
           ) -> Callable[..., CdfSegmentationDataset]:
    """Datasets over one prefetched cache (``on_miss="raise"``: nothing is fetched)."""
    samples = samples_for(jpeg_images, ".jpg")
    report = CdfSegmentationDataset(samples, client=jpeg_emulator.config,
                                    cache=tmp_path / "cache").prefetch(progress=False)
    assert report.ok

    def make(**kw: Any) -> CdfSegmentationDataset:
        return CdfSegmentationDataset(kw.pop("samples", samples), client=jpeg_emulator.config,
                                      cache=tmp_path / "cache", on_miss="raise", **kw)
    return make


OPTIONS: dict[str, dict[str, Any]] = {
    "dense": {},
    "rle": {"mask_format": "rle"},
    "resized": {"size": 64},
    "resized-rle": {"size": 64, "mask_format": "rle"},
    "float": {"image_dtype": torch.float32},
    "transforms": {"transforms": v2.Compose([v2.RandomHorizontalFlip(p=1.0),
                                             v2.RandomCrop((80, 100)),
                                             v2.SanitizeBoundingBoxes()])},
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_a_batch_is_its_samples_one_by_one(cached: Callable[..., CdfSegmentationDataset],
                                           option: str) -> None:
    ds = cached(**OPTIONS[option])
    indices = [0, 1, 2, 3, 4, 2, -1]  # a repeat and a negative index too
    torch.manual_seed(0)
    one_by_one = [ds[i] for i in indices]
    torch.manual_seed(0)
    same_samples(ds.__getitems__(indices), one_by_one)


def test_a_dataloader_batch_is_its_samples(cached: Callable[..., CdfSegmentationDataset]
                                          ) -> None:
    ds = cached()
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_fn)
    got = [sample for images, targets in loader for sample in zip(images, targets, strict=True)]
    same_samples(got, [ds[i] for i in range(len(ds))])


def test_a_batch_reads_the_cache_once(cached: Callable[..., CdfSegmentationDataset],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ds = cached()
    ds[0]  # file versions resolved
    calls: dict[str, int] = {}

    def counting(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapped)

    counting(ds.cache, "get_by_fingerprints")
    counting(ImageStore, "get_with_digest")
    counting(ImageStore, "get_many_with_digest")
    counting(masks_at_size, "run_lengths_many")
    ds.__getitems__(list(range(len(ds))))
    assert calls == {"get_by_fingerprints": 1, "get_many_with_digest": 1,
                     "run_lengths_many": 1}


def test_masks_fetched_in_a_batch_are_fetched_once(jpeg_emulator: Emulator,
                                                   jpeg_images: list[SyntheticImage],
                                                   tmp_path: Path) -> None:
    """Two samples of one image in a batch: the second finds what the first fetched, as
    one by one."""
    s = samples_for(jpeg_images[:2], ".jpg")
    samples = [s[0], s[1], s[0]]
    jobs = jpeg_emulator.jobs.jobs

    def run(cache: Path, batch: bool) -> tuple[list[Any], int]:
        ds = CdfSegmentationDataset(samples, client=jpeg_emulator.config, cache=cache)
        before = len(jobs)
        out = ds.__getitems__([0, 1, 2]) if batch else [ds[i] for i in range(3)]
        return out, len(jobs) - before

    one_by_one, jobs_one_by_one = run(tmp_path / "a", batch=False)
    batched, jobs_batched = run(tmp_path / "b", batch=True)
    assert jobs_batched == jobs_one_by_one == len(s[0].instances) + len(s[1].instances)
    same_samples(batched, one_by_one)


def test_a_failing_sample_fails_the_batch_as_it_fails_alone(
        make_emulator: Callable[..., Emulator], jpeg_images: list[SyntheticImage],
        tmp_path: Path) -> None:
    emu = make_emulator(images=jpeg_images[:2], image_format="jpeg")
    emu.add_image(b"definitely not a jpeg", "broken.jpg", external_id="broken")
    good = samples_for(jpeg_images[:2], ".jpg")
    broken = Sample(FileRef(external_id="broken"), (Instance(Prompt(box=Box(0, 0, 1, 1))),))
    samples = [good[0], broken, good[1]]
    CdfSegmentationDataset([good[0]], client=emu.config,
                           cache=tmp_path / "c").prefetch(progress=False)
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c",
                                on_miss="raise")
    for indices, index, kind in [([0, 1, 2], 1, SampleError), ([2, 1], 2, CacheMissError),
                                 ([0, 2], 2, CacheMissError)]:
        with pytest.raises(kind) as alone:
            ds[index]
        with pytest.raises(kind) as batch:
            ds.__getitems__(indices)
        assert type(batch.value) is type(alone.value)
        assert without_addresses(batch.value) == without_addresses(alone.value)
    with pytest.raises(IndexError):
        ds.__getitems__([0, 3])


def test_a_corrupt_cached_mask_fails_the_batch_as_it_fails_alone(
        cached: Callable[..., CdfSegmentationDataset]) -> None:
    ds = cached()
    rec = ds.store.image(ds.samples[1].file)[1]
    keys = ds.store.mask_keys(rec, [inst.prompt for inst in ds.samples[1].instances])
    # runs of 3 and 5 pixels: a mask with foreground whose runs stop far short of the image
    ds.cache.put(keys[2], CachedResult((CachedSegment(0.9, {"size": [rec.height, rec.width],
                                                              "counts": "35"}),),
                                       rec.height, rec.width, "cdf-api"))
    fresh = cached()
    with pytest.raises(ValidationError) as alone:
        fresh[1]
    with pytest.raises(ValidationError) as batch:
        fresh.__getitems__([0, 1, 2])
    assert type(batch.value) is type(alone.value)
    assert str(batch.value) == str(alone.value) and "corrupt RLE" in str(batch.value)
    same_samples(fresh.__getitems__([0, 2]), [fresh[0], fresh[2]])



@pytest.mark.parametrize("size", [None, 64])
def test_a_sample_of_hundreds_of_instances(cached: Callable[..., CdfSegmentationDataset],
                                           size: int | None) -> None:
    """300 cached masks in one sample (pycocotools' area takes at most 255 RLEs a call)."""
    base = cached()
    ref = base.samples[0].file
    rec = base.store.image(ref)[1]
    h, w = rec.height, rec.width
    masks = np.zeros((300, h, w), bool)
    prompts = []
    for k in range(300):
        r, c = divmod(k, 20)
        masks[k, 6 * r:6 * r + 4, 7 * c:7 * c + 1 + k % 5] = True
        prompts.append(Prompt(box=Box(7 * c / w, 6 * r / h, (7 * c + 6) / w, (6 * r + 5) / h)))
    keys = base.store.mask_keys(rec, prompts)
    base.cache.put_many([(key, CachedResult((CachedSegment(0.5, rle),), h, w, "cdf-api"))
                         for key, rle in zip(keys, mc.encode(masks), strict=True)])
    ds = cached(samples=[Sample(ref, tuple(Instance(p, "shape") for p in prompts))], size=size)
    _, target = ds[0]
    if size is not None:  # every mask survives or is counted as dropped at 64x85
        assert target["masks"].shape[1:] == (64, 85)
        assert len(target["labels"]) + target["num_dropped"] == 300
        return
    assert torch.equal(target["masks"], torch.from_numpy(masks))
    assert target["area"].tolist() == [4.0 * (1 + k % 5) for k in range(300)]
    ys, xs = divmod(np.arange(300), 20)
    expected = np.stack([7 * xs, 6 * ys, 7 * xs + 1 + np.arange(300) % 5, 6 * ys + 4], axis=1)
    assert target["boxes"].tolist() == expected.astype(np.float32).tolist()
