"""A torch ``Dataset`` mapping CDF files plus prompts to images and instance masks.

``dataset[i]`` returns ``(image, target)`` shaped for torchvision's detection models and
``transforms.v2``:

* ``image``: :class:`torchvision.tv_tensors.Image`, uint8, ``(3, H, W)``;
* ``target["masks"]``: :class:`~torchvision.tv_tensors.Mask`, bool ``(N, H, W)``;
* ``target["boxes"]``: :class:`~torchvision.tv_tensors.BoundingBoxes`, XYXY float32, tight
  around each mask, ``canvas_size=(H, W)``;
* ``target["labels"]`` int64 (category index + 1; 0 when the instance has no category),
  ``target["scores"]`` float32, ``target["instances"]`` int64 (each mask's index into the
  sample's instances, so masks match prompts when some are dropped), ``target["image_id"]`` the
  sample index, ``target["file"]`` the :class:`~cogseg_ml.prompts.FileRef`.

Images and masks come through the read-through :class:`~cogseg_ml.store.SegmentStore`: images
by file version from the image store (downloaded once), masks from the
:class:`~cogseg_ml.cache.mask_cache.MaskCache` (one batched decode per sample, a strided view
without copies). The dataset pickles without live connections: each DataLoader worker uses its
own process's segmentation session on first use (never the parent's sockets), and all share the
cache file. File versions the parent resolved travel with it, so workers ask CDF nothing more.

Instances whose best segment is empty are left out of the target (a zero-area box breaks
detection losses); ``target["num_dropped"]`` counts them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.backends.base import SegmentationBackend
from cogseg_ml.backends.resolve import resolve_backend
from cogseg_ml.cache.mask_cache import CachedResult, MaskCache
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import CacheMissError, CogsegError, SampleError, ValidationError
from cogseg_ml.image_decode import DEFAULT_MAX_PIXELS, decode_image
from cogseg_ml.mask_codec import area, bbox_of, decode_to_tensor
from cogseg_ml.progress import progress_bar
from cogseg_ml.samples import Sample
from cogseg_ml.store import ImageRecord, SegmentStore

__all__ = ["CacheMissError", "CdfSegmentationDataset", "PrefetchReport", "SampleError",
           "collate_fn"]

_log = logging.getLogger("cogseg_ml.dataset")
OnMiss = Literal["fetch", "raise", "skip"]
RESOLVE_BLOCK = 1000  # samples whose file versions one files/byids call resolves


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
        self.store = SegmentStore(self.config, self.cache, self.backend, max_pixels=max_pixels)
        self.transforms = transforms
        self.on_miss: OnMiss = on_miss
        self.max_pixels = max_pixels
        names = categories if categories is not None else sorted(
            {i.category for s in self.samples for i in s.instances if i.category is not None})
        self.categories = list(names)
        self._label = {name: k + 1 for k, name in enumerate(self.categories)}

    @property
    def _client(self) -> SegmentationClient | None:
        """This process's client, if the dataset has used CDF yet (never pickled)."""
        return self.store._client

    def close(self) -> None:
        """Release this process's session hold (taken again if the dataset is used again)."""
        self.store.close()

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"CdfSegmentationDataset(samples={len(self.samples)}, "
                f"project={self.config.project!r}, on_miss={self.on_miss!r}, "
                f"cache={self.cache.path})")

    # --- loading -------------------------------------------------------------------------------
    def _resolve_around(self, index: int) -> None:
        """File versions for the block of samples around ``index`` (one call per block)."""
        ref = self.samples[index].file
        if ref in self.store._info:
            return
        start = index - index % RESOLVE_BLOCK
        self.store.resolve(s.file for s in self.samples[start:start + RESOLVE_BLOCK])

    def _load_image(self, index: int) -> tuple[ImageRecord, tv_tensors.Image]:
        sample = self.samples[index]
        try:
            self._resolve_around(index)
            data, rec = self.store.image(sample.file)
            return rec, tv_tensors.Image(decode_image(data, sample.file, self.max_pixels))
        except CogsegError as exc:
            raise SampleError(f"sample {index} ({sample.file.describe()}): {exc}") from exc

    def _fetch(self, index: int, rec: ImageRecord, missing: list[int]
               ) -> dict[int, CachedResult]:
        sample = self.samples[index]
        out: dict[int, CachedResult] = {}
        items = [(rec, sample.instances[k].prompt, k) for k in missing]
        for k, _, result, error in self.store.segment(items):
            if result is None:
                raise SampleError(f"sample {index} ({sample.file.describe()}), instance {k}: "
                                  f"{error}") from error
            out[k] = result
        return out

    def _load_target(self, index: int, rec: ImageRecord) -> dict[str, Any]:
        sample = self.samples[index]
        height, width = rec.height, rec.width
        results = self.store.lookup(rec, [inst.prompt for inst in sample.instances])
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            if self.on_miss == "raise":
                raise CacheMissError(
                    f"sample {index} ({sample.file.describe()}): {len(missing)} of "
                    f"{len(results)} instances are not cached; run dataset.prefetch() or use "
                    "on_miss='fetch'")
            if self.on_miss == "fetch":
                for i, r in self._fetch(index, rec, missing).items():
                    results[i] = r
        found = [(k, res.best) for k, res in enumerate(results)
                 if res is not None and res.best is not None]
        areas = area([b.rle for _, b in found if b is not None])
        kept = [(k, b) for (k, b), a in zip(found, areas, strict=True) if a > 0 and b]
        dropped = sum(1 for r in results if r is not None) - len(kept)
        rles = [b.rle for _, b in kept]
        cats = [sample.instances[k].category for k, _ in kept]
        labels = [self._label.get(c, 0) if c else 0 for c in cats]
        masks = decode_to_tensor(rles, height, width)
        xywh = bbox_of(rles)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return {
            "masks": tv_tensors.Mask(masks),
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(xyxy.astype(np.float32)),
                                              format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor([b.score for _, b in kept], dtype=torch.float32),
            "instances": torch.tensor([k for k, _ in kept], dtype=torch.int64),
            "image_id": index,
            "file": sample.file,
            "num_dropped": dropped,
            "num_missing": sum(r is None for r in results),
        }

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        index %= len(self.samples)
        rec, image = self._load_image(index)
        if (int(image.shape[-2]), int(image.shape[-1])) != (rec.height, rec.width):
            raise SampleError(f"sample {index}: decoded size differs from the header's")
        target = self._load_target(index, rec)
        if self.transforms is not None:
            return self.transforms(image, target)  # type: ignore[no-any-return]
        return image, target

    # --- bulk ------------------------------------------------------------------------------------
    def prefetch(self, *, progress: bool = True, download_workers: int = 8,
                 tqdm_class: Any = None) -> PrefetchReport:
        """Fill the image store and the mask cache for every sample.

        File versions are resolved 1000 files per call, images downloaded by
        ``download_workers`` threads; missing masks come from the backend (the API:
        ``segment_many`` with its jobs in flight). Failures are recorded in the report, never
        raised.
        """
        report = PrefetchReport(samples=len(self.samples))
        self.store.download_workers = download_workers
        before = self.store.downloads
        records: list[ImageRecord | CogsegError] = []
        with progress_bar(len(self.samples), "images", progress=progress,
                          tqdm_class=tqdm_class) as bar:
            for start in range(0, len(self.samples), RESOLVE_BLOCK):
                block = self.samples[start:start + RESOLVE_BLOCK]
                records.extend(self.store.records([s.file for s in block]))
                bar.update(len(block))
        report.images_downloaded = self.store.downloads - before

        def items() -> Any:
            for i, rec in enumerate(records):
                if isinstance(rec, CogsegError):
                    report.failures.append((i, None, str(rec)))
                    continue
                prompts = [inst.prompt for inst in self.samples[i].instances]
                for k, hit in enumerate(self.store.present(rec, prompts)):
                    if hit:
                        report.already_cached += 1
                    else:
                        yield rec, prompts[k], (i, k)

        with progress_bar(None, "masks", progress=progress, tqdm_class=tqdm_class) as bar:
            for (i, k), _, result, error in self.store.segment(items()):
                bar.update(1)
                if result is None:
                    report.failures.append((i, k, str(error)))
                else:
                    report.jobs_run += 1
        report.failures.sort(key=lambda f: (f[0], -1 if f[1] is None else f[1]))
        return report
