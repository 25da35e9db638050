"""Masks drawn over their image: whole-image overlays and one cropped thumbnail per mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cogseg_ml.coco_io import segmentation_rle
from cogseg_ml.errors import ValidationError
from cogseg_ml.mask_codec import decode

__all__ = ["PALETTE", "annotation_mask", "overlay", "thumbnail"]

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240]], dtype=np.float32)
#: the canvas a mask is drawn on when its image cannot be had
NO_PICTURE_GREY = 150
#: the brightness kept outside the mask in a thumbnail
OUTSIDE_DIM = 0.55


def overlay(pixels: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5,
            colours: Sequence[int] | None = None) -> np.ndarray:
    """Masks blended over an ``(H, W, 3)`` uint8 image, each in its own colour, outlines
    darkened.

    Args:
        pixels: the image.
        masks: ``(H, W)`` bool masks of the image's size.
        alpha: the colour's weight inside a mask.
        colours: a palette index per mask (default: the mask's position).
    """
    out = pixels.astype(np.float32).copy()
    for i, m in enumerate(masks):
        colour = PALETTE[(i if colours is None else colours[i]) % len(PALETTE)]
        out[m] = (1 - alpha) * out[m] + alpha * colour
        inner = np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
        out[m & ~inner] = colour * 0.6
    result: np.ndarray = out.clip(0, 255).astype(np.uint8)
    return result


def annotation_mask(ann: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """The ``(height, width)`` bool mask of a COCO annotation (RLE, compressed or not, or
    polygons in pixels; read by :func:`cogseg_ml.coco_io.segmentation_rle`).

    Raises:
        ValidationError: the segmentation is neither, or its size is not the image's.
    """
    seg = ann.get("segmentation")
    if isinstance(seg, Mapping):
        size = seg.get("size")
        if not isinstance(size, list) or [int(v) for v in size] != [height, width]:
            raise ValidationError(f"annotation {ann.get('id')}: its mask is {size}, its image "
                                  f"{height}x{width}; is the labels file consistent?")
    elif isinstance(seg, list):
        if not all(isinstance(p, list) and len(p) % 2 == 0 for p in seg):
            raise ValidationError(f"annotation {ann.get('id')}: a polygon is a flat list of "
                                  "x, y pixel coordinates")
    else:
        raise ValidationError(f"annotation {ann.get('id')} has no segmentation (RLE or polygons)")
    mask: np.ndarray = decode([segmentation_rle(seg, height, width)])[0]
    return mask


def _crop_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` around the mask, widened by ``margin`` of its larger side."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, h, 0, w
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    pad = max(8, int(round(margin * max(y1 - y0, x1 - x0))))
    return max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)


def thumbnail(pixels: np.ndarray | None, mask: np.ndarray, *, max_side: int = 256,
              colour: int = 0, margin: float = 0.25) -> Any:
    """A PIL image: the region around one mask, the mask drawn over it.

    Args:
        pixels: the ``(H, W, 3)`` uint8 image, or ``None`` to draw the mask on grey.
        mask: the ``(H, W)`` bool mask.
        max_side: the thumbnail's larger side at most (small crops are enlarged up to it,
            pixel for pixel, so thin masks stay visible).
        colour: the palette index to draw the mask in.
        margin: context kept around the mask, as a share of its larger side.
    """
    from PIL import Image

    y0, y1, x0, x1 = _crop_box(mask, margin)
    crop_mask = np.ascontiguousarray(mask[y0:y1, x0:x1])
    if pixels is None:
        crop = np.full(crop_mask.shape + (3,), NO_PICTURE_GREY, dtype=np.uint8)
    else:  # the context dimmed, so the mask stands out
        crop = pixels[y0:y1, x0:x1].astype(np.float32)
        crop[~crop_mask] *= OUTSIDE_DIM
        crop = crop.astype(np.uint8)
    img = Image.fromarray(overlay(crop, [crop_mask], alpha=0.45, colours=[colour]))
    scale = max_side / max(img.width, img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if scale < 1:
        img = img.resize(size, Image.Resampling.LANCZOS)
    elif scale >= 2:
        whole = int(scale)
        img = img.resize((img.width * whole, img.height * whole), Image.Resampling.NEAREST)
    return img
