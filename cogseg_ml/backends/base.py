"""What every segmentation backend offers: jobs in, scored RLE masks out.

A :class:`BackendJob` is one prompt on one image whose size is known (and whose bytes a local
model can load); a :class:`BackendOutcome` carries a :class:`MaskResult` (segments as RLE at the
image's size, with the backend's name and model version as provenance) or the error. Backends
know nothing of the cache: the read-through store (:mod:`cogseg_ml.store`) turns results into
cache entries. The dataset and the labeler take any backend.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cogseg_ml.errors import CogsegError

if TYPE_CHECKING:  # kept out of the import so that writing a backend loads no numpy or pydantic
    import torch

    from cogseg_ml.api.results import SegmentRequest
    from cogseg_ml.mask_codec import Rle

__all__ = ["BackendJob", "BackendOutcome", "MaskResult", "ScoredMask", "SegmentationBackend",
           "require_extra"]


def require_extra(module: str, extra: str, what: str) -> Any:
    """Import ``module`` of an optional extra, or say which extra brings ``what`` (plural)."""
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(f"{what} come with the {extra!r} extra: "
                          f"pip install 'cogseg-ml[{extra}]'") from None


@dataclass(frozen=True)
class ScoredMask:
    """One candidate mask: its score and COCO RLE (``counts`` as str); also the cache's
    segment (``CachedSegment`` is this class under its old name)."""

    score: float
    rle: Rle


@dataclass(frozen=True)
class MaskResult:
    """The one result type of a segmentation, from backend to cache to Python API: segments
    best first (scored RLE at the image's size), image size and provenance. A backend returns
    it; the mask cache stores and returns it (``cogseg_ml.cache.mask_cache.CachedResult`` is
    this class under its old name), so nothing is copied field by field on the way.

    Attributes:
        created: when the answer was made (seconds since the epoch); provenance, not part of
            equality (two answers with the same masks and provenance are equal).
    """

    segments: tuple[ScoredMask, ...]
    height: int
    width: int
    backend: str
    model_version: str = ""
    job_id: int | None = None
    created: float = field(default_factory=time.time, compare=False)

    def masks(self) -> torch.Tensor:
        """All segments as a ``(N, H, W)`` bool tensor (a strided view, no copy)."""
        from cogseg_ml.mask_codec import decode_to_tensor

        return decode_to_tensor([s.rle for s in self.segments], self.height, self.width)

    @property
    def best(self) -> ScoredMask | None:
        """The highest-scoring segment, if any."""
        return self.segments[0] if self.segments else None


@dataclass(frozen=True)
class BackendJob:
    """One prompt on one image.

    Attributes:
        request: the file, prompt and your tag.
        height, width: the image's size in pixels (masks come back at this size).
        image_key: a stable identity of the image's content (e.g. its SHA-256), used by
            local models to reuse an image's embedding.
        load_image: returns the image's encoded bytes (PNG/JPEG) when a backend needs pixels.
        file_checked: the caller already checked the file exists and can be segmented (the
            API backend then sends no ``files/byids`` of its own).
    """

    request: SegmentRequest
    height: int
    width: int
    image_key: str
    load_image: Callable[[], bytes]
    file_checked: bool = False


@dataclass(frozen=True)
class BackendOutcome:
    """A job's result or its error, never both."""

    job: BackendJob
    result: MaskResult | None = None
    error: CogsegError | None = None


@runtime_checkable
class SegmentationBackend(Protocol):
    """A source of masks; ``name`` and ``model_version`` go into cache keys."""

    name: str
    model_version: str

    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        """Segment every job (read lazily); yields one outcome per job, in any order."""
        ...

    def identities(self) -> list[tuple[str, str]]:
        """``(name, model_version)`` of the backends that may answer, preferred first."""
        ...
