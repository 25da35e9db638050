"""Which backend answers, and which CDF connection serves the images."""

from __future__ import annotations

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.backends.base import SegmentationBackend
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import ValidationError

__all__ = ["resolve_backend"]


def resolve_backend(backend: CdfConfig | SegmentationClient | SegmentationBackend,
                    config: CdfConfig | None, concurrency: int
                    ) -> tuple[SegmentationBackend, CdfConfig]:
    """The backend to run and the CDF connection for images (from the backend if it has one).

    Raises:
        ValidationError: not a backend, or no CDF connection to download images with.
    """
    if isinstance(backend, (CdfConfig, SegmentationClient)):
        api = ApiBackend(backend, concurrency=concurrency)
        return api, config or api.config
    if not isinstance(backend, SegmentationBackend):
        raise ValidationError("backend must be a CdfConfig, a SegmentationClient or a "
                              f"SegmentationBackend, got {type(backend).__name__}")
    found = config
    for b in (backend, getattr(backend, "primary", None), getattr(backend, "fallback", None)):
        if found is None and isinstance(b, ApiBackend):
            found = b.config
    if found is None:
        raise ValidationError("this backend has no CDF connection: pass config=CdfConfig(...) "
                              "for downloading images")
    return backend, found
