"""cogseg_ml: Cognite Data Fusion images plus prompts to training-ready segmentation masks.

The names below are the public surface; torch-dependent parts (the dataset) load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from cogseg_ml.api.client import AsyncSegmentationClient, SegmentationClient
from cogseg_ml.api.results import (
    ItemResult,
    JobOutcome,
    Segment,
    SegmentationResult,
    SegmentRequest,
)
from cogseg_ml.api.wire_schema import JobStatus
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
    ApiUnavailableError,
    AuthenticationError,
    CacheError,
    CacheVersionError,
    CogsegError,
    FileValidationError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    PromptValidationError,
    RateLimitedError,
    ResponseValidationError,
    ValidationError,
)
from cogseg_ml.prompts import Box, FileRef, InstanceId, Point, Prompt

__all__ = [
    "ApiError",
    "ApiUnavailableError",
    "AsyncSegmentationClient",
    "AuthenticationError",
    "Box",
    "CacheError",
    "CacheVersionError",
    "CdfConfig",
    "ClientCredentials",
    "CogsegError",
    "FileRef",
    "FileValidationError",
    "InstanceId",
    "ItemResult",
    "JobFailedError",
    "JobOutcome",
    "JobStatus",
    "JobTimeoutError",
    "NotFoundError",
    "Point",
    "PollConfig",
    "Prompt",
    "PromptValidationError",
    "RateLimitedError",
    "ResponseValidationError",
    "RetryConfig",
    "Secret",
    "Segment",
    "SegmentRequest",
    "SegmentationClient",
    "SegmentationResult",
    "StaticToken",
    "TokenProvider",
    "ValidationError",
    "__version__",
]
