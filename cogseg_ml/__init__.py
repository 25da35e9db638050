"""cogseg_ml: Cognite Data Fusion images plus prompts to training-ready segmentation masks.

The names below are the public surface; torch-dependent parts (the dataset) load on first use.
"""

from __future__ import annotations

from cogseg_ml.api.client import AsyncSegmentationClient, SegmentationClient
from cogseg_ml.api.results import (
    ItemResult,
    JobOutcome,
    Segment,
    SegmentationResult,
    SegmentRequest,
)
from cogseg_ml.api.wire_schema import JobStatus
from cogseg_ml.backends import ApiBackend, FallbackBackend, SegmentationBackend
from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import CachedResult, CachedSegment, MaskCache
from cogseg_ml.config import (
    CdfConfig,
    ClientCredentials,
    PollConfig,
    RetryConfig,
    Secret,
    StaticToken,
    TokenProvider,
)
from cogseg_ml.errors import (
    ApiError,
    ApiRetiredError,
    ApiUnavailableError,
    AuthenticationError,
    CacheError,
    CacheVersionError,
    CogsegError,
    DetectorCheckpointError,
    FileValidationError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    PromptValidationError,
    RateLimitedError,
    ResponseValidationError,
    RunInterrupted,
    SamCheckpointError,
    ValidationError,
)
from cogseg_ml.labeler import LabelingReport, SegmentationLabeler
from cogseg_ml.prompts import Box, FileRef, InstanceId, Point, Prompt
from cogseg_ml.samples import (
    Instance,
    Sample,
    samples_from_annotations,
    samples_from_coco,
    samples_from_records,
)
from cogseg_ml.version import __version__

# torch-dependent names load on first use, so `import cogseg_ml` stays light.
_LAZY = {
    "CdfSegmentationDataset": "cogseg_ml.dataset",
    "collate_fn": "cogseg_ml.dataset",
    "LocalSamBackend": "cogseg_ml.backends.local_sam",
    "CompactMasks": "cogseg_ml.masks_at_size",
    "ImageBudgetError": "cogseg_ml.masks_at_size",
    "MaskBudgetError": "cogseg_ml.masks_at_size",
    "decode_masks": "cogseg_ml.masks_at_size",
    "target_size": "cogseg_ml.masks_at_size",
    "ExportReport": "cogseg_ml.exports",
    "export_labels": "cogseg_ml.exports",
    "read_labels": "cogseg_ml.coco_io",
    "TextBoxDetector": "cogseg_ml.detect.text_boxes",
    "samples_from_text": "cogseg_ml.text_samples",
    "samples_from_files": "cogseg_ml.file_listing",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cogseg_ml' has no attribute {name!r}")

__all__ = [
    "ApiBackend",
    "ApiError",
    "ApiRetiredError",
    "ApiUnavailableError",
    "AsyncSegmentationClient",
    "AuthenticationError",
    "Box",
    "CacheError",
    "CacheKey",
    "CacheVersionError",
    "CachedResult",
    "CachedSegment",
    "CdfConfig",
    "CdfSegmentationDataset",
    "ClientCredentials",
    "CogsegError",
    "CompactMasks",
    "DetectorCheckpointError",
    "ExportReport",
    "FallbackBackend",
    "FileRef",
    "FileValidationError",
    "ImageStore",
    "Instance",
    "InstanceId",
    "ItemResult",
    "JobFailedError",
    "JobOutcome",
    "JobStatus",
    "JobTimeoutError",
    "LabelingReport",
    "LocalSamBackend",
    "ImageBudgetError",
    "MaskBudgetError",
    "MaskCache",
    "NotFoundError",
    "Point",
    "PollConfig",
    "Prompt",
    "PromptValidationError",
    "RateLimitedError",
    "ResponseValidationError",
    "RetryConfig",
    "RunInterrupted",
    "Sample",
    "SamCheckpointError",
    "Secret",
    "Segment",
    "SegmentRequest",
    "SegmentationBackend",
    "SegmentationClient",
    "SegmentationLabeler",
    "SegmentationResult",
    "StaticToken",
    "TextBoxDetector",
    "TokenProvider",
    "ValidationError",
    "__version__",
    "collate_fn",
    "decode_masks",
    "export_labels",
    "read_labels",
    "samples_from_annotations",
    "samples_from_coco",
    "samples_from_files",
    "samples_from_records",
    "samples_from_text",
    "target_size",
]
