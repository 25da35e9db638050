"""What every segmentation backend offers: jobs in, scored RLE masks out.

A :class:`BackendJob` is one prompt on one image whose size is known (and whose bytes a local
model can load); a :class:`BackendOutcome` carries a
:class:`~cogseg_ml.cache.mask_cache.CachedResult` (segments as RLE at the image's size, with
the backend's name and model version as provenance) or the error. The dataset and the labeler
take any backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.cache.mask_cache import CachedResult
from cogseg_ml.errors import CogsegError

__all__ = ["BackendJob", "BackendOutcome", "SegmentationBackend"]


@dataclass(frozen=True)
class BackendJob:
    """One prompt on one image.

    Attributes:
        request: the file, prompt and your tag.
        height, width: the image's size in pixels (masks come back at this size).
        image_key: a stable identity of the image's content (e.g. its SHA-256), used by
            local models to reuse an image's embedding.
        load_image: returns the image's encoded bytes (PNG/JPEG) when a backend needs pixels.
    """

    request: SegmentRequest
    height: int
    width: int
    image_key: str
    load_image: Callable[[], bytes]


@dataclass(frozen=True)
class BackendOutcome:
    """A job's result (segments best first, with provenance) or its error."""

    job: BackendJob
    result: CachedResult | None = None
    error: CogsegError | None = None


@runtime_checkable
class SegmentationBackend(Protocol):
    """A source of masks; ``name`` and ``model_version`` go into cache keys."""

    name: str
    model_version: str

    def run(self, jobs: Sequence[BackendJob]) -> Iterator[BackendOutcome]:
        """Segment every job; yields one outcome per job, in any order."""
        ...

    def identities(self) -> list[tuple[str, str]]:
        """``(name, model_version)`` of the backends that may answer, preferred first."""
        ...
