"""Segmentation backends: the CDF API, a local Segment-Anything model, and a fallback of both.

Import the local model from :mod:`cogseg_ml.backends.local_sam`:
``LocalSamBackend.from_pretrained(DIR)`` (SAM 2 / 2.1 and SAM 1 in transformers' format) needs
the ``sam2`` extra (``transformers``); ``LocalSamBackend(checkpoint=FILE, model_type=...)`` on
Meta's original SAM 1 ``.pth`` files needs the ``sam`` extra (``segment-anything``). After the
Vision API is retired the local model is the only source of masks: use it alone, or behind
:class:`FallbackBackend`, which switches to it for good on
:class:`~cogseg_ml.errors.ApiRetiredError`.
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
