"""Image bytes to pixels: header checks before decoding, and one decoding rule for every product.

The dataset, the labeler and the store decode through here, so images and masks agree.
"""

from __future__ import annotations

import io
import threading
import warnings
from typing import TYPE_CHECKING

from cogseg_ml.errors import FileValidationError
from cogseg_ml.prompts import FileRef

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_MAX_PIXELS", "decode_image", "image_size"]

#: Refuse images above this many pixels before decoding (decompression bombs); PIL's default.
DEFAULT_MAX_PIXELS = 178_956_970
#: ``warnings.catch_warnings`` swaps process-wide state: never from two threads at once.
_WARNINGS_LOCK = threading.Lock()

def image_size(data: bytes, ref: FileRef | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` from the image header, without decoding the pixels.

    Raises:
        FileValidationError: not an image, or more than ``max_pixels`` pixels.
    """
    from PIL import Image, UnidentifiedImageError

    who = ref.describe() if ref else "image"
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
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
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The image decoding and encoding",
                                    category=DeprecationWarning)
            out: torch.Tensor = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                          mode=ImageReadMode.RGB)
        return out
    except RuntimeError as exc:
        who = ref.describe() if ref else "image"
        raise FileValidationError(f"file {who} could not be decoded ({exc})", file=ref) from None
