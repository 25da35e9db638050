"""Prompt arithmetic for local Segment-Anything models: into the model's frame, and crops.

Our prompts are normalized: ``x`` in ``[0, 1]`` is the continuous pixel position ``x * W``
(pixel ``i`` spans ``[i, i + 1)``). Every SAM implementation (Meta's ``segment-anything``,
``transformers``' ``SamProcessor`` and ``Sam2Processor``) takes prompts as *pixel-index*
coordinates of the original image and scales them into its input frame; its prompt encoder then
adds 0.5 ("the centre of the pixel"). So a prompt reaches the model as ``(x * W - 0.5) * sx``,
where ``sx`` is the input frame's width over the image's:

* SAM 1 (:func:`longest_side_frame`): the longest side is resized to the input size (sizes
  rounded as SAM rounds them, ``int(v + 0.5)``), the rest padded at the bottom and right;
* SAM 2 (:func:`square_frame`): the image is stretched to a square of the input size.

Crops (:class:`CropOptions`): a prompt-centred window is cut out of a large image, segmented at
the model's full resolution, and the mask pasted back. A crop's prompt is the same continuous
position relative to the window (:func:`prompt_in_window`), so the two frames differ only by the
window's integer offset (:func:`paste`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import Box, Point, Prompt

__all__ = ["CropOptions", "CropWindow", "ModelFrame", "crop_window", "longest_side_frame",
           "paste", "prompt_in_window", "square_frame", "to_model_frame"]


@dataclass(frozen=True)
class ModelFrame:
    """How an image of ``height`` x ``width`` sits in a model's ``input_size`` square input.

    Attributes:
        height, width: the image's size in pixels.
        resized_height, resized_width: the image's size inside the model input (the rest of the
            square is padding).
        input_size: the side of the model's square input (1024 for the published models).
    """

    height: int
    width: int
    resized_height: int
    resized_width: int
    input_size: int

    @property
    def scale_x(self) -> float:
        """Model-input pixels per image pixel, horizontally."""
        return self.resized_width / self.width

    @property
    def scale_y(self) -> float:
        """Model-input pixels per image pixel, vertically."""
        return self.resized_height / self.height


def longest_side_frame(height: int, width: int, input_size: int) -> ModelFrame:
    """SAM 1's frame: longest side resized to ``input_size`` (``int(v + 0.5)``), padded."""
    scale = input_size / max(height, width)
    return ModelFrame(height, width, int(height * scale + 0.5), int(width * scale + 0.5),
                      input_size)


def square_frame(height: int, width: int, input_size: int) -> ModelFrame:
    """SAM 2's frame: the image stretched to ``input_size`` x ``input_size``, no padding."""
    return ModelFrame(height, width, input_size, input_size, input_size)


def to_model_frame(prompt: Prompt, frame: ModelFrame
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A normalized prompt in the model's input frame: ``(points (P, 2), labels (P,), box)``.

    Points are ``(x * W - 0.5) * scale_x`` (and likewise ``y``), the box ``(4,)`` XYXY the same
    way, or ``None``; labels are 1 (foreground) or 0 (background) as float32.
    """
    sx, sy = frame.scale_x, frame.scale_y
    w, h = frame.width, frame.height
    pts = np.asarray([[(p.x * w - 0.5) * sx, (p.y * h - 0.5) * sy] for p in prompt.points],
                     dtype=np.float32).reshape(-1, 2)
    labels = np.asarray([p.label for p in prompt.points], dtype=np.float32)
    box = None
    if prompt.box is not None:
        b = prompt.box
        box = np.asarray([(b.x_min * w - 0.5) * sx, (b.y_min * h - 0.5) * sy,
                          (b.x_max * w - 0.5) * sx, (b.y_max * h - 0.5) * sy], dtype=np.float32)
    return pts, labels, box


# --- crops ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropOptions:
    """When and how a prompt is segmented in a window cut out around it.

    Attributes:
        margin: context added on each side, as a fraction of the prompt's extent (the box and
            points together): 0.5 makes a window twice the object's size.
        min_side: the window's smallest side in image pixels (tiny prompts still get context).
        max_fraction: a prompt is cropped only when its window's side is at most this fraction
            of the image's longer side; larger prompts gain nothing and use the whole image
            (whose embedding they share with the other prompts).
    """

    margin: float = 0.5
    min_side: int = 64
    max_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.margin, (int, float)) and 0 <= self.margin <= 10):
            raise ValidationError(f"CropOptions.margin must be in [0, 10], got {self.margin!r}")
        if isinstance(self.min_side, bool) or not isinstance(self.min_side, int) \
                or self.min_side < 1:
            raise ValidationError(f"CropOptions.min_side must be a positive integer, got "
                                  f"{self.min_side!r}")
        if not (isinstance(self.max_fraction, (int, float)) and 0 < self.max_fraction <= 1):
            raise ValidationError(f"CropOptions.max_fraction must be in (0, 1], got "
                                  f"{self.max_fraction!r}")


@dataclass(frozen=True)
class CropWindow:
    """A window of an image in integer pixels: columns ``[x0, x1)``, rows ``[y0, y1)``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        """Columns in the window."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """Rows in the window."""
        return self.y1 - self.y0

    def tag(self) -> str:
        """A short text identity (``x0,y0,x1,y1``), e.g. for cache keys."""
        return f"{self.x0},{self.y0},{self.x1},{self.y1}"


def _extent(prompt: Prompt, height: int, width: int) -> tuple[float, float, float, float]:
    xs = [p.x * width for p in prompt.points]
    ys = [p.y * height for p in prompt.points]
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box.to_pixels(width, height)
        xs += [x0, x1]
        ys += [y0, y1]
    return min(xs), min(ys), max(xs), max(ys)


def _span(centre: float, side: int, limit: int) -> tuple[int, int]:
    """An integer span of ``side`` pixels centred on ``centre``, shifted inside ``[0, limit)``."""
    if side >= limit:
        return 0, limit
    lo = math.floor(centre - side / 2)
    lo = min(max(lo, 0), limit - side)
    return lo, lo + side


def crop_window(prompt: Prompt, height: int, width: int, options: CropOptions
                ) -> CropWindow | None:
    """The square window segmented for ``prompt``, or ``None`` when it should use the image.

    The window is centred on the prompt's extent (box and points), ``1 + 2 * margin`` times its
    longer side (at least ``min_side``), square where the image allows (SAM 2 stretches its
    input to a square, so a square window keeps the object's aspect ratio), and shifted to lie
    inside the image.
    """
    x0, y0, x1, y1 = _extent(prompt, height, width)
    extent = max(x1 - x0, y1 - y0, 1.0)
    side = max(math.ceil(extent * (1 + 2 * options.margin)), options.min_side)
    if side > options.max_fraction * max(height, width):
        return None
    cx0, cx1 = _span((x0 + x1) / 2, side, width)
    cy0, cy1 = _span((y0 + y1) / 2, side, height)
    return CropWindow(cx0, cy0, cx1, cy1)


def _unit(v: float) -> float:
    return min(max(v, 0.0), 1.0)


def prompt_in_window(prompt: Prompt, window: CropWindow, height: int, width: int) -> Prompt:
    """``prompt`` (normalized to the image) normalized to ``window`` instead.

    A continuous position ``X`` in the image is ``X - x0`` in the window; values are clamped to
    ``[0, 1]`` (a window from :func:`crop_window` holds the whole prompt, so this only absorbs
    rounding).
    """
    def fx(x: float) -> float:
        return _unit((x * width - window.x0) / window.width)

    def fy(y: float) -> float:
        return _unit((y * height - window.y0) / window.height)

    box = None
    if prompt.box is not None:
        b = prompt.box
        box = Box(fx(b.x_min), fy(b.y_min), fx(b.x_max), fy(b.y_max))
    points = tuple(Point(fx(p.x), fy(p.y), p.label) for p in prompt.points)
    return Prompt(points=points, box=box)


def paste(masks: np.ndarray, window: CropWindow, height: int, width: int) -> np.ndarray:
    """Masks ``(N, h, w)`` predicted in ``window`` placed into ``(N, height, width)`` frames."""
    if masks.ndim != 3 or masks.shape[1:] != (window.height, window.width):
        raise ValidationError(f"masks of shape {masks.shape} do not fit the window "
                              f"{window.tag()} ({window.height}x{window.width})")
    full = np.zeros((masks.shape[0], height, width), dtype=masks.dtype)
    full[:, window.y0:window.y1, window.x0:window.x1] = masks
    return full
