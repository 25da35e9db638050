"""The pixel rule (every image becomes 8-bit RGB) and the orientation rule (the stored frame)."""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cogseg_ml import image_decode as imd
from cogseg_ml.emulator.synthetic_images import encode_image
from cogseg_ml.prompts import FileRef

LOGGER = "cogseg_ml.image_decode"


def pil_bytes(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_16bit(values: np.ndarray, colour_type: int, extra_after_idat: bytes = b"") -> bytes:
    """A PNG of 16 bits per channel written from numpy (Pillow cannot write 48/64-bit ones)."""
    h, w = values.shape[:2]
    rows = values.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(h))
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + extra_after_idat + _chunk(b"IEND", b""))


def as_hwc(t: torch.Tensor) -> np.ndarray:
    assert t.dtype == torch.uint8 and t.ndim == 3 and t.shape[0] == 3
    return t.permute(1, 2, 0).numpy()


rng = np.random.default_rng(3)


def test_16bit_grey_png_keeps_the_high_byte() -> None:
    values = rng.integers(0, 65536, size=(12, 17), dtype=np.uint16)
    data = pil_bytes(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = as_hwc(imd.decode_image(data))
    assert out.shape == (12, 17, 3)
    for c in range(3):
        assert np.array_equal(out[..., c], (values >> 8).astype(np.uint8))


@pytest.mark.parametrize("colour_type,channels", [(2, 3), (6, 4), (0, 1), (4, 2)])
def test_16bit_colour_and_alpha_pngs_keep_the_high_byte(colour_type: int, channels: int
                                                        ) -> None:
    values = rng.integers(0, 65536, size=(9, 11, channels), dtype=np.uint16)
    out = as_hwc(imd.decode_image(png_16bit(values, colour_type)))
    high = (values >> 8).astype(np.uint8)
    colour = high[..., :3] if channels >= 3 else np.repeat(high[..., :1], 3, axis=2)
    assert np.array_equal(out, colour)  # alpha dropped, never composited
    assert np.array_equal(imd.decode_array(png_16bit(values, colour_type)), colour)


def test_palette_grey_and_alpha_modes() -> None:
    rgb = rng.integers(0, 256, size=(8, 10, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).convert("P")
    expect = np.asarray(pal.convert("RGB"))
    assert np.array_equal(as_hwc(imd.decode_image(pil_bytes(pal))), expect)
    assert np.array_equal(as_hwc(imd.decode_image(pil_bytes(pal, transparency=0))), expect)

    grey = rng.integers(0, 256, size=(8, 10), dtype=np.uint8)
    out = as_hwc(imd.decode_image(pil_bytes(Image.fromarray(grey))))
    assert np.array_equal(out, np.repeat(grey[..., None], 3, axis=2))

    la = rng.integers(0, 256, size=(8, 10, 2), dtype=np.uint8)
    la[0, 0, 1] = 0  # a fully transparent pixel keeps its stored colour
    out = as_hwc(imd.decode_image(pil_bytes(Image.fromarray(la, "LA"))))
    assert np.array_equal(out, np.repeat(la[..., :1], 3, axis=2))

    rgba = rng.integers(0, 256, size=(8, 10, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    out = as_hwc(imd.decode_image(pil_bytes(Image.fromarray(rgba, "RGBA"))))
    assert np.array_equal(out, rgba[..., :3])


def test_32bit_integer_and_float_images() -> None:
    ints = rng.integers(-1000, 200_000, size=(6, 7), dtype=np.int32)
    data = pil_bytes(Image.fromarray(ints), "TIFF")
    assert imd.read_header(data).mode == "I"
    out = as_hwc(imd.decode_image(data))
    assert np.array_equal(out[..., 0], (np.clip(ints, 0, 65535) >> 8).astype(np.uint8))

    floats = rng.uniform(-0.5, 1.5, size=(6, 7)).astype(np.float32)
    data = pil_bytes(Image.fromarray(floats), "TIFF")
    assert imd.read_header(data).mode == "F"
    out = as_hwc(imd.decode_image(data))
    expect = np.rint(np.clip(floats, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(out[..., 2], expect)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.fromarray(rng.integers(0, 256, size=(8, 8, 4), dtype=np.uint8), "CMYK")
    data = pil_bytes(cmyk, "JPEG", quality=95)
    out = as_hwc(imd.decode_image(data))
    assert out.shape == (8, 8, 3)
    assert np.array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def stored_pixels() -> np.ndarray:
    px = np.zeros((20, 30, 3), dtype=np.uint8)  # wider than tall in the stored frame
    px[2:6, 3:12] = (250, 10, 10)
    return px


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_exif_orientation_is_not_applied_and_is_warned_once(
        fmt: str, caplog: pytest.LogCaptureFixture) -> None:
    px = stored_pixels()
    data = encode_image(px, fmt, exif_orientation=6)  # type: ignore[arg-type]
    header = imd.read_header(data)
    assert (header.height, header.width, header.orientation) == (20, 30, 6)
    ref = FileRef(external_id=f"rotated.{fmt}")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        first = imd.decode_image(data, ref)
        again = imd.decode_image(data, ref)
    out = as_hwc(first)
    assert out.shape == (20, 30, 3) and torch.equal(first, again)
    if fmt == "png":
        assert np.array_equal(out, px)
    else:  # JPEG is lossy: the frame is what matters (not turned: the red patch stays put)
        assert np.abs(out.astype(int) - px.astype(int)).mean() < 8
        assert (out[3:5, 5:10, 0] > 180).all() and (out[10:, :, 0] < 60).all()
    warned = [r for r in caplog.records if r.name == LOGGER]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    msg = warned[0].getMessage()
    assert "rotated" in msg and "orientation 6" in msg and "stored frame" in msg


def test_plain_images_are_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        imd.decode_image(encode_image(stored_pixels()), FileRef(external_id="plain.png"))
        imd.decode_image(encode_image(stored_pixels(), exif_orientation=1),
                         FileRef(external_id="upright.png"))
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_png_exif_after_the_image_data_is_read_without_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    payload = exif.tobytes()
    data = png_16bit(rng.integers(0, 65536, size=(5, 4, 3), dtype=np.uint16), 2,
                     extra_after_idat=_chunk(b"eXIf", payload))

    def no_decoding(self: object) -> None:
        raise AssertionError("the header check decoded pixels")

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    header = imd.read_header(data)
    assert (header.height, header.width, header.orientation) == (5, 4, 8)
    assert imd.image_size(data) == (5, 4)


def test_check_declared_size(caplog: pytest.LogCaptureFixture) -> None:
    ref = FileRef(external_id="declared.jpg")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert imd.check_declared_size(ref, (20, 30), (20, 30))
        assert not caplog.records
        assert not imd.check_declared_size(ref, (30, 20), (20, 30))
        assert not imd.check_declared_size(ref, (30, 20), (20, 30))  # once per file
        assert not imd.check_declared_size(ref, (10, 15), (20, 30))
    msgs = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(msgs) == 2
    assert "swapped" in msgs[0] and "EXIF-aware" in msgs[0] and "30x20" in msgs[0]
    assert "does not belong" in msgs[1]


# --- JPEG headers read from the markers: Pillow's answer, without Pillow opening the file -----

def jpeg_of(mode: str = "RGB", **save: object) -> bytes:
    channels = {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    values = rng.integers(0, 256, size=(21, 34, channels), dtype=np.uint8)
    img = Image.fromarray(values[..., 0] if channels == 1 else values, mode)
    return pil_bytes(img, "JPEG", **save)


def with_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """``data`` with one more marker segment right after the start of image."""
    return (data[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
            + data[2:])


def orientation_exif(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return b"Exif\x00\x00" + exif.tobytes()


def pillow_header(data: bytes) -> tuple[int, int, str | None, str, int]:
    """What Pillow itself says: size, format, mode, EXIF orientation (1 when absent)."""
    with Image.open(io.BytesIO(data)) as img:
        value = img.getexif().get(0x0112, 1)
        return img.height, img.width, img.format, img.mode, value if value in imd.ORIENTATIONS \
            else 1


def as_tuple(h: imd.ImageHeader) -> tuple[int, int, str | None, str, int]:
    return h.height, h.width, h.format, h.mode, h.orientation


PLAIN_JPEGS = {
    "rgb": lambda: jpeg_of(quality=90),
    "progressive": lambda: jpeg_of(progressive=True, optimize=True),
    "grey": lambda: jpeg_of("L"),
    "cmyk": lambda: jpeg_of("CMYK"),
    "444": lambda: jpeg_of(subsampling=0, quality=95),
    "restart-markers": lambda: jpeg_of(restart_marker_blocks=1),
    "icc-comment-dpi": lambda: jpeg_of(icc_profile=b"p" * 300, comment=b"hello", dpi=(300, 300)),
    "exif-turned": lambda: jpeg_of(exif=orientation_exif(6)),
    "exif-upright": lambda: jpeg_of(exif=orientation_exif(1)),
    "exif-out-of-range": lambda: jpeg_of(exif=orientation_exif(9)),
}


@pytest.mark.parametrize("kind", sorted(PLAIN_JPEGS))
def test_plain_jpeg_headers_are_pillows_without_pillow_opening_them(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = PLAIN_JPEGS[kind]()
    expected = pillow_header(data)

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("Pillow opened a plain JPEG")

    monkeypatch.setattr("PIL.Image.open", no_open)
    assert as_tuple(imd.read_header(data)) == expected
    assert imd.image_size(data) == expected[:2]


UNUSUAL_JPEGS = {
    "xmp-orientation": lambda: jpeg_of(
        xmp=b'<x:xmpmeta><tiff:Orientation>6</tiff:Orientation></x:xmpmeta>'),
    "mpo": lambda: pil_bytes(Image.fromarray(np.zeros((9, 8, 3), np.uint8)), "MPO",
                             save_all=True,
                             append_images=[Image.fromarray(np.ones((9, 8, 3), np.uint8))]),
    "two-exif-blocks": lambda: with_segment(jpeg_of(exif=orientation_exif(3)), 0xE1,
                                            orientation_exif(8)),
    "fill-bytes": lambda: jpeg_of()[:2] + b"\xff" + jpeg_of()[2:],
    "exif-damaged": lambda: with_segment(jpeg_of(), 0xE1, b"Exif\x00\x00MM\x00*garbage"),
}


@pytest.mark.parametrize("kind", sorted(UNUSUAL_JPEGS))
def test_unusual_jpegs_are_read_by_pillow(kind: str) -> None:
    data = UNUSUAL_JPEGS[kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's word on a damaged EXIF block
        assert as_tuple(imd.read_header(data)) == pillow_header(data)


REFUSED_JPEGS = {
    "truncated-header": lambda: jpeg_of()[:40],
    "short-quantization-table": lambda: with_segment(jpeg_of(), 0xDB, b"\x00" + b"\x01" * 10),
    "short-jfif": lambda: with_segment(jpeg_of(), 0xE0, b"JFIF\x00"),
    "short-adobe": lambda: with_segment(jpeg_of(), 0xEE, b"Adobe\x00"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED_JPEGS))
def test_jpegs_pillow_refuses_are_refused(kind: str) -> None:
    data = REFUSED_JPEGS[kind]()
    with pytest.raises(Exception):  # noqa: B017 - Pillow's own reason, whatever its type
        pillow_header(data)
    with pytest.raises(imd.FileValidationError, match="not a readable image"):
        imd.read_header(data)


def test_the_pixel_limit_applies_to_jpegs_read_from_their_markers() -> None:
    data = jpeg_of()
    with pytest.raises(imd.FileValidationError, match="over the limit of 700"):
        imd.read_header(data, max_pixels=700)  # 34 x 21 = 714 pixels


@pytest.mark.parametrize("save", [{"quality": 90}, {"progressive": True}, {"subsampling": 0},
                                  {"subsampling": 1, "quality": 50}], ids=str)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_pixels_are_pillows(mode: str, save: dict[str, object]) -> None:
    """8-bit JPEGs are decoded by torchvision (libjpeg-turbo): the very pixels Pillow gives."""
    data = jpeg_of(mode, **save)
    expect = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(as_hwc(imd.decode_image(data)), expect)
