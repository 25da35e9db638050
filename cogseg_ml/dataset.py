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

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
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
from cogseg_ml.backends.base import BackendJob, SegmentationBackend
from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import CachedResult, MaskCache
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import CogsegError, ValidationError
from cogseg_ml.labeler import resolve_backend
from cogseg_ml.mask_codec import area, bbox_of, decode_to_tensor
from cogseg_ml.progress import progress_bar
from cogseg_ml.samples import Sample
from cogseg_ml.segment_results import (
    API_BACKEND,
    DEFAULT_MAX_PIXELS,
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
        backend: where missing masks come from (default: the API through ``client``); e.g.
            a :class:`~cogseg_ml.backends.fallback.FallbackBackend` with a local model.
            Cached masks of every identity it may answer with are used, preferred first.
    """

    def __init__(self, samples: Sequence[Sample], *, client: CdfConfig | SegmentationClient,
                 cache: MaskCache | str | Path | None = None,
                 transforms: Callable[..., Any] | None = None, on_miss: OnMiss = "fetch",
                 categories: Sequence[str] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 backend: SegmentationBackend | None = None) -> None:
        if on_miss not in ("fetch", "raise", "skip"):
            raise ValidationError(f"on_miss must be 'fetch', 'raise' or 'skip', got {on_miss!r}")
        self.samples = list(samples)
        for i, s in enumerate(self.samples):
            if not isinstance(s, Sample):
                raise ValidationError(f"samples[{i}] is a {type(s).__name__}, not a Sample")
        config = client.config if isinstance(client, SegmentationClient) else client
        if not isinstance(config, CdfConfig):
            raise ValidationError("client must be a CdfConfig or a SegmentationClient")
        self.backend, self.config = resolve_backend(backend or config, config, 32)
        self.cache = cache if isinstance(cache, MaskCache) else MaskCache(cache)
        self.images = ImageStore(self.cache)
        self.transforms = transforms
        self.on_miss: OnMiss = on_miss
        self.max_pixels = max_pixels
        names = categories if categories is not None else sorted(
            {i.category for s in self.samples for i in s.instances if i.category is not None})
        self.categories = list(names)
        self._label = {name: k + 1 for k, name in enumerate(self.categories)}
        self._client: SegmentationClient | None = None
        self._key_memo: dict[tuple[int, int], tuple[str, list[CacheKey]]] = {}

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

    def _keys(self, sample: Sample, digest: str, identity: int = 0) -> list[CacheKey]:
        """Cache keys of a sample's instances for one backend identity (0: the preferred);
        the file version is the image's SHA-256, so masks always belong to exactly the
        pixels they are served with."""
        memo_key = (id(sample), identity)
        memo = self._key_memo.get(memo_key)
        if memo is not None and memo[0] == digest:
            return memo[1]
        name, version = self.backend.identities()[identity]
        keys = [CacheKey(self.config.project, sample.file, inst.prompt, name,
                         file_version=digest, model_version=version)
                for inst in sample.instances]
        if len(self._key_memo) >= 200_000:
            self._key_memo.clear()
        self._key_memo[memo_key] = (digest, keys)
        return keys

    def _lookup(self, sample: Sample, digest: str) -> list[CachedResult | None]:
        results: list[CachedResult | None] = self.cache.get_many(self._keys(sample, digest))
        for ident in range(1, len(self.backend.identities())):
            missing = [i for i, r in enumerate(results) if r is None]
            if not missing:
                break
            keys = self._keys(sample, digest, ident)
            for i, r in zip(missing, self.cache.get_many([keys[i] for i in missing]),
                            strict=True):
                results[i] = r
        return results

    def _run(self, jobs: list[BackendJob]) -> Iterator[tuple[BackendJob, CachedResult | None,
                                                               CogsegError | None]]:
        """Run jobs on the backend; stores results under the key of whoever answered."""
        pending: list[tuple[CacheKey, CachedResult]] = []
        try:
            for out in self.backend.run(jobs):
                if out.result is not None:
                    index, k = out.job.request.tag
                    key = self._keys(self.samples[index], out.job.image_key)[k]
                    key = dataclasses.replace(key, backend=out.result.backend,
                                              model_version=out.result.model_version)
                    pending.append((key, out.result))
                    if len(pending) >= 64:
                        self.cache.put_many(pending)
                        pending.clear()
                yield out.job, out.result, out.error
        finally:
            self.cache.put_many(pending)

    def _job(self, index: int, k: int, digest: str, height: int, width: int) -> BackendJob:
        sample = self.samples[index]
        file_key = self._file_key(sample)

        def load() -> bytes:
            data = self.images.get(file_key)
            if data is None:
                raise SampleError(f"sample {index}: image {file_key} left the image store")
            return data

        return BackendJob(SegmentRequest(sample.file, sample.instances[k].prompt,
                                         tag=(index, k)), height, width, digest, load)

    def _load_image(self, index: int) -> tuple[str, tv_tensors.Image]:
        sample = self.samples[index]
        try:
            data, digest = self._load_bytes(sample)
            return digest, tv_tensors.Image(decode_image(data, sample.file, self.max_pixels))
        except CogsegError as exc:
            raise SampleError(f"sample {index} ({sample.file.describe()}): {exc}") from exc

    def _fetch(self, index: int, missing: list[int], digest: str, height: int,
               width: int) -> dict[int, CachedResult]:
        sample = self.samples[index]
        out: dict[int, CachedResult] = {}
        jobs = [self._job(index, k, digest, height, width) for k in missing]
        for job, result, error in self._run(jobs):
            k = job.request.tag[1]
            if result is None:
                raise SampleError(f"sample {index} ({sample.file.describe()}), instance {k}: "
                                  f"{error}") from error
            out[k] = result
        return out

    def _load_target(self, index: int, digest: str, height: int, width: int
                     ) -> dict[str, Any]:
        sample = self.samples[index]
        results = self._lookup(sample, digest)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            if self.on_miss == "raise":
                raise CacheMissError(
                    f"sample {index} ({sample.file.describe()}): {len(missing)} of "
                    f"{len(results)} instances are not cached; run dataset.prefetch() or use "
                    "on_miss='fetch'")
            if self.on_miss == "fetch":
                for i, r in self._fetch(index, missing, digest, height, width).items():
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
    def prefetch(self, *, progress: bool = True,
                 download_workers: int = 8, tqdm_class: Any = None) -> PrefetchReport:
        """Fill the image store and the mask cache for every sample.

        Images are downloaded by ``download_workers`` threads; missing masks come from the
        backend (the API: ``segment_many`` with its jobs in flight). Failures are recorded in
        the report, never raised.
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

        jobs: list[BackendJob] = []
        for i in sorted(sizes):
            found = self._lookup(self.samples[i], digests[i])
            for k, res in enumerate(found):
                if res is not None:
                    report.already_cached += 1
                else:
                    jobs.append(self._job(i, k, digests[i], *sizes[i]))
        with progress_bar(len(jobs), "masks", progress=progress,
                          tqdm_class=tqdm_class) as bar:
            for job, result, error in self._run(jobs):
                bar.update(1)
                if result is None:
                    i, k = job.request.tag
                    report.failures.append((i, k, str(error)))
                else:
                    report.jobs_run += 1
        return report

