"""Merging caches: a shard's entries, the images they were made on and its text detections
copied into another cache. Above the mask cache and the image store (it uses both), so neither
imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import MaskCache, cache_file
from cogseg_ml.errors import ValidationError

__all__ = ["MergeReport", "merge"]


@dataclass(frozen=True)
class MergeReport:
    """What :func:`merge` copied from ``source``."""

    entries: int
    images: int
    source: str


def merge(target: MaskCache, other: str | Path | MaskCache) -> MergeReport:
    """Copy the entries and images of another cache that ``target`` lacks.

    ``other`` is a cache, its SQLite file or its folder. The image index travels with its
    bytes (verified by hash; entries whose bytes are missing or damaged are skipped), so a run
    over the merged cache downloads nothing the source held.

    Raises:
        CacheError: there is no cache at ``other`` (nothing is created), or it cannot be read.
        ValidationError: ``other`` is ``target`` itself.
    """
    src = other.path if isinstance(other, MaskCache) else cache_file(other)
    if target.same_file(src):
        raise ValidationError(f"cannot merge the cache {src} into itself: give another cache "
                              "(e.g. a shard's) as the source")
    source = MaskCache(src, create=False, busy_timeout_s=target.busy_timeout_s)
    try:
        entries = target.merge_entries(source.path)
        images = ImageStore(target).merge_from(ImageStore(source))
    finally:
        source.close()
    return MergeReport(entries=entries, images=images, source=str(source.path))
