"""Synthetic images with known ground-truth masks, for tests, benchmarks and the demo.

Each image has a flat background and a few flat-colour shapes (rectangles, ellipses, triangles)
that do not overlap, so every object's mask is known exactly. Prompts derived from the truth (a
tight box, an interior point) let tests compare segmentation against it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cogseg_ml.prompts import Box, Point

__all__ = ["SyntheticImage", "SyntheticObject", "encode_image", "make_dataset", "make_image"]

CATEGORIES = ("rectangle", "ellipse", "triangle")


@dataclass(frozen=True)
class SyntheticObject:
    """One shape: its category and exact mask ``(H, W)`` bool."""

    category: str
    mask: np.ndarray

    def box(self) -> Box:
        """The tight normalized box around the mask (pixel-corner aligned)."""
        h, w = self.mask.shape
        ys, xs = np.nonzero(self.mask)
        return Box.from_pixels(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, w, h)

    def interior_point(self) -> Point:
        """A foreground point deep inside the shape (largest distance to its boundary)."""
        from scipy import ndimage

        h, w = self.mask.shape
        dist = ndimage.distance_transform_edt(self.mask)
        r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return Point.from_pixels(c + 0.5, r + 0.5, w, h, label=1)


@dataclass(frozen=True)
class SyntheticImage:
    """An RGB image ``(H, W, 3)`` uint8 and its objects."""

    name: str
    pixels: np.ndarray
    objects: tuple[SyntheticObject, ...] = field(default_factory=tuple)

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.pixels.shape[1])


def _shape_mask(kind: str, h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = (xx + 0.5), (yy + 0.5)
    if kind == "rectangle":
        rect: np.ndarray = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        return rect
    if kind == "ellipse":
        a, b = (x1 - x0) / 2, (y1 - y0) / 2
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        return ((cx - mx) / a) ** 2 + ((cy - my) / b) ** 2 <= 1.0  # type: ignore[no-any-return]
    # triangle: apex top-centre, base along the bottom
    apex_x = (x0 + x1) / 2
    t = (cy - y0) / max(y1 - y0, 1)
    half = t * (x1 - x0) / 2
    return (cy >= y0) & (cy <= y1) & (np.abs(cx - apex_x) <= half)  # type: ignore[no-any-return]


def _distinct_colour(rng: np.random.Generator, used: list[np.ndarray]) -> np.ndarray:
    for _ in range(1000):
        c = rng.integers(0, 256, size=3)
        if all(np.abs(c - u).sum() > 150 for u in used):
            return c.astype(np.uint8)
    return rng.integers(0, 256, size=3).astype(np.uint8)


def make_image(
    seed: int, height: int = 480, width: int = 640, n_objects: int = 3, name: str | None = None
) -> SyntheticImage:
    """One image with up to ``n_objects`` non-overlapping flat shapes (deterministic in seed)."""
    rng = np.random.default_rng(seed)
    bg = _distinct_colour(rng, [])
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = bg
    occupied = np.zeros((height, width), dtype=bool)
    used = [bg.astype(np.int64)]
    objects: list[SyntheticObject] = []
    min_side = max(8, min(height, width) // 10)
    max_side = max(min_side + 1, min(height, width) // 2)
    for _ in range(n_objects * 20):
        if len(objects) == n_objects:
            break
        kind = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]
        bw, bh = (int(v) for v in rng.integers(min_side, max_side, size=2))
        x0 = int(rng.integers(1, max(2, width - bw - 1)))
        y0 = int(rng.integers(1, max(2, height - bh - 1)))
        mask = _shape_mask(kind, height, width, x0, y0, min(x0 + bw, width - 1),
                           min(y0 + bh, height - 1))
        if not mask.any():
            continue
        grown = mask.copy()  # keep a 2-pixel gap so shapes never touch
        grown[:-2] |= mask[2:]
        grown[2:] |= mask[:-2]
        grown[:, :-2] |= grown[:, 2:]
        grown[:, 2:] |= grown[:, :-2]
        if (grown & occupied).any():
            continue
        colour = _distinct_colour(rng, used)
        used.append(colour.astype(np.int64))
        pixels[mask] = colour
        occupied |= mask
        objects.append(SyntheticObject(category=kind, mask=mask))
    return SyntheticImage(name=name or f"synthetic_{seed:05d}.png", pixels=pixels,
                          objects=tuple(objects))


def encode_image(pixels: np.ndarray, fmt: Literal["png", "jpeg"] = "png",
                 quality: int = 95, exif_orientation: int | None = None) -> bytes:
    """PNG or JPEG bytes of an ``(H, W, 3)`` uint8 image.

    ``exif_orientation`` (1..8) writes that EXIF orientation tag; the pixels stay as given
    (the stored frame, which the emulator segments: it never applies EXIF orientation).
    """
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(pixels, mode="RGB")
    extra = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = int(exif_orientation)
        extra["exif"] = exif
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1, **extra)
    else:
        img.save(buf, format="JPEG", quality=quality, **extra)
    return buf.getvalue()


def make_dataset(n: int, seed: int = 0, height: int = 480, width: int = 640,
                 n_objects: int = 3) -> list[SyntheticImage]:
    """``n`` images named ``synthetic_00000.png`` ... (deterministic in seed)."""
    return [make_image(seed * 100_003 + i, height, width, n_objects, name=f"synthetic_{i:05d}.png")
            for i in range(n)]
