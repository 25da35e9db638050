"""A torch ``Dataset`` mapping CDF files plus prompts to images and instance masks.

``dataset[i]`` returns ``(image, target)`` shaped for torchvision's detection models and
``transforms.v2``:

* ``image``: :class:`torchvision.tv_tensors.Image`, uint8, ``(3, H, W)``;
* ``target["masks"]``: :class:`~torchvision.tv_tensors.Mask`, bool ``(N, H, W)``;
* ``target["boxes"]``: :class:`~torchvision.tv_tensors.BoundingBoxes`, XYXY float32, tight
  around each mask, ``canvas_size=(H, W)``;
* ``target["labels"]`` int64 (category index + 1; 0 when the instance has no category),
  ``target["scores"]`` float32, ``target["image_id"]`` the sample index, ``target["file"]`` the
  :class:`~cogseg_ml.prompts.FileRef`.

Masks come from the :class:`~cogseg_ml.cache.mask_cache.MaskCache` (one batched decode per
sample, a strided view without copies); images from the image store beside it, downloaded once.
The dataset pickles without live connections: each DataLoader worker builds its own client on
first use, and all share the cache file.

Instances whose best segment is empty are left out of the target (a zero-area box breaks
detection losses); ``target["num_dropped"]`` counts them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import CachedResult, MaskCache
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import CogsegError, ValidationError
from cogseg_ml.mask_codec import area, bbox_of, decode_to_tensor
from cogseg_ml.progress import progress_bar
from cogseg_ml.samples import Sample
from cogseg_ml.segment_results import (
    API_BACKEND,
    DEFAULT_MAX_PIXELS,
    cached_from_result,
    decode_image,
    image_size,
)

__all__ = ["CacheMissError", "CdfSegmentationDataset", "PrefetchReport", "SampleError",
           "collate_fn"]

_log = logging.getLogger("cogseg_ml.dataset")
OnMiss = Literal["fetch", "raise", "skip"]


class SampleError(CogsegError):
    """A sample could not be loaded; the message names the sample, the file and why."""


class CacheMissError(SampleError, KeyError):
    """``on_miss="raise"`` and a sample's masks are not in the cache."""

    def __str__(self) -> str:  # KeyError would print the repr
        return self.message


@dataclass
class PrefetchReport:
    """What :meth:`CdfSegmentationDataset.prefetch` did."""

    samples: int = 0
    images_downloaded: int = 0
    jobs_run: int = 0
    already_cached: int = 0
    failures: list[tuple[int, int | None, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing failed."""
        return not self.failures

    def summary(self) -> str:
        """One line a person can read."""
        return (f"{self.samples} samples: {self.images_downloaded} images downloaded, "
                f"{self.jobs_run} jobs run, {self.already_cached} instances already cached, "
                f"{len(self.failures)} failures")


def collate_fn(batch: Sequence[tuple[Any, dict[str, Any]]]) -> tuple[tuple[Any, ...], ...]:
    """Keep variable-size targets apart: ``(images, targets)`` as tuples (torchvision style)."""
    return tuple(zip(*batch, strict=True))


class CdfSegmentationDataset(Dataset[tuple[tv_tensors.Image, dict[str, Any]]]):
    """Map-style dataset of CDF images and their instance masks.

    Args:
        samples: the images and prompts (see :mod:`cogseg_ml.samples`).
        client: a :class:`CdfConfig` or a :class:`SegmentationClient` (only its config is kept).
        cache: a :class:`MaskCache`, a path for one, or ``None`` for the default location.
        transforms: ``callable(image, target) -> (image, target)``, e.g. a
            ``torchvision.transforms.v2.Compose``.
        on_miss: what to do when a sample's masks are not cached: ``"fetch"`` runs the jobs
            now (and caches them), ``"raise"`` raises :class:`CacheMissError` naming the
            sample, ``"skip"`` leaves the missing instances out of the target (counted in
            ``target["num_missing"]``); images are fetched in every mode unless stored.
        categories: category names in label order (default: sorted names found in samples).
        max_pixels: refuse larger images before decoding them.
    """

    def __init__(self, samples: Sequence[Sample], *, client: CdfConfig | SegmentationClient,
                 cache: MaskCache | str | Path | None = None,
                 transforms: Callable[..., Any] | None = None, on_miss: OnMiss = "fetch",
                 categories: Sequence[str] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if on_miss not in ("fetch", "raise", "skip"):
            raise ValidationError(f"on_miss must be 'fetch', 'raise' or 'skip', got {on_miss!r}")
        self.samples = list(samples)
        for i, s in enumerate(self.samples):
            if not isinstance(s, Sample):
                raise ValidationError(f"samples[{i}] is a {type(s).__name__}, not a Sample")
        self.config = client.config if isinstance(client, SegmentationClient) else client
        if not isinstance(self.config, CdfConfig):
            raise ValidationError("client must be a CdfConfig or a SegmentationClient")
        self.cache = cache if isinstance(cache, MaskCache) else MaskCache(cache)
        self.images = ImageStore(self.cache)
        self.transforms = transforms
        self.on_miss: OnMiss = on_miss
        self.max_pixels = max_pixels
        names = categories if categories is not None else sorted(
            {i.category for s in self.samples for i in s.instances if i.category is not None})
        self.categories = list(names)
        self._label = {name: k + 1 for k, name in enumerate(self.categories)}
        self.model_version = f"vision-segment/{self.config.cdf_version}"
        self._client: SegmentationClient | None = None
        self._key_memo: dict[int, tuple[str, list[CacheKey]]] = {}

    # --- pickling: never a live client ------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_key_memo"] = {}  # keyed by object ids, which do not survive pickling
        return state

    @property
    def client(self) -> SegmentationClient:
        """This process's client, built on first use."""
        if self._client is None:
            self._client = SegmentationClient(self.config)
        return self._client

    def close(self) -> None:
        """Close this process's client (it is rebuilt if the dataset is used again)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful to do
            pass

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"CdfSegmentationDataset(samples={len(self.samples)}, "
                f"project={self.config.project!r}, on_miss={self.on_miss!r}, "
                f"cache={self.cache.path})")

    # --- loading hooks -------------------------------------------------------------------------
    def _file_key(self, sample: Sample) -> str:
        return CacheKey(self.config.project, sample.file, sample.instances[0].prompt,
                        API_BACKEND).file_key

    def _load_bytes(self, sample: Sample) -> tuple[bytes, str]:
        key = self._file_key(sample)
        found = self.images.get_with_digest(key)
        if found is None:
            data = self.client.download(sample.file)
            return data, self.images.put(key, data)
        return found

    def _keys(self, sample: Sample, digest: str) -> list[CacheKey]:
        """Cache keys of a sample's instances; the file version is the image's SHA-256, so
        masks always belong to exactly the pixels they are served with."""
        memo = self._key_memo.get(id(sample))
        if memo is not None and memo[0] == digest:
            return memo[1]
        keys = [CacheKey(self.config.project, sample.file, inst.prompt, API_BACKEND,
                         file_version=digest, model_version=self.model_version)
                for inst in sample.instances]
        if len(self._key_memo) >= 200_000:
            self._key_memo.clear()
        self._key_memo[id(sample)] = (digest, keys)
        return keys

    def _load_image(self, index: int) -> tuple[str, tv_tensors.Image]:
        sample = self.samples[index]
        try:
            data, digest = self._load_bytes(sample)
            return digest, tv_tensors.Image(decode_image(data, sample.file, self.max_pixels))
        except CogsegError as exc:
            raise SampleError(f"sample {index} ({sample.file.describe()}): {exc}") from exc

    def _fetch(self, index: int, missing: list[int], keys: list[CacheKey], height: int,
               width: int) -> dict[int, CachedResult]:
        sample = self.samples[index]
        client = self.client
        out: dict[int, CachedResult] = {}
        i = missing[0]
        try:  # all jobs of the sample start at once, then each is awaited
            jobs = []
            for i in missing:
                jobs.append((i, client.create_job(sample.file,
                                                  prompt=sample.instances[i].prompt)))
            for i, job in jobs:
                res = client.wait(job, request=SegmentRequest(sample.file,
                                                              sample.instances[i].prompt))
                out[i] = cached_from_result(res, height, width,
                                            model_version=self.model_version)
        except CogsegError as exc:
            raise SampleError(f"sample {index} ({sample.file.describe()}), instance {i}: "
                              f"{exc}") from exc
        self.cache.put_many((keys[i], r) for i, r in out.items())
        return out

    def _load_target(self, index: int, digest: str, height: int, width: int
                     ) -> dict[str, Any]:
        sample = self.samples[index]
        keys = self._keys(sample, digest)
        results: list[CachedResult | None] = self.cache.get_many(keys)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            if self.on_miss == "raise":
                raise CacheMissError(
                    f"sample {index} ({sample.file.describe()}): {len(missing)} of "
                    f"{len(keys)} instances are not cached; run dataset.prefetch() or use "
                    "on_miss='fetch'")
            if self.on_miss == "fetch":
                for i, r in self._fetch(index, missing, keys, height, width).items():
                    results[i] = r
        found = [(inst, res.best) for inst, res in zip(sample.instances, results, strict=True)
                 if res is not None]
        areas = area([b.rle for _, b in found if b is not None])
        kept = [(inst, b) for (inst, b), a in zip(
            [(i, b) for i, b in found if b is not None], areas, strict=True) if a > 0]
        dropped = len(found) - len(kept)
        rles = [b.rle for _, b in kept]
        scores = [b.score for _, b in kept]
        labels = [self._label.get(inst.category, 0) if inst.category else 0 for inst, _ in kept]
        masks = decode_to_tensor(rles, height, width)
        xywh = bbox_of(rles)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return {
            "masks": tv_tensors.Mask(masks),
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(xyxy.astype(np.float32)),
                                              format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "image_id": index,
            "file": sample.file,
            "num_dropped": dropped,
            "num_missing": sum(r is None for r in results),
        }

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        index %= len(self.samples)
        digest, image = self._load_image(index)
        target = self._load_target(index, digest, int(image.shape[-2]), int(image.shape[-1]))
        if self.transforms is not None:
            return self.transforms(image, target)  # type: ignore[no-any-return]
        return image, target

    # --- bulk ------------------------------------------------------------------------------------
    def prefetch(self, *, concurrency: int = 32, progress: bool = True,
                 download_workers: int = 8, tqdm_class: Any = None) -> PrefetchReport:
        """Fill the image store and the mask cache for every sample.

        Images are downloaded by ``download_workers`` threads; missing masks are segmented
        through ``segment_many`` (``concurrency`` jobs in flight). Failures are recorded in the
        report, never raised.
        """
        report = PrefetchReport(samples=len(self.samples))
        client = self.client
        sizes: dict[int, tuple[int, int]] = {}
        digests: dict[int, str] = {}

        def image(index: int) -> None:
            sample = self.samples[index]
            key = self._file_key(sample)
            found = self.images.get_with_digest(key)
            if found is None:
                data = client.download(sample.file)
                found = data, self.images.put(key, data)
                report.images_downloaded += 1
            sizes[index] = image_size(found[0], sample.file, self.max_pixels)
            digests[index] = found[1]

        with ThreadPoolExecutor(download_workers) as pool, progress_bar(
                len(self.samples), "images", progress=progress, tqdm_class=tqdm_class) as bar:
            futures = {pool.submit(image, i): i for i in range(len(self.samples))}
            for fut, i in futures.items():
                try:
                    fut.result()
                except CogsegError as exc:
                    report.failures.append((i, None, str(exc)))
                bar.update(1)

        requests: list[SegmentRequest] = []
        for i in sorted(sizes):
            keys = self._keys(self.samples[i], digests.pop(i))
            for k, present in enumerate(self.cache.keys_present(keys)):
                if present:
                    report.already_cached += 1
                else:
                    requests.append(SegmentRequest(self.samples[i].file,
                                                   self.samples[i].instances[k].prompt,
                                                   tag=(i, keys[k])))
        pending: list[tuple[CacheKey, CachedResult]] = []
        with progress_bar(len(requests), "masks", progress=progress,
                          tqdm_class=tqdm_class) as bar:
            for outcome in client.segment_many(requests, concurrency=concurrency):
                i, key = outcome.request.tag
                bar.update(1)
                report.jobs_run += outcome.result is not None
                try:
                    if outcome.error is not None or outcome.result is None:
                        raise outcome.error or SampleError("no result")
                    h, w = sizes[i]
                    pending.append((key, cached_from_result(outcome.result, h, w,
                                                            model_version=self.model_version)))
                except CogsegError as exc:
                    inst = self.samples[i].instances.index(
                        next(x for x in self.samples[i].instances
                             if x.prompt == outcome.request.prompt))
                    report.failures.append((i, inst, str(exc)))
                if len(pending) >= 64:
                    self.cache.put_many(pending)
                    pending.clear()
        self.cache.put_many(pending)
        return report

