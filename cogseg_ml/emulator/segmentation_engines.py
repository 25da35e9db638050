"""Segmentation engines behind the emulator: prompts in, scored masks out.

The default, :class:`RegionGrowingEngine`, is a classical interactive segmentation: it grows
the region of pixels whose colour is close to the foreground seeds' (or, with a box alone,
far from the colour of the box's border), keeps the 4-connected components that hold a seed,
and stays inside the box. It is exact on flat-colour synthetic shapes and plausible on photos.

Engines segment the stored pixel frame: the emulator decodes a file without applying its EXIF
orientation, and normalized prompt coordinates are fractions of the stored width and height
(the rule of :mod:`cogseg_ml.image_decode`, which the dataset's images and masks follow too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import ndimage

from cogseg_ml.prompts import Box, Point

__all__ = ["EngineSegment", "RegionGrowingEngine", "SamEngine", "SegmentationEngine"]


@dataclass(frozen=True)
class EngineSegment:
    """One candidate: a score in [0, 1] and an ``(H, W)`` bool mask."""

    score: float
    mask: np.ndarray


@runtime_checkable
class SegmentationEngine(Protocol):
    """What the emulator needs from a segmentation model."""

    name: str

    def segment(self, image: np.ndarray, points: Sequence[Point],
                box: Box | None) -> list[EngineSegment]:
        """Segment ``image`` (``(H, W, 3)`` uint8 RGB, the stored frame) from normalized
        prompts."""
        ...


def _pixel(p: Point, w: int, h: int) -> tuple[int, int]:
    return min(int(p.y * h), h - 1), min(int(p.x * w), w - 1)


def _background_colour(image: np.ndarray, x0: int, y0: int, x1: int, y1: int,
                       ring: int = 3) -> np.ndarray:
    """Median colour of a thin ring just outside the box (the box's own border if none)."""
    h, w = image.shape[:2]
    outside = np.ones((h, w), dtype=bool)
    outside[y0:y1, x0:x1] = False
    near = np.zeros((h, w), dtype=bool)
    near[max(0, y0 - ring):y1 + ring, max(0, x0 - ring):x1 + ring] = True
    sel = near & outside
    if sel.any():
        return np.median(image[sel].astype(np.float32), axis=0)  # type: ignore[no-any-return]
    roi = image[y0:y1, x0:x1].astype(np.float32)
    border = np.concatenate([roi[0], roi[-1], roi[:, 0], roi[:, -1]])
    return np.median(border, axis=0)  # type: ignore[no-any-return]


def _box_colour_model(image: np.ndarray, x0: int, y0: int, x1: int, y1: int,
                      bins: int = 8, ring: int = 6) -> np.ndarray:
    """Pixels of the box more likely under the box-centre colour histogram than under the
    histogram of a ring just outside the box (colours quantized to ``bins`` per channel)."""
    h, w = image.shape[:2]
    q = (image.astype(np.int32) * bins) // 256
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    n = bins**3
    bw, bh = x1 - x0, y1 - y0
    cx0, cy0 = x0 + bw // 4, y0 + bh // 4
    centre = code[cy0:max(cy0 + 1, y1 - bh // 4), cx0:max(cx0 + 1, x1 - bw // 4)]
    p_fg = np.bincount(centre.ravel(), minlength=n).astype(np.float64)
    outside = np.ones((h, w), dtype=bool)
    outside[y0:y1, x0:x1] = False
    near = np.zeros((h, w), dtype=bool)
    near[max(0, y0 - ring):y1 + ring, max(0, x0 - ring):x1 + ring] = True
    sel = near & outside
    if not sel.any():  # the box is the whole image: its border stands in for the outside
        sel = np.zeros((h, w), dtype=bool)
        sel[[0, -1], :] = True
        sel[:, [0, -1]] = True
    p_bg = np.bincount(code[sel].ravel(), minlength=n).astype(np.float64)
    p_fg /= p_fg.sum()
    p_bg /= p_bg.sum()
    fg_bins = p_fg > p_bg
    result: np.ndarray = fg_bins[code[y0:y1, x0:x1]]
    return result


class RegionGrowingEngine:
    """Colour region growing from point and box prompts.

    Args:
        tolerance: Euclidean RGB distance under which a pixel joins the seed colour.
    """

    name = "region-growing"

    def __init__(self, tolerance: float = 40.0) -> None:
        self.tolerance = float(tolerance)

    def segment(self, image: np.ndarray, points: Sequence[Point],
                box: Box | None) -> list[EngineSegment]:
        """See :class:`SegmentationEngine`."""
        h, w = image.shape[:2]
        if box is not None:
            x0, y0 = int(np.floor(box.x_min * w)), int(np.floor(box.y_min * h))
            x1 = max(x0 + 1, int(np.ceil(box.x_max * w)))
            y1 = max(y0 + 1, int(np.ceil(box.y_max * h)))
        else:
            x0, y0, x1, y1 = 0, 0, w, h
        roi = image[y0:y1, x0:x1].astype(np.float32)
        fg = [_pixel(p, w, h) for p in points if p.label == 1]
        bg = [_pixel(p, w, h) for p in points if p.label == 0]
        fg = [(r - y0, c - x0) for r, c in fg if y0 <= r < y1 and x0 <= c < x1]
        tol2 = self.tolerance**2

        def dist2(colour: np.ndarray) -> np.ndarray:
            d = roi - colour
            return np.einsum("hwc,hwc->hw", d, d)  # type: ignore[no-any-return]

        if box is not None:
            # Box given: a colour-histogram model (inside the box's centre vs a ring outside
            # it) decides foreground, as GrabCut's first step does; robust on photos.
            candidate = _box_colour_model(image, x0, y0, x1, y1)
            d_fg = np.where(candidate, 0.0, np.inf).astype(np.float32)
        elif fg:
            d_fg = np.min([dist2(roi[r, c]) for r, c in fg], axis=0)
            candidate = d_fg <= tol2
        else:  # only background points: nothing to grow from
            return []
        for r, c in bg:
            colour = image[r, c].astype(np.float32)
            if box is not None:
                candidate &= dist2(colour) > tol2
            else:
                candidate &= ~(dist2(colour) < np.abs(d_fg))
        labels, n = ndimage.label(candidate)
        if n == 0:
            return []
        if fg:
            keep = {int(labels[r, c]) for r, c in fg} - {0}
        else:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            keep = {int(np.argmax(sizes))}
        if not keep:
            return []
        region = np.isin(labels, sorted(keep))
        if box is not None:
            region = ndimage.binary_fill_holes(region)
        mask = np.zeros((h, w), dtype=bool)
        mask[y0:y1, x0:x1] = region
        return [EngineSegment(score=self._score(roi, region), mask=mask)]

    @staticmethod
    def _score(roi: np.ndarray, region: np.ndarray) -> float:
        """Contrast between the region and the ring around it, mapped to [0.05, 0.99]."""
        ring = ndimage.binary_dilation(region, iterations=2) & ~region
        if not ring.any() or not region.any():
            return 0.5
        contrast = float(np.linalg.norm(roi[region].mean(0) - roi[ring].mean(0)))
        spread = float(roi[region].std(0).mean())
        return float(np.clip(0.5 + contrast / 250.0 - spread / 100.0, 0.05, 0.99))


class SamEngine:
    """A local Segment-Anything backend as the emulator's engine.

    ``cogseg emulator --engine sam2 --model DIR`` builds it with :meth:`from_pretrained` (SAM 2
    / 2.1, or SAM 1, in transformers' format); ``--engine sam --checkpoint FILE`` on Meta's
    original SAM 1 file. Works through the backend's ``segment_image`` (all prompts of a call
    on one embedding; calls from the job workers take turns).

    Args:
        backend: a :class:`~cogseg_ml.backends.local_sam.LocalSamBackend` (anything with its
            ``segment_image``).
        name: the engine's name (default ``"sam2"`` for a SAM 2 model, else ``"sam"``).
    """

    def __init__(self, backend: object, name: str | None = None) -> None:
        if not callable(getattr(backend, "segment_image", None)):
            raise TypeError(f"SamEngine needs a backend with segment_image (a LocalSamBackend), "
                            f"got {type(backend).__name__}")
        self.backend = backend
        family = getattr(getattr(backend, "adapter", None), "family", None)
        self.name = name or ("sam2" if family == "sam2" else "sam")

    @classmethod
    def from_pretrained(cls, path: str, *, device: str = "auto") -> SamEngine:
        """An engine on a checkpoint folder in transformers' format (the ``sam2`` extra).

        Raises:
            SamCheckpointError: the folder is missing or is not a SAM checkpoint.
        """
        from cogseg_ml.backends.local_sam import LocalSamBackend

        return cls(LocalSamBackend.from_pretrained(path, device=device))

    def __repr__(self) -> str:
        return f"SamEngine({self.backend!r})"

    def segment(self, image: np.ndarray, points: Sequence[Point],
                box: Box | None) -> list[EngineSegment]:
        """See :class:`SegmentationEngine`."""
        from cogseg_ml.mask_codec import decode
        from cogseg_ml.prompts import Prompt

        (res,) = self.backend.segment_image(image, [Prompt(points=tuple(points), box=box)])  # type: ignore[attr-defined]
        return [EngineSegment(score=s.score, mask=decode([s.rle])[0]) for s in res.segments]
