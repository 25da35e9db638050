"""Segmentation backends: the CDF API, a local Segment-Anything model, and a fallback of both.

Writing a backend of your own takes the types of :mod:`cogseg_ml.backends.base`, all
exported here: a class with ``name``, ``model_version``, ``identities()`` and
``run(jobs)`` (:class:`SegmentationBackend`) turns each :class:`BackendJob` (one prompt on
one image of known size) into a :class:`BackendOutcome` holding a :class:`MaskResult` (its
:class:`ScoredMask` segments as COCO RLE, best first) or the error. The dataset and the
labeler take any such backend.

The local model: ``LocalSamBackend.from_pretrained(DIR)`` (SAM 2 / 2.1 and SAM 1 in
transformers' format) needs the ``sam2`` extra (``transformers``);
``LocalSamBackend(checkpoint=FILE, model_type=...)`` on Meta's original SAM 1 ``.pth`` files
needs the ``sam`` extra (``segment-anything``). After the Vision API is retired the local model
is the only source of masks: use it alone, or behind :class:`FallbackBackend`, which switches
to it for good on :class:`~cogseg_ml.errors.ApiRetiredError`.

Names load on first use: importing this package (or the authoring types) loads neither
httpx nor torch.
"""

from __future__ import annotations

import typing

if typing.TYPE_CHECKING:
    from cogseg_ml.backends.api_backend import ApiBackend
    from cogseg_ml.backends.base import (
        BackendJob,
        BackendOutcome,
        MaskResult,
        ScoredMask,
        SegmentationBackend,
    )
    from cogseg_ml.backends.fallback import CircuitBreaker, FallbackBackend
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.backends.resolve import resolve_backend

_SOURCES: dict[str, tuple[str, ...]] = {
    "cogseg_ml.backends.api_backend": ("ApiBackend",),
    "cogseg_ml.backends.base": ("BackendJob", "BackendOutcome", "MaskResult", "ScoredMask",
                                "SegmentationBackend"),
    "cogseg_ml.backends.fallback": ("CircuitBreaker", "FallbackBackend"),
    "cogseg_ml.backends.local_sam": ("LocalSamBackend",),
    "cogseg_ml.backends.resolve": ("resolve_backend",),
}
_LAZY = {name: module for module, names in _SOURCES.items() for name in names}

if not typing.TYPE_CHECKING:  # type checkers read the imports above; at run time names load here

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'cogseg_ml.backends' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this hook
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = ["ApiBackend", "BackendJob", "BackendOutcome", "CircuitBreaker", "FallbackBackend",
           "LocalSamBackend", "MaskResult", "ScoredMask", "SegmentationBackend",
           "resolve_backend"]
