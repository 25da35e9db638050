"""A torch ``Dataset`` mapping CDF files plus prompts to images and instance masks.

``dataset[i]`` returns ``(image, target)`` shaped for torchvision's detection models, its
reference training scripts (``references/detection``) and ``transforms.v2``:

* ``image``: :class:`torchvision.tv_tensors.Image`, ``(3, H, W)``, uint8 (default) or, with
  ``image_dtype=torch.float32``, float in [0, 1] (see :mod:`cogseg_ml.image_decode` for how
  16-bit, palette and alpha images become 8-bit RGB, and for the orientation rule: pixels,
  masks and prompts are all in the stored frame, EXIF orientation is not applied);
* ``target["masks"]``: :class:`~torchvision.tv_tensors.Mask`, bool ``(N, H, W)``;
* ``target["boxes"]``: :class:`~torchvision.tv_tensors.BoundingBoxes`, XYXY float32, tight
  around each mask, ``canvas_size=(H, W)``;
* ``target["labels"]`` int64, the category ids of :attr:`CdfSegmentationDataset.category_table`
  (never 0, the background; instances without a category get the ``"object"`` class);
* ``target["area"]`` float32, each mask's pixel count at the returned size;
  ``target["iscrowd"]`` int64 zeros (what COCO evaluation reads);
* ``target["scores"]`` float32 (the segment's score), ``target["instances"]`` int64 (each
  mask's index into the sample's instances, so masks match prompts when some are dropped);
* ``target["image_id"]`` a plain int, the COCO image id :func:`~cogseg_ml.samples.image_ids`
  gives the sample (the labeler's COCO file uses the same ids); ``target["file"]`` the
  :class:`~cogseg_ml.prompts.FileRef`; ``target["num_dropped"]``, ``target["num_missing"]``.

The per-instance fields are :data:`INSTANCE_FIELDS` (plus masks and boxes). **Through the
dataset's own** ``transforms`` **they all stay aligned**, whatever removes instances (a crop
then torchvision's default ``SanitizeBoundingBoxes()``, ``RandomIoUCrop``, a filter of one's
own), with no special ``labels_getter``: ``target["labels"]`` goes through the transforms
carrying each instance's index, so it loses exactly the instances the boxes and masks lose,
and afterwards every other field is gathered by that index (``area`` and ``iscrowd`` are
computed again from what is left). Transforms see the labels' values only; what comes out is
plain tensors. Removing instances without filtering the given labels tensor (``labels_getter=
None``) is a :class:`SampleError`; a transform that replaces the labels with a new tensor
loses the index, and ``scores`` and ``instances`` that then no longer match are left out (one
warning), never returned misaligned. Outside the dataset, torchvision's default filters
``labels`` alone: pass ``SanitizeBoundingBoxes(labels_getter=instance_fields)`` there.

Images and masks come through the read-through :class:`~cogseg_ml.store.SegmentStore`: images
by file version from the image store (downloaded once), masks from the
:class:`~cogseg_ml.cache.mask_cache.MaskCache` (one batched decode per sample, a strided view
without copies). The dataset pickles without live connections: each DataLoader worker uses its
own process's segmentation session on first use (never the parent's sockets), and all share the
cache file. File versions the parent resolved travel with it, so workers ask CDF nothing more.
A DataLoader's batch (``__getitems__``) reads the image store's index and the mask cache with one
query each and all its masks' RLE strings in one pass; its samples, and the error of its first
failing sample, are those of ``dataset[i]`` one at a time.

Instances whose best segment is empty are left out of the target (a zero-area box breaks
detection losses); ``target["num_dropped"]`` counts them.

**High-resolution images** (``size=``, ``max_size=``, ``mask_format=``): the sample is built
straight at ``v2.Resize(size, max_size=max_size)``'s output size (:func:`~cogseg_ml.
masks_at_size.target_size`), never at full frame. The image is decoded reduced (a JPEG in the
DCT domain, see :func:`~cogseg_ml.image_decode.decode_image_at_size`) and resized exactly
(bilinear, antialiased, as ``v2.Resize``); masks are rasterised at that size from the cached RLE
(:func:`~cogseg_ml.masks_at_size.rle_at_size`) by torchvision's nearest rule: output pixel
``(i, j)`` takes source pixel ``(min(floor(i * H / h), H - 1), min(floor(j * W / w), W - 1))``
(float32 arithmetic, see :func:`~cogseg_ml.masks_at_size.source_indices`), so they equal a
full-resolution decode followed by ``v2.Resize`` pixel for pixel. Boxes are tight around the
resized masks, ``canvas_size`` and ``area`` are at the returned size (both read off the resized
runs, so dense masks are painted once and never scanned), and instances whose mask vanishes at
that size are dropped (counted in ``num_dropped``). ``mask_format="rle"`` returns
``target["masks"]`` as :class:`~cogseg_ml.masks_at_size.CompactMasks` (a few hundred bytes per
mask between processes); :func:`~cogseg_ml.masks_at_size.decode_masks` makes them dense in the
main process, on any device. Dense masks are checked against ``mask_budget_bytes`` before they
are built (:class:`~cogseg_ml.masks_at_size.MaskBudgetError`), and the returned image against
``image_budget_bytes`` (default 2 GiB) before it is decoded
(:class:`~cogseg_ml.masks_at_size.ImageBudgetError`); a ``size=`` that no image could fit
(``size=10**6``: at least 3 TB an image) is refused when the dataset is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as tvf

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.backends.base import SegmentationBackend
from cogseg_ml.backends.resolve import resolve_backend
from cogseg_ml.cache.mask_cache import CachedResult, MaskCache
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import CacheMissError, CogsegError, SampleError, ValidationError
from cogseg_ml.image_decode import (
    DEFAULT_MAX_PIXELS,
    check_declared_size,
    decode_image,
    decode_image_at_size,
)
from cogseg_ml.mask_codec import bbox_of
from cogseg_ml.masks_at_size import (
    DEFAULT_IMAGE_BUDGET,
    CompactMasks,
    ImageBudgetError,
    ParsedRle,
    check_image_budget,
    check_mask_budget,
    compact_at_size,
    decode_many_to_tensor,
    fewest_pixels,
    parse_many,
    rle_areas,
    target_size,
)
from cogseg_ml.progress import progress_bar
from cogseg_ml.samples import Category, CategoryTable, Sample, image_ids
from cogseg_ml.store import ImageRecord, SegmentStore

__all__ = ["INSTANCE_FIELDS", "CacheMissError", "CdfSegmentationDataset", "PrefetchReport",
           "SampleError", "collate_fn", "instance_fields"]

_log = logging.getLogger("cogseg_ml.dataset")
OnMiss = Literal["fetch", "raise", "skip"]
MaskFormat = Literal["dense", "rle"]
#: Default ``mask_budget_bytes``: the most one sample's dense bool masks may take (1 GiB).
DEFAULT_MASK_BUDGET = 2**30
RESOLVE_BLOCK = 1000  # samples whose file versions one files/byids call resolves
#: RLEs a batch read ahead (:func:`~cogseg_ml.masks_at_size.parse_many`), by counts, height, width.
Parsed = Mapping[tuple[str | bytes, int, int], ParsedRle]
#: The target's per-instance fields besides ``masks`` and ``boxes`` (one entry per instance).
INSTANCE_FIELDS = ("labels", "scores", "area", "iscrowd", "instances")


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


def instance_fields(inputs: Any) -> tuple[torch.Tensor, ...]:
    """``labels_getter`` for ``transforms.v2.SanitizeBoundingBoxes``: every per-instance field.

    ``SanitizeBoundingBoxes(labels_getter=instance_fields)`` removes the same instances from
    ``labels``, ``scores``, ``area``, ``iscrowd`` and ``instances`` as from ``boxes`` and
    ``masks`` (the default getter filters ``labels`` alone). Needed only for transforms applied
    outside the dataset: in its ``transforms=`` the default keeps every field aligned too.
    Takes what the transform gets: an ``(image, target)`` pair or the target dict.
    """
    target = inputs[1] if isinstance(inputs, (tuple, list)) and len(inputs) > 1 else inputs
    if not isinstance(target, Mapping):
        raise ValidationError("instance_fields expects (image, target) or a target dict, got "
                              f"{type(target).__name__}")
    return tuple(target[k] for k in INSTANCE_FIELDS if isinstance(target.get(k), torch.Tensor))


class CdfSegmentationDataset(Dataset[tuple[tv_tensors.Image, dict[str, Any]]]):
    """Map-style dataset of CDF images and their instance masks.

    Args:
        samples: the images and prompts (see :mod:`cogseg_ml.samples`).
        client: a :class:`CdfConfig` or a :class:`SegmentationClient` (only its config is kept).
        cache: a :class:`MaskCache`, a path for one, or ``None`` for the default location.
        transforms: ``callable(image, target) -> (image, target)``, e.g. a
            ``torchvision.transforms.v2.Compose``. Instances they remove (e.g.
            ``SanitizeBoundingBoxes()`` after a crop) leave every per-instance field, not
            only masks, boxes and labels (see the module docstring).
        on_miss: what to do when a sample's masks are not cached: ``"fetch"`` runs the jobs
            now (and caches them), ``"raise"`` raises :class:`CacheMissError` naming the
            sample, ``"skip"`` leaves the missing instances out of the target (counted in
            ``target["num_missing"]``); images are fetched in every mode unless stored.
        categories: the classes, as names (ids 1, 2, ... in that order),
            :class:`~cogseg_ml.samples.Category` objects or COCO ``{"id", "name"}`` dicts;
            default: the samples' own (their COCO ids where they have them, else their names
            sorted and numbered from 1). Instances without a category get the ``"object"``
            class; a sample naming a category not listed is a :class:`ValidationError` here.
            See :class:`~cogseg_ml.samples.CategoryTable`.
        max_pixels: refuse larger images before decoding them.
        backend: where missing masks come from (default: the API through ``client``); e.g.
            a :class:`~cogseg_ml.backends.fallback.FallbackBackend` with a local model.
            Cached masks of every identity it may answer with are used, preferred first.
        image_dtype: ``torch.uint8`` (default: pixels as stored, 0..255) or a floating dtype
            such as ``torch.float32`` (scaled to [0, 1]); the conversion happens before
            ``transforms``. torchvision's detection models (Mask R-CNN, Faster R-CNN,
            RetinaNet, FCOS, SSD, Keypoint R-CNN) take float images in [0, 1]: use
            ``torch.float32`` when images go to the model without a transform that converts
            them (e.g. the reference ``engine.train_one_epoch`` with no transforms). Keep
            ``uint8`` for pipelines that convert themselves (torchvision's reference presets
            end with ``ToDtype(torch.float, scale=True)`` and fill with 0..255 colours), for
            models that normalize 0..255 pixels themselves (Segment Anything), and to save
            memory.
        size: build samples at ``torchvision.transforms.v2.Resize(size, max_size=max_size)``'s
            output size: an int is the short side (the long side keeps the aspect ratio,
            rounded down), a pair is ``(h, w)``; ``None`` (default) keeps the stored size
            unless ``max_size`` is given. The image is decoded reduced and the masks are
            rasterised at that size from the cached RLE, never at full frame (the sampling
            rule is in the module docstring and :mod:`cogseg_ml.masks_at_size`); ``transforms``
            run after, on the resized sample. The labeler and the mask cache are unaffected
            (masks stay cached at full resolution).
        max_size: the most the long side may be (with an int ``size`` or ``size=None``).
        mask_format: ``"dense"`` (default): ``target["masks"]`` is a bool
            ``tv_tensors.Mask``; ``"rle"``: a :class:`~cogseg_ml.masks_at_size.CompactMasks`
            (run lengths, cheap to send from DataLoader workers), made dense in the main
            process by :func:`cogseg_ml.decode_masks` (on the CPU or the model's device). Not
            with ``transforms`` (they cannot move compact masks): apply them after
            ``decode_masks``.
        mask_budget_bytes: refuse a sample whose dense masks (``N * H * W`` bytes at the
            returned size) would exceed this, with
            :class:`~cogseg_ml.masks_at_size.MaskBudgetError` naming the sample; ``None``
            checks nothing. Default 1 GiB. Not checked for ``mask_format="rle"``.
        image_budget_bytes: the most one returned image may take (``3 * H * W`` times the
            bytes of ``image_dtype``, at the returned size, before ``transforms``); default
            :data:`~cogseg_ml.masks_at_size.DEFAULT_IMAGE_BUDGET` (2 GiB: the largest image
            the default ``max_pixels`` admits, as float32), ``None`` checks nothing. Over it,
            :class:`~cogseg_ml.masks_at_size.ImageBudgetError` (a ``ValidationError``) says
            what to change: raised here when ``size``/``max_size`` alone make every image too
            large (e.g. ``size=10**6``), else by the sample whose shape does, once its header
            is read and before its pixels are decoded.

    Attributes:
        category_table: the :class:`~cogseg_ml.samples.CategoryTable` labels come from.
        categories: its names in id order; :attr:`num_classes` is ``num_classes`` for a
            torchvision detection model (largest id + 1, 0 the background).
    """

    def __init__(self, samples: Sequence[Sample], *, client: CdfConfig | SegmentationClient,
                 cache: MaskCache | str | Path | None = None,
                 transforms: Callable[..., Any] | None = None, on_miss: OnMiss = "fetch",
                 categories: Sequence[str | Category | Mapping[str, Any]] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 backend: SegmentationBackend | None = None,
                 image_dtype: torch.dtype = torch.uint8,
                 size: int | Sequence[int] | None = None, max_size: int | None = None,
                 mask_format: MaskFormat = "dense",
                 mask_budget_bytes: int | None = DEFAULT_MASK_BUDGET,
                 image_budget_bytes: int | None = DEFAULT_IMAGE_BUDGET) -> None:
        if on_miss not in ("fetch", "raise", "skip"):
            raise ValidationError(f"on_miss must be 'fetch', 'raise' or 'skip', got {on_miss!r}")
        if not isinstance(image_dtype, torch.dtype) or not (
                image_dtype == torch.uint8 or image_dtype.is_floating_point):
            raise ValidationError(f"image_dtype must be torch.uint8 or a floating dtype such as "
                                  f"torch.float32, got {image_dtype!r}")
        if size is not None or max_size is not None:
            target_size(4096, 4096, size, max_size)  # the combination's errors, before any I/O
        if mask_format not in ("dense", "rle"):
            raise ValidationError(f"mask_format must be 'dense' or 'rle', got {mask_format!r}")
        if mask_format == "rle" and transforms is not None:
            raise ValidationError(
                'mask_format="rle" returns CompactMasks, which transforms.v2 cannot move: '
                "leave transforms out of the dataset and apply them after "
                "cogseg_ml.decode_masks(targets) in the main process, or use "
                'mask_format="dense"')
        if mask_budget_bytes is not None and (
                isinstance(mask_budget_bytes, bool) or not isinstance(mask_budget_bytes, int)
                or mask_budget_bytes < 0):
            raise ValidationError(f"mask_budget_bytes must be a non-negative int (bytes) or "
                                  f"None, got {mask_budget_bytes!r}")
        if image_budget_bytes is not None and (
                isinstance(image_budget_bytes, bool) or not isinstance(image_budget_bytes, int)
                or image_budget_bytes < 0):
            raise ValidationError(f"image_budget_bytes must be a non-negative int (bytes) or "
                                  f"None, got {image_budget_bytes!r}")
        if image_budget_bytes is not None and (size is not None or max_size is not None):
            # Where the size alone decides, refuse now (before any I/O), not per sample.
            low_h, low_w, exact = fewest_pixels(size, max_size)
            setting = ", ".join(f"{k}={v!r}" for k, v in (("size", size), ("max_size", max_size))
                                if v is not None)
            check_image_budget(low_h, low_w, image_budget_bytes, setting,
                               itemsize=image_dtype.itemsize, dtype=_dtype_name(image_dtype),
                               at_least=not exact)
        self.samples = list(samples)
        for i, s in enumerate(self.samples):
            if not isinstance(s, Sample):
                raise ValidationError(f"samples[{i}] is a {type(s).__name__}, not a Sample")
        self.category_table = CategoryTable.build(categories, self.samples)  # fail before any I/O
        self.categories = self.category_table.names
        config = client.config if isinstance(client, SegmentationClient) else client
        if not isinstance(config, CdfConfig):
            raise ValidationError("client must be a CdfConfig or a SegmentationClient")
        self.backend, self.config = resolve_backend(backend or config, config, 32)
        self.cache = cache if isinstance(cache, MaskCache) else MaskCache(cache)
        self.store = SegmentStore(self.config, self.cache, self.backend, max_pixels=max_pixels)
        self.transforms = transforms
        self.on_miss: OnMiss = on_miss
        self.max_pixels = max_pixels
        self.image_dtype = image_dtype
        self.size = size if size is None or isinstance(size, int) else tuple(size)
        self.max_size = max_size
        self.mask_format: MaskFormat = mask_format
        self.mask_budget_bytes = mask_budget_bytes
        self.image_budget_bytes = image_budget_bytes
        self._image_ids = [iid for _, iid in image_ids(self.samples)]
        self._sizes: dict[int, tuple[int, int]] = {}  # (height, width) of samples seen
        self._warned_unaligned = False

    @property
    def num_classes(self) -> int:
        """``num_classes`` for a torchvision detection model (largest label + 1)."""
        return self.category_table.num_classes

    def image_id(self, index: int) -> int:
        """The COCO image id of sample ``index`` (``target["image_id"]``)."""
        return self._image_ids[self._index(index)]

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
                f"size={self.size!r}, max_size={self.max_size!r}, "
                f"mask_format={self.mask_format!r}, cache={self.cache.path})")

    def _index(self, index: int) -> int:
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        return index % len(self.samples)

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of sample ``index``'s image, before any transforms.

        Read from the stored image's header (never decoding pixels), so torchvision's
        ``group_by_aspect_ratio`` takes its fast path. File versions come from the resolved
        block (one ``files/byids`` call per 1000 samples, none after :meth:`prefetch`); images
        not stored yet are downloaded and stored for the whole block, as :meth:`prefetch` would.

        Raises:
            SampleError: the image cannot be read (unknown file, unreachable, not an image).
        """
        index = self._index(index)
        known = self._sizes.get(index)
        if known is not None:
            return known
        start = index - index % RESOLVE_BLOCK
        todo = [i for i in range(start, min(start + RESOLVE_BLOCK, len(self.samples)))
                if i not in self._sizes]
        failed: CogsegError | None = None
        for i, rec in zip(todo, self.store.records([self.samples[i].file for i in todo]),
                          strict=True):
            if isinstance(rec, ImageRecord):
                self._remember_size(i, rec)
            elif i == index:
                failed = rec
        if failed is not None:
            raise SampleError(f"sample {index} ({self.samples[index].file.describe()}): "
                              f"{failed}") from failed
        return self._sizes[index]

    def _remember_size(self, index: int, rec: ImageRecord) -> None:
        self._sizes[index] = (rec.height, rec.width)
        meta = self.samples[index].meta
        if isinstance(meta, Mapping) and "height" in meta and "width" in meta:
            check_declared_size(rec.file, (meta["height"], meta["width"]), (rec.height, rec.width))

    # --- loading -------------------------------------------------------------------------------
    def _resolve_around(self, index: int) -> None:
        """File versions for the block of samples around ``index`` (one call per block)."""
        ref = self.samples[index].file
        if ref in self.store._info:
            return
        start = index - index % RESOLVE_BLOCK
        self.store.resolve(s.file for s in self.samples[start:start + RESOLVE_BLOCK])

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` a ``height x width`` image is returned at (before ``transforms``)."""
        if self.size is None and self.max_size is None:
            return height, width
        return target_size(height, width, self.size, self.max_size)

    def _image_record(self, index: int, stored: tuple[bytes, str] | None = None
                      ) -> tuple[bytes, ImageRecord]:
        """Sample ``index``'s image bytes and record (``stored``: what the batch's read of the
        image store found for it)."""
        sample = self.samples[index]
        try:
            self._resolve_around(index)
            data, rec = self.store.image(sample.file, stored=stored)
            self._remember_size(index, rec)
            return data, rec
        except CogsegError as exc:
            raise SampleError(f"sample {index} ({sample.file.describe()}): {exc}") from exc

    def _decode_image(self, index: int, data: bytes, rec: ImageRecord) -> tv_tensors.Image:
        sample = self.samples[index]
        try:
            out_h, out_w = self.output_size(rec.height, rec.width)
            if self.image_budget_bytes is not None:  # before decoding
                check_image_budget(out_h, out_w, self.image_budget_bytes,
                                   f"sample {index} ({sample.file.describe()})",
                                   itemsize=self.image_dtype.itemsize,
                                   dtype=_dtype_name(self.image_dtype))
            if (out_h, out_w) == (rec.height, rec.width):
                pixels = decode_image(data, sample.file, self.max_pixels)
            else:
                pixels = decode_image_at_size(data, out_h, out_w, sample.file, self.max_pixels)
            return tv_tensors.Image(pixels)
        except ImageBudgetError:
            raise  # names the sample already; its type says what to change
        except CogsegError as exc:
            raise SampleError(f"sample {index} ({sample.file.describe()}): {exc}") from exc

    def _fetch(self, index: int, rec: ImageRecord, missing: list[int]
               ) -> dict[int, CachedResult]:
        sample = self.samples[index]
        out: dict[int, CachedResult] = {}
        items = [(rec, sample.instances[k].prompt, k) for k in missing]
        with closing(self.store.segment(items)) as stream:  # closed now, not at GC
            for k, _, result, error in stream:
                if result is None:
                    raise SampleError(f"sample {index} ({sample.file.describe()}), "
                                      f"instance {k}: {error}") from error
                out[k] = result
        return out

    def _load_target(self, index: int, rec: ImageRecord,
                     found_in_batch: list[CachedResult | None] | None = None,
                     parsed: Parsed | None = None) -> dict[str, Any]:
        """Sample ``index``'s target; ``found_in_batch``: its cached results as the batch's
        lookup found them (used when complete), ``parsed``: its RLEs as the batch read them
        (runs, areas, boxes; used when it holds all of them, well formed)."""
        sample = self.samples[index]
        height, width = rec.height, rec.width
        if found_in_batch is not None and all(r is not None for r in found_in_batch):
            results = list(found_in_batch)
        else:  # looked up now, after the samples before it fetched what they missed
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
        rles = [b.rle for _, b in found]
        read = _all_parsed(rles, parsed)
        areas = rle_areas(rles) if read is None else [p.area for p in read]
        kept = [(k, b, float(a)) for (k, b), a in zip(found, areas, strict=True) if a > 0 and b]
        where = f"sample {index} ({sample.file.describe()})"
        out_h, out_w = self.output_size(height, width)
        masks, xyxy, sizes = self._masks_at(kept, height, width, out_h, out_w, where, parsed)
        if sizes is not None:  # resized: masks that vanished at the returned size are dropped
            keep = sizes > 0
            if not keep.all():
                kept = [kba for kba, k in zip(kept, keep.tolist(), strict=True) if k]
                masks = masks[torch.from_numpy(keep)] if isinstance(masks, torch.Tensor) \
                    else _select(masks, keep)
                xyxy, sizes = xyxy[keep], sizes[keep]
            kept = [(k, b, float(a)) for (k, b, _), a in zip(kept, sizes, strict=True)]
        dropped = sum(1 for r in results if r is not None) - len(kept)
        labels = [self.category_table.id_of(sample.instances[k].category, where)
                  for k, _, _ in kept]
        return {
            "masks": tv_tensors.Mask(masks) if isinstance(masks, torch.Tensor) else masks,
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(xyxy.astype(np.float32)),
                                              format="XYXY", canvas_size=(out_h, out_w)),
            "labels": torch.from_numpy(np.array(labels, dtype=np.int64)),
            "scores": torch.from_numpy(np.array([b.score for _, b, _ in kept], dtype=np.float32)),
            "area": torch.from_numpy(np.array([a for _, _, a in kept], dtype=np.float32)),
            "iscrowd": torch.zeros(len(kept), dtype=torch.int64),
            "instances": torch.from_numpy(np.array([k for k, _, _ in kept], dtype=np.int64)),
            "image_id": self._image_ids[index],
            "file": sample.file,
            "num_dropped": dropped,
            "num_missing": sum(r is None for r in results),
        }

    def _masks_at(self, kept: Sequence[tuple[int, Any, float]], height: int, width: int,
                  out_h: int, out_w: int, where: str,
                  parsed: Parsed | None = None
                  ) -> tuple[torch.Tensor | CompactMasks, np.ndarray, np.ndarray | None]:
        """The kept instances' masks (dense or compact), XYXY boxes, and, when resized, each
        mask's pixel count at the returned size (``None`` at full size: the cached areas)."""
        rles = [b.rle for _, b, _ in kept]
        resized = (out_h, out_w) != (height, width)
        if self.mask_format == "rle":
            if not resized:
                compact = CompactMasks.from_rles(rles, height, width)
                return compact, _xyxy_of_rles(rles, parsed), None
            compact = compact_at_size(rles, height, width, out_h, out_w)
            xyxy, sizes = _boxes_and_areas_of_compact(compact)
            return compact, xyxy, sizes
        check_mask_budget(len(rles), out_h, out_w, self.mask_budget_bytes, where)
        if not resized:
            return (decode_many_to_tensor(rles, height, width, parsed),
                    _xyxy_of_rles(rles, parsed), None)
        # Boxes and pixel counts from the resized runs (a few thousand numbers), then the
        # dense masks painted from the same runs: never a scan of N * out_h * out_w bools.
        compact = compact_at_size(rles, height, width, out_h, out_w)
        xyxy, sizes = _boxes_and_areas_of_compact(compact)
        return compact.to_dense(), xyxy, sizes

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[tv_tensors.Image,
                                                                 dict[str, Any]]]:
        """Samples ``indices``, reading the cache once for them all (``dataset[i]`` is
        ``dataset.__getitems__([i])[0]``).

        A DataLoader asks for each batch this way. The image store's index and the mask
        cache are each read with one query for the batch, and the masks' RLE strings in one
        pass; decoding and targets are per sample, in order. The samples are those of
        ``[dataset[i] for i in indices]``, and so is the error: that of the first sample that
        fails (nothing after it is read). A sample whose masks are not all cached is looked up
        again at its turn, after the samples before it fetched theirs.
        """
        positions = [self._index(i) for i in indices]
        try:
            stored = self.store.stored_images([self.samples[p].file for p in positions])
        except CogsegError:  # each sample reads for itself, and says what is wrong
            stored = {}
        loaded: list[tuple[bytes, ImageRecord] | SampleError] = []
        for p in positions:
            try:
                loaded.append(self._image_record(p, stored.get(self.samples[p].file)))
            except SampleError as exc:  # raised at its turn, after the samples before it
                loaded.append(exc)
                break
        ready = [(p, got[1]) for p, got in zip(positions, loaded, strict=False)
                 if not isinstance(got, SampleError)]
        found: dict[int, list[CachedResult | None]] = {}
        parsed: Parsed | None = None
        try:
            results = self.store.lookup_many(
                [(rec, [inst.prompt for inst in self.samples[p].instances]) for p, rec in ready])
            found = dict(enumerate(results))
            if self.size is None and self.max_size is None:  # masks at their cached size
                parsed = parse_many([res.best.rle for r in results for res in r
                                     if res is not None and res.best is not None])
        except CogsegError:  # each sample looks up and decodes for itself, naming what is wrong
            pass
        out = []
        for at, (p, got) in enumerate(zip(positions, loaded, strict=False)):
            if isinstance(got, SampleError):
                raise got
            out.append(self._sample(p, *got, found_in_batch=found.get(at), parsed=parsed))
        return out

    def _sample(self, index: int, data: bytes, rec: ImageRecord,
                found_in_batch: list[CachedResult | None] | None = None,
                parsed: Parsed | None = None) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """Sample ``index`` from its image bytes and record (see :meth:`__getitems__` for what
        a batch has read already)."""
        image = self._decode_image(index, data, rec)
        if (int(image.shape[-2]), int(image.shape[-1])) != self.output_size(rec.height,
                                                                             rec.width):
            raise SampleError(f"sample {index}: decoded size differs from the header's")
        target = self._load_target(index, rec, found_in_batch, parsed)
        if self.image_dtype != torch.uint8:
            image = tvf.to_dtype(image, self.image_dtype, scale=True)
        if self.transforms is None:
            return image, target
        before = len(target["labels"])
        target["labels"] = _TrackedLabels.track(target["labels"])
        image, target = self.transforms(image, target)
        return image, self._align(index, target, before)

    def _align(self, index: int, target: Any, before: int) -> Any:
        """Per-instance fields of a transformed target agree with its boxes (or masks).

        ``labels`` went through the transforms carrying each instance's index (see
        :class:`_TrackedLabels`): whatever removed instances from the boxes removed the same
        ones from it, so every other per-instance field the transforms left whole
        (``before`` entries) is gathered by that index. ``area`` (at the returned size) and
        ``iscrowd`` are computed again; labels that no longer match are an error; ``scores``
        and ``instances`` that still do not match (a transform that rebuilt the labels) are
        left out (one warning), never returned misaligned.
        """
        if not isinstance(target, dict):
            return target
        labels = target.get("labels")
        kept: torch.Tensor | None = None
        if isinstance(labels, _TrackedLabels):
            kept = labels.instance_index
            target["labels"] = labels.as_subclass(torch.Tensor)
        boxes, masks = target.get("boxes"), target.get("masks")
        lead = boxes if isinstance(boxes, torch.Tensor) else masks
        if not isinstance(lead, torch.Tensor) or lead.ndim < 1:
            return target
        n = int(lead.shape[0])
        if kept is not None and len(kept) == n and not (
                n == before and torch.equal(kept, torch.arange(n))):
            for key in INSTANCE_FIELDS:
                value = target.get(key)
                if key != "labels" and isinstance(value, torch.Tensor) and value.ndim >= 1 \
                        and value.shape[0] == before:
                    target[key] = value[kept]
        if isinstance(masks, torch.Tensor) and masks.ndim == 3 and masks.shape[0] == n:
            if "area" in target:
                target["area"] = masks.as_subclass(torch.Tensor).ne(0).flatten(1).sum(1).to(
                    torch.float32)
        if isinstance(target.get("iscrowd"), torch.Tensor) and len(target["iscrowd"]) != n:
            target["iscrowd"] = torch.zeros(n, dtype=torch.int64)

        def unaligned(key: str) -> bool:
            value = target.get(key)
            return isinstance(value, torch.Tensor) and (value.ndim == 0 or value.shape[0] != n)

        if unaligned("labels"):
            raise SampleError(
                f"sample {index}: the transforms left {len(target['labels'])} labels for {n} "
                "boxes: remove instances with transforms.v2.SanitizeBoundingBoxes() (its "
                "default labels_getter, or cogseg_ml.dataset.instance_fields), not with "
                "labels_getter=None")
        lost = [k for k in INSTANCE_FIELDS if unaligned(k)]
        for k in lost:
            del target[k]
        if lost and not self._warned_unaligned:
            self._warned_unaligned = True
            _log.warning("the transforms removed instances from the boxes and replaced the "
                         "labels, so %s cannot be matched to what is left and are left out of "
                         "the targets: filter the labels tensor the transforms were given (as "
                         "transforms.v2.SanitizeBoundingBoxes does) instead of building a new "
                         "one", ", ".join(map(repr, lost)))
        return target

    # --- bulk ------------------------------------------------------------------------------------
    def prefetch(self, *, progress: bool = True, download_workers: int = 8,
                 tqdm_class: Any = None) -> PrefetchReport:
        """Fill the image store and the mask cache for every sample.

        An explicit refresh: CDF is asked for every file's current version (1000 files per
        call), even those this dataset, or another in this process, resolved moments ago, so a
        file replaced in CDF is downloaded again and the dataset (and its DataLoader workers,
        which get these versions) serves the new content from then on. Implicit lookups
        (``dataset[i]`` before any prefetch) reuse a version resolved in this process less than
        60 s ago instead (:data:`cogseg_ml.store.VERSION_TTL_S`). Images are downloaded by
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
                got = self.store.records([s.file for s in block], fresh=True)
                for i, rec in enumerate(got, start):
                    if isinstance(rec, ImageRecord):
                        self._remember_size(i, rec)
                    else:
                        self._sizes.pop(i, None)
                records.extend(got)
                bar.update(len(block))
        report.images_downloaded = self.store.downloads - before

        prompts = sum(len(self.samples[i].instances) for i, rec in enumerate(records)
                      if not isinstance(rec, CogsegError))
        with progress_bar(prompts, "masks", progress=progress, tqdm_class=tqdm_class) as bar:

            def items() -> Any:
                for i, rec in enumerate(records):
                    if isinstance(rec, CogsegError):
                        report.failures.append((i, None, str(rec)))
                        continue
                    prompts = [inst.prompt for inst in self.samples[i].instances]
                    for k, hit in enumerate(self.store.present(rec, prompts)):
                        if hit:
                            report.already_cached += 1
                            bar.update(1)
                        else:
                            yield rec, prompts[k], (i, k)

            with closing(self.store.segment(items())) as stream:
                for (i, k), _, result, error in stream:
                    bar.update(1)
                    if result is None:
                        report.failures.append((i, k, str(error)))
                    else:
                        report.jobs_run += 1
        report.failures.sort(key=lambda f: (f[0], -1 if f[1] is None else f[1]))
        return report


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- instance indices through the user's transforms ------------------------------------------

class _TrackedLabels(torch.Tensor):
    """The target's ``labels``, remembering each entry's instance index through indexing.

    The dataset hands its transforms the labels as this tensor: its values are the labels
    (a transform reading them sees nothing else), and indexing it (``labels[valid]``, as
    ``SanitizeBoundingBoxes`` and most filters do) indexes the instance indices alongside. So
    after the transforms, :attr:`instance_index` says which instances are left, in order, and
    every other per-instance field is gathered by it. Any other operation returns a plain
    tensor, without the index (the dataset then falls back to checking lengths).
    """

    instance_index: torch.Tensor

    @classmethod
    def track(cls, labels: torch.Tensor) -> _TrackedLabels:
        """``labels`` with the instance indices ``0..N-1`` attached."""
        out = labels.as_subclass(cls)
        out.instance_index = torch.arange(len(labels))
        return out

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        this = args[0] if args else None
        if not isinstance(this, _TrackedLabels) or not isinstance(out, torch.Tensor) \
                or out.ndim != 1:
            return out
        if func is torch.Tensor.__getitem__:
            index = this.instance_index[args[1]]
        elif func in _SAME_ENTRIES and out.shape == this.shape:
            index = this.instance_index
        else:
            return out
        tracked = out.as_subclass(_TrackedLabels)
        tracked.instance_index = index
        return tracked


#: Operations that keep every entry where it is (copies, moves): the index stays.
_SAME_ENTRIES = frozenset({torch.Tensor.clone, torch.Tensor.detach, torch.Tensor.to,
                           torch.Tensor.contiguous, torch.Tensor.cpu, torch.Tensor.__deepcopy__})


# --- boxes and areas of masks at the returned size ---------------------------------------------

def _all_parsed(rles: Sequence[Any], parsed: Parsed | None) -> list[ParsedRle] | None:
    """The batch's reading of each of ``rles``, or ``None`` unless it read them all, well
    formed (then they are read again, and whatever is wrong is raised)."""
    if parsed is None:
        return None
    out = []
    for r in rles:
        try:
            got = parsed.get((r["counts"], int(r["size"][0]), int(r["size"][1])))
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        if got is None or not got.valid:
            return None
        out.append(got)
    return out


def _xyxy_of_rles(rles: Sequence[Any], parsed: Parsed | None = None) -> np.ndarray:
    """Tight XYXY boxes of full-size RLEs (pycocotools' ``toBbox``; from the batch's reading
    when it has them all)."""
    read = _all_parsed(rles, parsed)
    xywh = bbox_of(rles) if read is None or not read else np.array([p.box for p in read])
    out: np.ndarray = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return out


def _boxes_and_areas_of_compact(masks: CompactMasks) -> tuple[np.ndarray, np.ndarray]:
    """Tight XYXY boxes and pixel counts of compact masks, from their runs (no dense array).

    A foreground run ``[s, e)`` in column-major positions (``H`` rows) covers columns
    ``s // H`` to ``(e - 1) // H``; within one column the rows ``s % H`` to ``(e - 1) % H``,
    across a column end every row.
    """
    n, h = len(masks), masks.height
    counts = masks.counts.numpy().astype(np.int64)
    offsets = masks.offsets.numpy()
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(n), lengths)
    ends = np.cumsum(counts)
    mask_start = np.zeros(n, dtype=np.int64)
    if counts.size:
        firsts = offsets[:-1][lengths > 0]
        mask_start[lengths > 0] = ends[firsts] - counts[firsts]
    local = np.arange(counts.size) - offsets[:-1][owner]
    fg = ((local & 1) == 1) & (counts > 0)
    who = owner[fg]
    e = ends[fg] - mask_start[who]
    s = e - counts[fg]
    sizes = np.bincount(who, weights=counts[fg], minlength=n).astype(np.int64)
    c0, c1 = s // h, (e - 1) // h
    across = c1 > c0
    r0 = np.where(across, 0, s % h)
    r1 = np.where(across, h - 1, (e - 1) % h)
    big = np.iinfo(np.int64).max
    xyxy = np.zeros((n, 4), dtype=np.float64)
    has = sizes > 0
    for col, values, fill, op in ((0, c0, big, np.minimum), (1, r0, big, np.minimum),
                                  (2, c1 + 1, -1, np.maximum), (3, r1 + 1, -1, np.maximum)):
        acc = np.full(n, fill, dtype=np.int64)
        op.at(acc, who, values)
        xyxy[has, col] = acc[has]
    return xyxy, sizes


def _select(masks: CompactMasks, keep: np.ndarray) -> CompactMasks:
    """The masks of ``masks`` where ``keep`` is true, in order."""
    offsets = masks.offsets.numpy()
    picked = [masks.counts[int(offsets[k]):int(offsets[k + 1])]
              for k in np.flatnonzero(keep)]
    sizes = [int(p.numel()) for p in picked]
    new_offsets = np.zeros(len(picked) + 1, dtype=np.int64)
    new_offsets[1:] = np.cumsum(sizes)
    counts = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.int32)
    return CompactMasks(counts, new_offsets, masks.height, masks.width)
