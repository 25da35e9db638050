"""Segmentation backends: the CDF API, a local Segment-Anything model, and a fallback of both.

Import the local model from :mod:`cogseg_ml.backends.local_sam` (it needs the ``sam`` extra).
"""

from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.backends.base import (
    BackendJob,
    BackendOutcome,
    MaskResult,
    ScoredMask,
    SegmentationBackend,
)
from cogseg_ml.backends.fallback import CircuitBreaker, FallbackBackend
from cogseg_ml.backends.resolve import resolve_backend

__all__ = ["ApiBackend", "BackendJob", "BackendOutcome", "CircuitBreaker", "FallbackBackend",
           "MaskResult", "ScoredMask", "SegmentationBackend", "resolve_backend"]
