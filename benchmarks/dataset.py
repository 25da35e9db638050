"""Dataset read speed from a warm cache, beside torchvision's COCO reader over the same data.

1000 samples (640x480 JPEG, 5 masks each). Our side: ``CdfSegmentationDataset`` with
``on_miss="raise"`` (no network), the masks in the mask cache and the JPEGs in the image store.
Baseline: ``torchvision.datasets.CocoDetection`` over the same JPEG files and a COCO file holding
the same masks as RLE, wrapped with ``wrap_dataset_for_transforms_v2`` (plus ``ToImage`` so both
sides return tensors). Each side at num_workers 0 and 2; the ratio compares the best of each.
Also: where our time goes (image decode, mask lookup + decode, the rest), and peak RSS per
worker process.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.common import Figure, Report
from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.mask_cache import CachedResult, CachedSegment, MaskCache
from cogseg_ml.config import CdfConfig, StaticToken
from cogseg_ml.dataset import CdfSegmentationDataset, collate_fn
from cogseg_ml.emulator.synthetic_images import encode_image, make_image
from cogseg_ml.image_decode import decode_image
from cogseg_ml.mask_codec import bbox_of, encode
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample
from cogseg_ml.store import FileInfo, ImageRecord


def _stored(ds: CdfSegmentationDataset, s: Sample, data: bytes) -> list[CacheKey]:
    """Put an image in the dataset's store as if downloaded at version "bench"; its keys."""
    info = FileInfo("bench", s.file.external_id)
    ds.store._info[s.file] = info
    key = ds.store.file_key(s.file, info)
    digest = ds.store.images_store.put(key, data)
    rec = ImageRecord(s.file, key, digest, 480, 640, info.name)
    return ds.store.mask_keys(rec, [inst.prompt for inst in s.instances])


def _build(root: Path, n: int, unique: int) -> tuple[CdfSegmentationDataset, Path]:
    """Fill our cache and image store, and write the COCO twin; returns (dataset, coco)."""
    cfg = CdfConfig(project="bench", base_url="http://127.0.0.1:9",
                    credentials=StaticToken("unused"))
    bases = [make_image(7000 + i, 480, 640, n_objects=5) for i in range(unique)]
    jpegs = [encode_image(b.pixels, "jpeg", quality=90) for b in bases]
    rles = [encode(np.stack([o.mask for o in b.objects])) for b in bases]
    samples = []
    for i in range(n):
        b = bases[i % unique]
        samples.append(Sample(FileRef(external_id=f"img_{i:05d}.jpg"),
                              tuple(Instance(Prompt(box=o.box()), o.category)
                                    for o in b.objects)))
    ds = CdfSegmentationDataset(samples, client=cfg, cache=MaskCache(root / "cache"),
                                on_miss="raise")
    images_dir = root / "images"
    images_dir.mkdir()
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [
        {"id": k + 1, "name": c} for k, c in enumerate(ds.categories)]}
    entries = []
    for i, s in enumerate(samples):
        u = i % unique
        data = jpegs[u]
        keys = _stored(ds, s, data)
        (images_dir / s.file.external_id).write_bytes(data)  # type: ignore[operator]
        for k, (key, rle) in enumerate(zip(keys, rles[u], strict=True)):
            entries.append((key, CachedResult((CachedSegment(0.95, rle),), 480, 640,
                                              "cdf-api")))
            box = bbox_of([rle])[0].tolist()
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1,
                "category_id": ds.categories.index(s.instances[k].category) + 1,
                "segmentation": rle, "area": float(box[2] * box[3]), "bbox": box,
                "iscrowd": 0})
        coco["images"].append({"id": i + 1, "file_name": s.file.external_id, "height": 480,
                               "width": 640})
    ds.cache.put_many(entries)
    ann = root / "coco.json"
    ann.write_text(json.dumps(coco))
    return ds, ann


def _pss_kib(pid: int) -> int:
    """Proportional set size: the worker's own memory plus its share of pages it shares."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rate(dataset: Any, workers: int, batch: int = 8) -> tuple[float, int]:
    """Samples/s over one full pass (after a short warm-up), and the largest worker PSS (KiB)
    seen at a quarter, half and three quarters of the pass."""
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=collate_fn,
                        multiprocessing_context="fork" if workers else None)
    it = iter(loader)
    for _ in range(3):
        next(it)
    n = 0
    pss = 0
    marks = {len(loader) // 4, len(loader) // 2, 3 * len(loader) // 4}
    t0 = time.perf_counter()
    for step, (imgs, _targets) in enumerate(it):
        n += len(imgs)
        if workers and step in marks:
            pss = max([pss] + [_pss_kib(w.pid) for w in it._workers])  # type: ignore[attr-defined]
    rate = n / (time.perf_counter() - t0)
    del it, loader
    return rate, pss


def run(n: int = 1000, unique: int = 100) -> Report:
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
    from torchvision.transforms import v2

    rep = Report("dataset", params={"samples": n, "unique_images": unique, "size": "640x480",
                                    "masks_per_sample": 5, "batch_size": 8})
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds, ann = _build(root, n, unique)
        tv = wrap_dataset_for_transforms_v2(
            CocoDetection(str(root / "images"), str(ann), transforms=v2.ToImage()),
            target_keys=("boxes", "labels", "masks", "image_id"))
        # Same content on both sides (first sample).
        ours0, tv0 = ds[0][1], tv[0][1]
        assert torch.equal(ours0["masks"], tv0["masks"].bool())
        ours_rates = {w: _rate(ds, w) for w in (0, 2)}
        tv_rates = {w: _rate(tv, w) for w in (0, 2)}
        best_ours = max(r for r, _ in ours_rates.values())
        best_tv = max(r for r, _ in tv_rates.values())
        # Where our time goes, single process.
        keys_and_bytes = []
        for i in range(200):
            s = ds.samples[i]
            data = ds.store.images_store.get(ds.store.file_key(s.file, ds.store.info(s.file)))
            assert data is not None
            keys_and_bytes.append((_stored(ds, s, data), data))
        t0 = time.perf_counter()
        for i in range(200):
            ds[i]
        total = (time.perf_counter() - t0) / 200
        t0 = time.perf_counter()
        for _keys, data in keys_and_bytes:
            decode_image(data)
        img_t = (time.perf_counter() - t0) / 200
        t0 = time.perf_counter()
        for keys, _ in keys_and_bytes:
            res = ds.cache.get_many(keys)
            torch.from_numpy(np.zeros(0))
            from cogseg_ml.mask_codec import decode_to_tensor

            decode_to_tensor([r.best.rle for r in res if r and r.best], 480, 640)
        mask_t = (time.perf_counter() - t0) / 200
    rep.add(
        Figure("samples/s, best num_workers", best_ours, "samples/s",
               "torchvision CocoDetection+wrapper, best num_workers", best_tv, goal=">= 2x"),
        Figure("samples/s, num_workers=0", ours_rates[0][0], "samples/s",
               "torchvision, num_workers=0", tv_rates[0][0]),
        Figure("samples/s, num_workers=2", ours_rates[2][0], "samples/s",
               "torchvision, num_workers=2", tv_rates[2][0]),
        Figure("time per sample: image decode", img_t * 1e3, "ms", "whole sample", total * 1e3,
               higher_is_better=False),
        Figure("time per sample: mask lookup+decode", mask_t * 1e3, "ms", "whole sample",
               total * 1e3, higher_is_better=False),
        Figure("time per sample: the rest", (total - img_t - mask_t) * 1e3, "ms",
               "whole sample", total * 1e3, higher_is_better=False,
               notes="image-store read, hashing, boxes, tv_tensors wrapping"),
        Figure("memory of a worker (PSS)", ours_rates[2][1] / 1024, "MiB",
               "torchvision worker (PSS)", tv_rates[2][1] / 1024, higher_is_better=False,
               notes="proportional set size: own pages plus a share of those shared with "
                     "the parent"),
    )
    return rep


def main(argv: list[str] | None = None) -> Report:
    return run()


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
