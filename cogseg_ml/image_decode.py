"""Image bytes to pixels: header checks before decoding, and one decoding rule for every product.

The dataset, the labeler and the store decode through here, so images and masks agree.

**Pixel rule.** Every image becomes 8-bit RGB, ``(3, H, W)`` uint8:

* 8-bit grey (``L``, ``1``) is copied to the three channels; a palette (``P``) gives its colours;
  CMYK, YCbCr and other colour spaces are converted by Pillow.
* Alpha (``LA``, ``RGBA``, ``PA``, a PNG ``tRNS``) is dropped, not composited: the colour
  channels are kept as stored.
* 16 bits per channel (16-bit PNGs: Pillow's ``I;16``, 48/64-bit RGB(A)) keep the high byte,
  ``value >> 8``; 32-bit integer images (``I``) are clipped to 0..65535 first, then likewise.
* 32-bit float images (``F``) are read as intensities in [0, 1]: clipped, times 255, rounded.

**Orientation rule.** Pixels are in the *stored frame*: EXIF orientation is never applied, to
images, to masks or to prompt coordinates (normalized coordinates are fractions of the stored
width and height). CDF's API documentation does not say whether its segmentation service applies
EXIF orientation before reading normalized prompt coordinates; the stored frame is what the
emulator segments and what every decoder here returns, so images and masks always agree with
each other. A file whose EXIF orientation is not 1 (a viewer shows it turned or mirrored) gets
one warning per file and process (logger ``cogseg_ml.image_decode``), and
:func:`check_declared_size` warns when a COCO file's width and height disagree with the header
(swapped ones mean a tool that applies EXIF orientation wrote the COCO file).
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import threading
import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cogseg_ml.errors import FileValidationError
from cogseg_ml.prompts import FileRef

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["DEFAULT_MAX_PIXELS", "ImageHeader", "check_declared_size", "decode_array",
           "decode_array_reduced",
           "decode_image", "decode_image_at_size", "image_size", "read_header"]

_log = logging.getLogger("cogseg_ml.image_decode")

#: Refuse images above this many pixels before decoding (decompression bombs); PIL's default.
DEFAULT_MAX_PIXELS = 178_956_970
#: ``warnings.catch_warnings`` swaps process-wide state: never from two threads at once.
_WARNINGS_LOCK = threading.Lock()

#: EXIF orientation tag values and what a viewer that applies them does.
ORIENTATIONS = {
    1: "as stored",
    2: "mirrored left to right",
    3: "turned 180 degrees",
    4: "mirrored top to bottom",
    5: "transposed (mirrored across the top-left to bottom-right diagonal)",
    6: "turned 90 degrees clockwise",
    7: "transversed (mirrored across the top-right to bottom-left diagonal)",
    8: "turned 90 degrees counter-clockwise",
}
_EXIF_ORIENTATION = 0x0112
#: Formats and Pillow modes torchvision's decoders read exactly as the rule above says (the
#: 16-bit ones then keep their high byte); anything else is decoded by Pillow.
_TORCHVISION_MODES = {
    "PNG": {"1", "L", "P", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I;16N"},
    "JPEG": {"L", "RGB"},
}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_WARNED: set[Hashable] = set()  # files warned about (orientation, declared size), per process
_WARNED_LOCK = threading.Lock()
_WARNED_MAX = 100_000


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding the pixels."""

    height: int
    width: int
    format: str | None  # Pillow's format name: "PNG", "JPEG", ...
    mode: str  # Pillow's mode: "RGB", "L", "I;16", ...
    orientation: int = 1  # EXIF orientation (1 when absent)


def _who(ref: FileRef | None) -> str:
    return ref.describe() if ref else "image"


def read_header(data: bytes, ref: FileRef | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Size, format, mode and EXIF orientation from the header, without decoding the pixels.

    Raises:
        FileValidationError: not an image, or more than ``max_pixels`` pixels.
    """
    from PIL import Image, UnidentifiedImageError

    fast = _jpeg_header(data, max_pixels)
    if fast is not None:
        return fast
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                fmt, mode = img.format, img.mode
                orientation = _orientation(img, data)
    except Image.DecompressionBombError as exc:
        raise FileValidationError(f"file {_who(ref)} is over the limit of {max_pixels} pixels "
                                  f"({exc})", file=ref) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FileValidationError(f"file {_who(ref)} is not a readable image ({exc})",
                                  file=ref) from None
    if width * height > max_pixels:
        raise FileValidationError(
            f"file {_who(ref)} is {width}x{height} = {width * height} pixels, over the limit "
            f"of {max_pixels} (raise max_pixels if the image is trusted)", file=ref)
    return ImageHeader(height, width, fmt, mode, orientation)


#: JPEG frame header markers (SOF0..SOF15 less DHT, JPG and DAC), as Pillow reads them.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


def _jpeg_header(data: bytes, max_pixels: int) -> ImageHeader | None:
    """What Pillow's header reader says of a plain JPEG, read from its markers directly.

    Pillow parses every table of a file to open it (a quarter of a millisecond for a 640x480
    photo); the size and mode need only the frame header. This walks the markers up to the
    start of the scan and answers for the common layout: one 8-bit frame header of 1, 3 or 4
    components (Pillow's ``L``, ``RGB``, ``CMYK``), well-formed tables, at most one EXIF block
    (its orientation read by Pillow's own EXIF reader, as :func:`_orientation` does), nothing
    over ``max_pixels`` or Pillow's bomb limit. Anything else (no or several frame headers, an
    MPF block that may make it an MPO, XMP, a segment Pillow would find too short, padding,
    stray bytes, a truncated file) gives ``None`` and Pillow reads the header, so every answer
    is Pillow's.
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    pos, end = 2, len(data)
    frame: tuple[int, int, str] | None = None
    exif: bytes | None = None
    while True:
        if pos + 4 > end or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body, after = pos + 4, pos + 2 + length
        if length < 2 or after > end:
            return None
        if marker == 0xDA:  # start of scan: the header is over
            break
        if not _plain_segment(marker, data, body, after):
            return None
        if marker in _JPEG_SOF:
            if frame is not None or length < 8 or data[body] != 8:
                return None
            height, width = struct.unpack_from(">HH", data, body + 1)
            mode = {1: "L", 3: "RGB", 4: "CMYK"}.get(data[body + 5])
            if mode is None:
                return None
            frame = height, width, mode
        elif marker == 0xE1 and data.startswith(b"Exif\x00\x00", body):
            if exif is not None:
                return None  # Pillow joins several EXIF blocks: let it
            exif = data[body:after]
        pos = after
    if frame is None:
        return None
    height, width, mode = frame
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    pixels = width * height
    if not pixels or pixels > max_pixels or (limit is not None and pixels > limit):
        return None  # Pillow's errors and warnings, as for any other file
    orientation = 1
    if exif is not None:
        try:
            tags = Image.Exif()
            tags.load(exif)
            value = tags.get(_EXIF_ORIENTATION, 1)
        except Exception:  # Pillow decides what a damaged EXIF block means for the file
            return None
        try:
            orientation = int(value) if int(value) in ORIENTATIONS else 1
        except Exception:  # an unreadable tag is not the image's problem, as in _orientation
            orientation = 1
    return ImageHeader(height, width, "JPEG", mode, orientation)


def _plain_segment(marker: int, data: bytes, body: int, after: int) -> bool:
    """Whether a JPEG marker segment before the scan is one Pillow reads without a word: a
    table, a comment, an application block that neither makes the file something else (MPF:
    an MPO; XMP: an orientation) nor is too short for the fields Pillow reads from it."""
    size = after - body
    if marker in _JPEG_SOF or marker in (0xC4, 0xCC, 0xDD, 0xFE):
        return True
    if marker == 0xDB:  # quantization tables: Pillow refuses a short one
        at = body
        while at < after:
            at += 1 + 64 * (1 if data[at] < 16 else 2)
        return at == after
    if not 0xE0 <= marker <= 0xEF:
        return False  # standalone, reserved, hierarchical: unusual, Pillow reads those
    if marker == 0xE0 and data.startswith(b"JFIF", body):
        return size >= 7
    if marker == 0xE1:
        return not data.startswith(_XMP, body)
    if marker == 0xE2:
        return not data.startswith(b"MPF\x00", body) and not (
            data.startswith(b"ICC_PROFILE\x00", body) and size < 14)
    if marker == 0xEE and data.startswith(b"Adobe", body):
        return size >= 7
    return not (marker == 0xED and data.startswith(b"Photoshop 3.0\x00", body))  # Pillow's


def image_size(data: bytes, ref: FileRef | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` from the image header, without decoding the pixels.

    Raises:
        FileValidationError: not an image, or more than ``max_pixels`` pixels.
    """
    header = read_header(data, ref, max_pixels)
    return header.height, header.width


def _orientation(img: Any, data: bytes) -> int:
    """The EXIF orientation tag (1 when absent or unreadable), never decoding pixels.

    Pillow's ``getexif()`` decodes a whole PNG to look for an ``eXIf`` chunk after the image
    data, so PNG chunks are walked here instead.
    """
    from PIL import Image

    try:
        if img.format == "PNG":
            payload = _png_exif(data)
            if payload is None:
                return 1
            exif = Image.Exif()
            exif.load(payload)
        elif img.format in ("JPEG", "MPO", "WEBP", "TIFF"):
            exif = img.getexif()
        else:
            return 1
        value = exif.get(_EXIF_ORIENTATION, 1)
        return int(value) if int(value) in ORIENTATIONS else 1
    except Exception:  # a malformed EXIF block is not the image's problem: treat as absent
        return 1


def _png_exif(data: bytes) -> bytes | None:
    """The payload of a PNG's ``eXIf`` chunk (before or after the image data), if any."""
    pos = 8  # after the signature
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"eXIf":
            return data[pos + 8:pos + 8 + length]
        if kind == b"IEND":
            return None
        pos += 12 + length
    return None


def _warn_once(key: Hashable, message: str, *args: object) -> None:
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        if len(_WARNED) >= _WARNED_MAX:
            _WARNED.clear()
        _WARNED.add(key)
    _log.warning(message, *args)


def _file_key(ref: FileRef | None, data: bytes | None) -> Hashable:
    if ref is not None:
        return ref
    return hashlib.sha256(data or b"").hexdigest()


def warn_orientation(header: ImageHeader, ref: FileRef | None = None,
                     data: bytes | None = None) -> None:
    """Warn (once per file and process) that a file's EXIF orientation is not applied."""
    if header.orientation == 1:
        return
    _warn_once(("orientation", _file_key(ref, data)),
               "file %s has EXIF orientation %d (a viewer shows it %s); its pixels, masks and "
               "prompt coordinates are all in the stored frame (%dx%d, EXIF orientation is not "
               "applied): give prompts in that frame", _who(ref), header.orientation,
               ORIENTATIONS[header.orientation], header.width, header.height)


def check_declared_size(ref: FileRef | None, declared_hw: tuple[int, int],
                        decoded_hw: tuple[int, int]) -> bool:
    """Whether a declared ``(height, width)`` (e.g. a COCO image's) matches the image header.

    When they differ, warns once per file and process: with width and height swapped, the
    declaring tool applied EXIF orientation (its coordinates are in the turned frame, ours in
    the stored one); otherwise the declaration belongs to other content (a resized or replaced
    image). Prompts normalized by the declared size are then wrong for the stored image.
    """
    declared = (int(declared_hw[0]), int(declared_hw[1]))
    decoded = (int(decoded_hw[0]), int(decoded_hw[1]))
    if declared == decoded:
        return True
    if declared == decoded[::-1]:
        hint = ("width and height are swapped: an EXIF-aware tool wrote it (its coordinates "
                "are in the turned frame; ours are in the stored frame, EXIF orientation not "
                "applied)")
    else:
        hint = "the declaration does not belong to these bytes (resized or replaced image?)"
    _warn_once(("declared", _file_key(ref, None), declared, decoded),
               "file %s is declared %dx%d (width x height) but its header says %dx%d: %s; "
               "prompts normalized by the declared size are wrong", _who(ref), declared[1],
               declared[0], decoded[1], decoded[0], hint)
    return False


def decode_image(data: bytes, ref: FileRef | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode image bytes to a ``(3, H, W)`` uint8 tensor by the module's pixel rule.

    PNG and 8-bit JPEG use torchvision's decoders (16-bit PNGs then keep the high byte), other
    formats and modes Pillow. The header is checked first (never decode a bomb), and a file with
    an EXIF orientation other than 1 is warned about once (see the module's orientation rule).

    torchvision 0.29 marks its image codecs deprecated (in favour of TorchCodec, which needs
    FFmpeg); they still work, so the warning is silenced here and nowhere else.

    Raises:
        FileValidationError: not a readable image, over ``max_pixels``, or of a mode the rule
            does not cover.
    """
    import torch

    header = read_header(data, ref, max_pixels)
    warn_orientation(header, ref, data)
    if header.mode in _TORCHVISION_MODES.get(header.format or "", ()):
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_image as tv_decode

        try:
            with _WARNINGS_LOCK, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The image decoding and encoding",
                                        category=DeprecationWarning)
                out: torch.Tensor = tv_decode(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8),
                    mode=ImageReadMode.RGB, apply_exif_orientation=False)
        except RuntimeError as exc:
            raise FileValidationError(f"file {_who(ref)} could not be decoded ({exc})",
                                      file=ref) from None
        if out.dtype != torch.uint8:  # 16 bits per channel: the high byte
            out = (out.to(torch.int32) >> 8).to(torch.uint8)
        return out
    return torch.from_numpy(_pil_rgb(data, ref, header)).permute(2, 0, 1).contiguous()


def decode_image_at_size(data: bytes, out_h: int, out_w: int, ref: FileRef | None = None,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode image bytes straight to ``(3, out_h, out_w)`` uint8, by the module's pixel rule.

    The result is what :func:`decode_image` followed by ``torchvision.transforms.v2.Resize``
    gives (bilinear with antialiasing), without always decoding the full frame: a JPEG is
    decoded reduced in the DCT domain (Pillow's ``Image.draft``: a scale of 1/2, 1/4 or 1/8,
    the largest that keeps the decoded image no smaller than ``out_h x out_w``), then resized
    exactly to the target; other formats are decoded in full, then resized. The DCT
    reduction averages 8x8 blocks instead of filtering the full frame, so pixels differ from
    the full decode by a few levels near edges; sizes are always exact.

    ``max_pixels`` applies to the image's full size (from its header), as for
    :func:`decode_image`.

    Raises:
        FileValidationError: as :func:`decode_image`.
    """
    from torchvision.transforms.v2 import functional as tvf

    header = read_header(data, ref, max_pixels)
    if (header.height, header.width) == (out_h, out_w):
        return decode_image(data, ref, max_pixels)
    if header.format == "JPEG" and header.mode in ("L", "RGB", "CMYK", "YCbCr"):
        warn_orientation(header, ref, data)
        import torch

        pixels = torch.from_numpy(_pil_rgb(data, ref, header, draft=(out_w, out_h)))
        pixels = pixels.permute(2, 0, 1).contiguous()
    else:
        pixels = decode_image(data, ref, max_pixels)
    if (int(pixels.shape[-2]), int(pixels.shape[-1])) != (out_h, out_w):
        pixels = tvf.resize(pixels, [out_h, out_w], antialias=True)
    return pixels


def decode_array(data: bytes, ref: FileRef | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`decode_image` as an ``(H, W, 3)`` uint8 numpy array (for local models)."""
    return decode_image(data, ref, max_pixels).permute(1, 2, 0).numpy()


def decode_array_reduced(data: bytes, min_h: int, min_w: int, ref: FileRef | None = None,
                         max_pixels: int = DEFAULT_MAX_PIXELS
                         ) -> tuple[np.ndarray, tuple[int, int]]:
    """An ``(h, w, 3)`` uint8 array no smaller than ``min_h x min_w`` where the format allows a
    cheaper decode, and the image's full ``(H, W)`` from its header.

    For a model that resizes its input anyway (SAM: 1024 on the long side): a JPEG larger than
    the model's input is decoded reduced in the DCT domain (``Image.draft``, 1/2, 1/4 or 1/8,
    the largest reduction that keeps both sides at least the minimum), and the model's own
    resize does the rest. Other formats, and JPEGs not larger than the minimum, decode in full
    (:func:`decode_array`). Pixel rule, orientation rule and ``max_pixels`` as
    :func:`decode_image`.
    """
    header = read_header(data, ref, max_pixels)
    full = (header.height, header.width)
    if (header.format == "JPEG" and header.mode in ("L", "RGB", "CMYK", "YCbCr")
            and (header.height >= 2 * min_h and header.width >= 2 * min_w)):
        warn_orientation(header, ref, data)
        return _pil_rgb(data, ref, header, draft=(min_w, min_h)), full
    return decode_array(data, ref, max_pixels), full


def _pil_rgb(data: bytes, ref: FileRef | None, header: ImageHeader,
             draft: tuple[int, int] | None = None) -> np.ndarray:
    """Pillow's decode of one image, made ``(H, W, 3)`` uint8 by the module's pixel rule.

    ``draft`` (``(width, height)``) asks a JPEG decoder for a DCT-domain reduction no smaller
    than that size (``Image.draft``); other formats ignore it.
    """
    import numpy as np
    from PIL import Image

    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked already
            with Image.open(io.BytesIO(data)) as img:
                if draft is not None:
                    img.draft("RGB", draft)
                mode = img.mode
                if mode in _SIXTEEN_BIT:
                    values = np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8
                    grey = values.astype(np.uint8)
                elif mode == "F":
                    floats = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)
                    grey = np.rint(np.clip(floats, 0.0, 1.0) * 255).astype(np.uint8)
                elif mode in ("La", "PA"):
                    return np.array(np.asarray(img.convert("RGBA"))[..., :3])  # a writable copy
                else:
                    return np.array(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise FileValidationError(f"file {_who(ref)} could not be decoded as an RGB image "
                                  f"(mode {header.mode}: {exc})", file=ref) from None
    return np.repeat(grey[..., None], 3, axis=2)
