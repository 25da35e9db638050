"""cogseg_ml: Cognite Data Fusion images plus prompts to training-ready segmentation masks.

``import cogseg_ml`` is light: it loads none of httpx, numpy, pydantic or torch. Each name
below comes from its module the first time it is used (``cogseg_ml.CdfConfig`` or
``from cogseg_ml import CdfConfig``). Everything else stays in its module: the whole error
tree in :mod:`cogseg_ml.errors`, backend authoring in :mod:`cogseg_ml.backends`, the mask
cache in :mod:`cogseg_ml.cache`, masks and polygons in :mod:`cogseg_ml.mask_codec`.

Talking to CDF
    SegmentationClient        Blocking client: segmentation jobs, file metadata, annotations.
    AsyncSegmentationClient   The same client for asyncio.
    SegmentRequest            One job to run: a file, one prompt set and your tag.
    SegmentationResult        A finished job: status, timings and each file's segments.

Files and prompts
    FileRef                   A CDF file by id, external id or instance id.
    InstanceId                A data-modeling instance id (space + external id).
    Point                     A point prompt: normalized x, y and a foreground/background label.
    Box                       A box prompt in normalized coordinates.
    Prompt                    One prompt set for one job: points and/or a box.

Configuration
    CdfConfig                 Everything a client needs to talk to one CDF project.
    ClientCredentials         OAuth 2.0 client credentials against the IdP's token URL.
    StaticToken               A ready bearer token, never refreshed.
    TokenProvider             A callable returning a fresh bearer token.
    RetryConfig               Retry budgets and how outages and stuck jobs are recognized.

Samples
    Sample                    One image and its instances.
    Instance                  One object to segment: its prompt and optional category.
    samples_from_coco         Samples from a COCO detection file (boxes become prompts).
    samples_from_annotations  Samples from CDF images.ObjectDetection annotations with a box.
    samples_from_records      Samples from plain records, grouped per file.
    samples_from_files        Samples for the segmentable files a CDF file filter lists.
    samples_from_text         Samples from class names, through a text-to-box detector.

Training data
    CdfSegmentationDataset    Map-style torch dataset of CDF images and their instance masks.
    collate_fn                Batches of (images, targets) as tuples, torchvision style.
    decode_masks              Turns each target's CompactMasks into dense masks on a device.
    CompactMasks              One sample's masks as run lengths, decoded on any device.

Labeling and export
    SegmentationLabeler       Labels samples into the mask cache, then writes COCO.
    export_labels             Exports a labels file to COCO, YOLO or Label Studio.
    read_labels               Reads a COCO labels file that cogseg_ml wrote.
    MaskCache                 The on-disk cache of masks that labeling and the dataset share.

Backends (where masks come from)
    SegmentationBackend       The protocol every backend follows: jobs in, scored masks out.
    ApiBackend                Masks from CDF's Vision API.
    LocalSamBackend           Masks from a local Segment-Anything model (SAM 2.1, SAM).
    FallbackBackend           A primary backend with a fallback behind a circuit breaker.
    MaskResult                A backend's answer to one job: scored masks and provenance.
    ScoredMask                One candidate mask: its score and COCO RLE.

Detection
    TextBoxDetector           Boxes for class names, from an open-vocabulary detector.

Errors (the whole tree is in cogseg_ml.errors)
    CogsegError               Root of every error cogseg_ml raises on purpose.
    ValidationError           Input that cannot be used as it is (also a ValueError).
    ApiError                  The API answered with an error status.
    AuthenticationError       Credentials refused (401/403), or no token could be had.
    ApiUnavailableError       CDF cannot be reached or keeps failing.
    CdfUnreachableError       Nothing answers at CDF's address (or its token endpoint).
    ApiRetiredError           CDF answers, but the Vision API's segment endpoint is gone.
    JobFailedError            A segmentation job ended Failed.
    JobTimeoutError           A job did not finish within the caller's timeout.
    CacheError                The mask cache cannot be opened or used.
    MaskBudgetError           A sample's dense masks would exceed the dataset's mask budget.
    ImageBudgetError          A returned image would exceed the dataset's image budget.
    RunInterrupted            A run stopped by SIGINT/SIGTERM; finished work is kept.

Version
    __version__               The package version.
"""

from __future__ import annotations

import typing

from cogseg_ml.version import __version__

if typing.TYPE_CHECKING:
    from cogseg_ml.api.client import AsyncSegmentationClient, SegmentationClient
    from cogseg_ml.api.results import SegmentationResult, SegmentRequest
    from cogseg_ml.backends.api_backend import ApiBackend
    from cogseg_ml.backends.base import MaskResult, ScoredMask, SegmentationBackend
    from cogseg_ml.backends.fallback import FallbackBackend
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.cache.mask_cache import MaskCache
    from cogseg_ml.coco_io import read_labels
    from cogseg_ml.config import (
        CdfConfig,
        ClientCredentials,
        RetryConfig,
        StaticToken,
        TokenProvider,
    )
    from cogseg_ml.dataset import CdfSegmentationDataset, collate_fn
    from cogseg_ml.detect.text_boxes import TextBoxDetector
    from cogseg_ml.errors import (
        ApiError,
        ApiRetiredError,
        ApiUnavailableError,
        AuthenticationError,
        CacheError,
        CdfUnreachableError,
        CogsegError,
        JobFailedError,
        JobTimeoutError,
        RunInterrupted,
        ValidationError,
    )
    from cogseg_ml.exports import export_labels
    from cogseg_ml.labeler import SegmentationLabeler
    from cogseg_ml.masks_at_size import (
        CompactMasks,
        ImageBudgetError,
        MaskBudgetError,
        decode_masks,
    )
    from cogseg_ml.prompts import Box, FileRef, InstanceId, Point, Prompt
    from cogseg_ml.samples import (
        Instance,
        Sample,
        samples_from_annotations,
        samples_from_coco,
        samples_from_records,
    )
    from cogseg_ml.samples.file_listing import samples_from_files
    from cogseg_ml.samples.from_text import samples_from_text

# Where each public name is defined; it is imported from there on first use.
_SOURCES: dict[str, tuple[str, ...]] = {
    "cogseg_ml.api.client": ("AsyncSegmentationClient", "SegmentationClient"),
    "cogseg_ml.api.results": ("SegmentationResult", "SegmentRequest"),
    "cogseg_ml.backends.api_backend": ("ApiBackend",),
    "cogseg_ml.backends.base": ("MaskResult", "ScoredMask", "SegmentationBackend"),
    "cogseg_ml.backends.fallback": ("FallbackBackend",),
    "cogseg_ml.backends.local_sam": ("LocalSamBackend",),
    "cogseg_ml.cache.mask_cache": ("MaskCache",),
    "cogseg_ml.coco_io": ("read_labels",),
    "cogseg_ml.config": ("CdfConfig", "ClientCredentials", "RetryConfig", "StaticToken",
                         "TokenProvider"),
    "cogseg_ml.dataset": ("CdfSegmentationDataset", "collate_fn"),
    "cogseg_ml.detect.text_boxes": ("TextBoxDetector",),
    "cogseg_ml.errors": ("ApiError", "ApiRetiredError", "ApiUnavailableError",
                         "AuthenticationError", "CacheError", "CdfUnreachableError",
                         "CogsegError", "JobFailedError", "JobTimeoutError", "RunInterrupted",
                         "ValidationError"),
    "cogseg_ml.exports": ("export_labels",),
    "cogseg_ml.samples.file_listing": ("samples_from_files",),
    "cogseg_ml.labeler": ("SegmentationLabeler",),
    "cogseg_ml.masks_at_size": ("CompactMasks", "ImageBudgetError", "MaskBudgetError",
                                "decode_masks"),
    "cogseg_ml.prompts": ("Box", "FileRef", "InstanceId", "Point", "Prompt"),
    "cogseg_ml.samples": ("Instance", "Sample", "samples_from_annotations", "samples_from_coco",
                          "samples_from_records"),
    "cogseg_ml.samples.from_text": ("samples_from_text",),
}
_LAZY = {name: module for module, names in _SOURCES.items() for name in names}

# Names the root exported before it was curated: still served, with a DeprecationWarning
# that names the module to import them from.
_MOVED = {
    "CacheKey": "cogseg_ml.cache.cache_keys",
    "CacheVersionError": "cogseg_ml.errors",
    "CachedResult": "cogseg_ml.cache.mask_cache",
    "CachedSegment": "cogseg_ml.cache.mask_cache",
    "DetectorCheckpointError": "cogseg_ml.errors",
    "ExportReport": "cogseg_ml.exports",
    "FileValidationError": "cogseg_ml.errors",
    "ItemResult": "cogseg_ml.api.results",
    "JobOutcome": "cogseg_ml.api.results",
    "ImageStore": "cogseg_ml.cache.image_store",
    "JobStatus": "cogseg_ml.api.wire_schema",
    "LabelingReport": "cogseg_ml.labeler",
    "NotFoundError": "cogseg_ml.errors",
    "PollConfig": "cogseg_ml.config",
    "PromptValidationError": "cogseg_ml.errors",
    "RateLimitedError": "cogseg_ml.errors",
    "ResponseValidationError": "cogseg_ml.errors",
    "SamCheckpointError": "cogseg_ml.errors",
    "Segment": "cogseg_ml.api.results",
    "Secret": "cogseg_ml.config",
    "target_size": "cogseg_ml.masks_at_size",
}

if not typing.TYPE_CHECKING:  # type checkers read the imports above; at run time names load here

    def __getattr__(name: str) -> object:
        import importlib

        module = _LAZY.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
            globals()[name] = value  # later lookups skip this hook
            return value
        module = _MOVED.get(name)
        if module is not None:
            import warnings

            warnings.warn(f"cogseg_ml.{name} is no longer exported from the package root: "
                          f"import it from {module}", DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(module), name)
        raise AttributeError(f"module 'cogseg_ml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ApiBackend",
    "ApiError",
    "ApiRetiredError",
    "ApiUnavailableError",
    "AsyncSegmentationClient",
    "AuthenticationError",
    "Box",
    "CacheError",
    "CdfConfig",
    "CdfSegmentationDataset",
    "CdfUnreachableError",
    "ClientCredentials",
    "CogsegError",
    "CompactMasks",
    "FallbackBackend",
    "FileRef",
    "ImageBudgetError",
    "Instance",
    "InstanceId",
    "JobFailedError",
    "JobTimeoutError",
    "LocalSamBackend",
    "MaskBudgetError",
    "MaskCache",
    "MaskResult",
    "Point",
    "Prompt",
    "RetryConfig",
    "RunInterrupted",
    "Sample",
    "ScoredMask",
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
]
