"""Turning API results into cache entries, and images into tensors (shared by the dataset
and the labeler)."""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from cogseg_ml.api.results import SegmentationResult
from cogseg_ml.cache.mask_cache import CachedResult, CachedSegment
from cogseg_ml.errors import FileValidationError
from cogseg_ml.prompts import FileRef

if TYPE_CHECKING:
    import torch

__all__ = ["API_BACKEND", "DEFAULT_MAX_PIXELS", "cached_from_result", "decode_image",
           "image_size"]

API_BACKEND = "cdf-api"
#: Refuse images above this many pixels before decoding (decompression bombs); PIL's default.
DEFAULT_MAX_PIXELS = 178_956_970


def cached_from_result(result: SegmentationResult, height: int, width: int, *,
                       backend: str = API_BACKEND, model_version: str = "") -> CachedResult:
    """The cache entry for a finished job: every segment as RLE at the image's size.

    Raises:
        JobFailedError: the job's item failed.
    """
    item = result.item
    segs = tuple(CachedSegment(s.score, s.to_rle(height, width)) for s in item.segments)
    return CachedResult(segments=segs, height=height, width=width, backend=backend,
                        model_version=model_version, job_id=result.job_id)


def image_size(data: bytes, ref: FileRef | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` from the image header, without decoding the pixels.

    Raises:
        FileValidationError: not an image, or more than ``max_pixels`` pixels.
    """
    from PIL import Image, UnidentifiedImageError

    who = ref.describe() if ref else "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:
        raise FileValidationError(f"file {who} is over the limit of {max_pixels} pixels "
                                  f"({exc})", file=ref) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FileValidationError(f"file {who} is not a readable image ({exc})",
                                  file=ref) from None
    if width * height > max_pixels:
        raise FileValidationError(
            f"file {who} is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (raise max_pixels if the image is trusted)", file=ref)
    return height, width


def decode_image(data: bytes, ref: FileRef | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode PNG/JPEG bytes to a ``(3, H, W)`` uint8 tensor with torchvision's decoders.

    torchvision 0.29 marks its image codecs deprecated (in favour of TorchCodec, which needs
    FFmpeg); they still work, so the warning is silenced here and nowhere else.
    """
    import torch
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    image_size(data, ref, max_pixels)  # header check first: never decode a bomb
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The image decoding and encoding",
                                    category=DeprecationWarning)
            out: torch.Tensor = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                          mode=ImageReadMode.RGB)
        return out
    except RuntimeError as exc:
        who = ref.describe() if ref else "image"
        raise FileValidationError(f"file {who} could not be decoded ({exc})", file=ref) from None

