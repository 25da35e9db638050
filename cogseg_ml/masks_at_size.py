"""Masks rasterised at training size, compact masks across processes, and batch RLE decoders.

Four pieces, all working from COCO run-length encoding (RLE) without ever building a
full-frame mask array:

* :func:`target_size` is the output size of ``torchvision.transforms.v2.Resize(size,
  max_size=...)`` (an int is the short side, a pair is ``(H, W)``, ``max_size`` caps the long
  side).
* :func:`rle_at_size` (dense) and :func:`compact_at_size` (:class:`CompactMasks`) rasterise
  masks straight at a target size; :func:`polygons_at_size` does the same for polygons. The
  result equals a full-resolution decode followed by torchvision's nearest resize, pixel for
  pixel (the sampling rule is stated on :func:`source_indices`). Work and memory are
  ``O(runs + N * out_h * out_w)``.
* :class:`CompactMasks` holds the masks of one sample as run lengths (one ``int32`` tensor plus
  offsets): about 100 kB for 30 object masks at 1066x800, where dense bool masks take 25 MB,
  so a DataLoader worker hands the main process little. :meth:`CompactMasks.to_dense` and
  :func:`decode_masks` decode them on any torch device (CPU or CUDA: the same torch code,
  only the final column scan is picked per device, and both scans are tested on the CPU);
  :func:`decode_rle_batch` decodes COCO RLEs the same way.
* :func:`run_lengths_many` reads many COCO RLE strings in one pass of numpy (the fixed cost of
  its calls, not the characters, is what one string costs); :func:`parse_many` reads a
  DataLoader batch's masks that way, each with pycocotools' area and box, and
  :func:`decode_many` paints dense masks from them, equal to :func:`cogseg_ml.mask_codec.decode`
  in values, layout and errors.

How the decoder works: run lengths give run boundaries (a cumulative sum); each foreground run
adds ``+1`` where it starts and ``-1`` where it ends, scattered straight into the row-major
``(N, H, W)`` output (a column-major position ``p`` is pixel ``(p % H, p // H)``); the value a
column inherits from the one before (runs cross column ends) is added to its first row; a
cumulative sum down each column then leaves exactly 0 or 1 in every pixel. All arithmetic is
``uint8`` modulo 256, which is exact here because every true prefix sum is 0 or 1.

:func:`check_mask_budget` refuses a sample whose dense masks would exceed a byte budget, with
:class:`MaskBudgetError`, naming the sample, the bytes and the knobs that fix it;
:func:`check_image_budget` does the same for the returned image (:class:`ImageBudgetError`,
default budget :data:`DEFAULT_IMAGE_BUDGET`), and :func:`fewest_pixels` says how small a
``size=``/``max_size=`` combination can make any image, so a size that no image could fit is
refused before any image is read.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torch.nn import functional as F
from torchvision import tv_tensors

from cogseg_ml.errors import SampleError, ValidationError
from cogseg_ml.mask_codec import COCO_AREA_CHUNK, Rle, decode, polygons_to_rle, run_lengths
from cogseg_ml.mask_codec import area as mask_area

__all__ = [
    "DEFAULT_IMAGE_BUDGET",
    "CompactMasks",
    "ImageBudgetError",
    "MaskBudgetError",
    "ParsedRle",
    "check_image_budget",
    "check_mask_budget",
    "compact_at_size",
    "decode_many",
    "decode_many_to_tensor",
    "decode_masks",
    "decode_rle_batch",
    "fewest_pixels",
    "parse_many",
    "polygons_at_size",
    "rle_areas",
    "rle_at_size",
    "run_lengths_many",
    "source_indices",
    "target_size",
]

Mode = Literal["nearest", "nearest-exact"]
Scan = Literal["auto", "rows", "cumsum"]
DeviceLike = torch.device | str | None
_MODES = ("nearest", "nearest-exact")
_INT32_MAX = 2**31 - 1
T = TypeVar("T")
#: Default ``image_budget_bytes``: the most one returned image may take (2 GiB). Room for the
#: largest image the default ``max_pixels`` admits (178,956,970 pixels) as float32 RGB, so only
#: images made larger by ``size=``/``max_size=`` (or a larger ``max_pixels``) are refused.
DEFAULT_IMAGE_BUDGET = 2**31


class MaskBudgetError(SampleError, ValidationError):
    """A sample's dense masks would exceed the memory budget.

    Attributes:
        what: the sample, as the caller named it.
        needed_bytes: what its ``(n, height, width)`` bool masks would take.
        budget_bytes: the budget.
        n, height, width: the masks' shape.
    """

    what: str
    needed_bytes: int
    budget_bytes: int
    n: int
    height: int
    width: int


class ImageBudgetError(SampleError, ValidationError):
    """A returned image would exceed the image budget (``image_budget_bytes``).

    Raised when the dataset is built where ``size=``/``max_size=`` alone make every image too
    large, else for the sample whose shape does, before its pixels are decoded.

    Attributes:
        what: the sample (or the setting), as the caller named it.
        needed_bytes: what the ``(3, height, width)`` image would take.
        budget_bytes: the budget.
        height, width: the image's size (the smallest possible one, for a setting).
        dtype: the image's dtype, as text.
    """

    what: str
    needed_bytes: int
    budget_bytes: int
    height: int
    width: int
    dtype: str


# --- sizes and the sampling rule ---------------------------------------------------------------

def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValidationError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def target_size(height: int, width: int, size: int | Sequence[int] | None,
                max_size: int | None = None) -> tuple[int, int]:
    """The ``(h, w)`` that ``torchvision.transforms.v2.Resize(size, max_size=max_size)`` gives.

    Args:
        height, width: the image size.
        size: an int (or a one-element sequence) is the short side, the long side keeps the
            aspect ratio (rounded down); a pair is ``(h, w)`` exactly; ``None`` lets
            ``max_size`` alone set the long side.
        max_size: the most the long side may be (only with an int ``size`` or ``None``);
            when the long side would exceed it, it becomes ``max_size`` and the short side
            shrinks in proportion (rounded down).

    Raises:
        ValidationError: the combination is one torchvision refuses (``max_size`` with a pair,
            ``max_size`` not above ``size``, ``size=None`` without ``max_size``), or a side
            would come out as zero.
    """
    h, w = _positive_int(height, "height"), _positive_int(width, "width")
    if max_size is not None:
        max_size = _positive_int(max_size, "max_size")
    sides: list[int] | None
    if size is None:
        sides = None
    elif isinstance(size, numbers.Integral) and not isinstance(size, bool):
        sides = [_positive_int(size, "size")]
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) in (1, 2):
        sides = [_positive_int(s, "size") for s in size]
    else:
        raise ValidationError(f"size must be an int (the short side), a pair (h, w) or None, "
                              f"got {size!r}")
    short, long = (w, h) if w <= h else (h, w)
    if sides is None:
        if max_size is None:
            raise ValidationError("size=None needs max_size (the long side)")
        new_short, new_long = int(max_size * short / long), max_size
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    elif len(sides) == 1:
        requested = sides[0]
        new_short, new_long = requested, int(requested * long / short)
        if max_size is not None:
            if max_size <= requested:
                raise ValidationError(f"max_size ({max_size}) must be greater than size "
                                      f"({requested}), the short side")
            if new_long > max_size:
                new_short, new_long = int(max_size * new_short / new_long), max_size
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        if max_size is not None:
            raise ValidationError("max_size caps the long side of a short-side size; with a "
                                  f"pair (h, w) = {tuple(sides)} leave it out")
        new_h, new_w = sides
    if new_h < 1 or new_w < 1:
        raise ValidationError(f"a {h}x{w} image resized with size={size!r}, max_size={max_size}"
                              f" would be {new_h}x{new_w}: choose a larger max_size")
    return new_h, new_w


def _mode(mode: Any) -> Mode:
    value = getattr(mode, "value", mode)  # torchvision's InterpolationMode works too
    if value not in _MODES:
        raise ValidationError(f"mode must be 'nearest' or 'nearest-exact' (the modes "
                              f"torchvision resizes masks with), got {mode!r}")
    return value  # type: ignore[no-any-return]


def source_indices(in_size: int, out_size: int, mode: Mode = "nearest") -> np.ndarray:
    """Which source row (or column) each output row (or column) takes: ``(out_size,)`` int64.

    The sampling rule, the one ``torchvision.transforms.v2.functional.resize`` applies to a
    ``tv_tensors.Mask`` (torch's nearest interpolation, the same for bool, uint8 and float32
    masks):

    * ``"nearest"`` (the default, what ``v2.Resize`` uses for masks): output index ``i``
      takes source index ``min(floor(i * s), in_size - 1)`` with ``s = in_size / out_size``,
      the division and the product rounded to float32 (identity when the sizes are equal).
      It is the *first* source pixel of each output cell, not the one under its centre, so a
      downscaled mask sits up to one output pixel up and to the left of the image's content,
      exactly as torchvision's does.
    * ``"nearest-exact"``: ``min(floor((i + 0.5) * s), in_size - 1)``, the source pixel under
      the output pixel's centre (``v2.Resize(..., interpolation=NEAREST_EXACT)``).

    Output pixel ``(i, j)`` takes source pixel ``(rows[i], cols[j])`` with ``rows =
    source_indices(H, out_h)`` and ``cols = source_indices(W, out_w)``. The indices are read
    from torch's own kernel (by resizing an index ramp), so the rounding is torch's to the bit.
    """
    in_size = _positive_int(in_size, "in_size")
    out_size = _positive_int(out_size, "out_size")
    if in_size >= 2**24:
        raise ValidationError(f"a side of {in_size} pixels is beyond float32's exact integers")
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
    picked = F.interpolate(ramp, size=(out_size, 1), mode=_mode(mode))
    out: np.ndarray = picked.view(-1).numpy().astype(np.int64)
    return out


# --- run lengths --------------------------------------------------------------------------------

def _runs_of(rles: Sequence[Mapping[str, Any]], height: int, width: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """All masks' run lengths concatenated (int64) and the ``(N + 1,)`` offsets into them.

    Compressed strings of the given size are read together (:func:`run_lengths_many`);
    anything else, or anything wrong, mask by mask, which says what.
    """
    try:
        counts = [r["counts"] for r in rles]
        same = all([int(v) for v in r["size"]] == [height, width] for r in rles)
    except (KeyError, TypeError, ValueError):
        same = False
    if same and all(isinstance(c, (str, bytes)) for c in counts):
        try:
            runs, offsets = run_lengths_many(counts)
        except ValidationError:
            return _runs_one_by_one(rles, height, width)
        bounds = np.zeros(runs.size + 1, dtype=np.int64)
        np.cumsum(runs, out=bounds[1:])
        if not (runs < 0).any() and (bounds[offsets[1:]] - bounds[offsets[:-1]]
                                     == height * width).all():
            return runs, offsets
    return _runs_one_by_one(rles, height, width)


def _runs_one_by_one(rles: Sequence[Mapping[str, Any]], height: int, width: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_runs_of`, one mask at a time: the first that is wrong says so."""
    total = height * width
    parts: list[np.ndarray] = []
    for n, rle in enumerate(rles):
        try:
            size = [int(v) for v in rle["size"]]
            counts = rle["counts"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"RLE {n} is not a COCO RLE object ({exc!r}); expected "
                                  "{'size': [h, w], 'counts': str or list}") from None
        if size != [height, width]:
            raise ValidationError(f"RLE {n} is {size[0]}x{size[1]}, not the {height}x{width} "
                                  "given (all masks of a sample share its image's size)")
        if isinstance(counts, (str, bytes)):
            runs = run_lengths(counts)
        else:
            try:
                runs = np.asarray(counts, dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):
                raise ValidationError(f"RLE {n}: counts must be a COCO string or a list of "
                                      "run lengths") from None
        if runs.size and int(runs.min()) < 0:
            raise ValidationError(f"corrupt RLE {n}: a negative run length")
        if int(runs.sum()) != total:
            raise ValidationError(f"corrupt RLE {n}: runs add up to {int(runs.sum())}, not "
                                  f"{height}x{width} = {total}")
        parts.append(runs)
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([p.size for p in parts])
    counts_all = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return counts_all, offsets


class _Intervals:
    """Foreground intervals ``[start, end)`` of N masks, in each mask's column-major positions.

    Sorted by mask, then position; ``owner`` says which mask each interval belongs to.
    """

    __slots__ = ("end", "n", "owner", "start")

    def __init__(self, start: np.ndarray, end: np.ndarray, owner: np.ndarray, n: int) -> None:
        self.start, self.end, self.owner, self.n = start, end, owner, n

    @classmethod
    def of_runs(cls, counts: np.ndarray, offsets: np.ndarray) -> _Intervals:
        """The foreground runs (odd places within each mask) of concatenated run lengths."""
        n = int(offsets.size - 1)
        lengths = np.diff(offsets)
        owner = np.repeat(np.arange(n), lengths)
        ends = np.cumsum(counts)
        starts = ends - counts
        base = starts[offsets[:-1][lengths > 0]]
        base = np.repeat(base, lengths[lengths > 0])
        local = np.arange(counts.size) - offsets[:-1][owner]
        fg = (local & 1) == 1
        return cls(starts[fg] - base[fg], ends[fg] - base[fg], owner[fg], n)

    def nonempty(self) -> _Intervals:
        keep = self.end > self.start
        return _Intervals(self.start[keep], self.end[keep], self.owner[keep], self.n)

    def to_runs(self, total: int) -> tuple[np.ndarray, np.ndarray]:
        """COCO run lengths and offsets; empty intervals dropped and touching ones merged."""
        iv = self.nonempty()
        start, end, owner = iv.start, iv.end, iv.owner
        if start.size:
            joins = np.zeros(start.size, dtype=bool)
            joins[1:] = (owner[1:] == owner[:-1]) & (start[1:] == end[:-1])
            first = ~joins
            last = np.append(first[1:], True)
            start, end, owner = start[first], end[last], owner[first]
        per_mask = np.bincount(owner, minlength=self.n)
        first_of = np.zeros(self.n, dtype=np.int64)
        first_of[1:] = np.cumsum(per_mask)[:-1]
        last_end = np.zeros(self.n, dtype=np.int64)
        has = per_mask > 0
        last_end[has] = end[first_of[has] + per_mask[has] - 1]
        tail = last_end < total  # a mask ending in foreground has no closing background run
        offsets = np.zeros(self.n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(2 * per_mask + tail)
        counts = np.empty(int(offsets[-1]), dtype=np.int64)
        local = np.arange(start.size) - first_of[owner]
        prev_end = np.zeros(start.size, dtype=np.int64)
        if start.size:
            prev_end[1:] = end[:-1]
            prev_end[local == 0] = 0
        slot = offsets[:-1][owner] + 2 * local
        counts[slot] = start - prev_end
        counts[slot + 1] = end - start
        counts[offsets[1:][tail] - 1] = total - last_end[tail]
        return counts, offsets


def _resample(iv: _Intervals, height: int, width: int, rows: np.ndarray,
              cols: np.ndarray) -> _Intervals:
    """The intervals at the output size (``out_h = rows.size`` by ``cols.size``).

    ``cols`` must be strictly increasing. The output pixels, in column-major order, sample
    source positions ``cols[j] * H + rows[i]`` in increasing order, so a source interval
    ``[s, e)`` covers the output interval ``[F(s), F(e))`` with ``F(p)`` the number of sampled
    positions below ``p``: the output columns before ``p``'s column times ``out_h``, plus, when
    that column is sampled, the sampled rows above ``p``'s row.
    """
    out_h = rows.size
    cols_before = np.searchsorted(cols, np.arange(width + 1), side="left")
    sampled = np.zeros(width + 1, dtype=np.int64)
    sampled[cols] = 1
    rows_before = np.searchsorted(rows, np.arange(height), side="left")

    def at(p: np.ndarray) -> np.ndarray:
        c, r = np.divmod(p, height)
        res: np.ndarray = cols_before[c] * out_h + sampled[c] * rows_before[r]
        return res

    return _Intervals(at(iv.start), at(iv.end), iv.owner, iv.n).nonempty()


def _runs_from_dense(masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of dense ``(N, H, W)`` masks (column-major, first run background)."""
    arr = masks.detach().to("cpu").numpy().astype(bool)
    n, h, w = arr.shape
    flat = np.zeros((n, h * w + 2), dtype=np.int8)
    flat[:, 1:-1] = arr.transpose(0, 2, 1).reshape(n, h * w)
    step = np.diff(flat, axis=1)  # +1 where foreground starts, -1 where it ends
    owner_s, start = np.nonzero(step == 1)
    _, end = np.nonzero(step == -1)
    return _Intervals(start, end, owner_s, n).to_runs(h * w)


# --- the device decoder -------------------------------------------------------------------------

def _device(device: DeviceLike) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def _paint(start: torch.Tensor, end: torch.Tensor, owner: torch.Tensor, weight: torch.Tensor,
           n: int, height: int, width: int, device: torch.device, scan: Scan) -> torch.Tensor:
    """Dense ``(N, H, W)`` bool (row-major, contiguous) from intervals on ``device``.

    ``weight`` is 1 for a foreground interval, 0 for one to ignore (uint8).
    """
    hw = height * width
    out = torch.zeros((n, height, width), dtype=torch.uint8, device=device)
    if n == 0 or hw == 0 or start.numel() == 0:
        return out.view(torch.bool)
    pos = torch.cat([start, end])
    delta = torch.cat([weight, weight * 255])  # +1 where an interval starts, -1 (mod 256) after
    own = torch.cat([owner, owner])
    inside = pos < hw  # an interval ending at the mask's end changes nothing
    col = torch.where(inside, torch.div(pos, height, rounding_mode="floor"), 0)
    row = torch.where(inside, pos - col * height, 0)
    delta = torch.where(inside, delta, 0)
    out.view(-1).index_add_(0, own * hw + row * width + col, delta)
    # What each column inherits from the columns before it (runs cross column ends).
    col_sum = torch.zeros(n * width, dtype=torch.uint8, device=device)
    col_sum.index_add_(0, own * width + col, delta)
    col_sum = col_sum.view(n, width)
    out[:, 0, :] += col_sum.cumsum(1, dtype=torch.uint8) - col_sum
    if scan == "auto":
        scan = "rows" if device.type == "cpu" else "cumsum"
    if scan == "rows":  # CPU: one vector add per row beats a strided scan several times over
        rows = out.unbind(1)
        prev = rows[0]
        for cur in rows[1:]:
            cur.add_(prev)
            prev = cur
    elif scan == "cumsum":  # GPU: one kernel, every column in parallel
        out.cumsum_(1)
    else:
        raise ValidationError(f"scan must be 'auto', 'rows' or 'cumsum', got {scan!r}")
    return out.view(torch.bool)


def _decode(counts: torch.Tensor, offsets: np.ndarray, height: int, width: int,
            device: torch.device, scan: Scan) -> torch.Tensor:
    """Dense ``(N, H, W)`` bool from run lengths, every step on ``device`` (no host sync)."""
    n = int(offsets.size - 1)
    r_total = int(counts.numel())
    if n == 0 or r_total == 0:
        return _paint(counts, counts, counts, counts, n, height, width, device, scan)
    runs = counts.to(device=device, dtype=torch.int64, non_blocking=True)
    first = torch.from_numpy(offsets[:-1]).to(device)
    mask_of = torch.repeat_interleave(torch.arange(n, device=device),
                                      torch.from_numpy(np.diff(offsets)).to(device),
                                      output_size=r_total)
    ends = runs.cumsum(0)
    starts = ends - runs
    # Each mask has at least one run (its runs add up to H*W > 0), so first < r_total.
    base = starts[first][mask_of]
    local = torch.arange(r_total, device=device) - first[mask_of]
    fg = (local & 1).to(torch.uint8)  # runs alternate background, foreground, ...
    return _paint(starts - base, ends - base, mask_of, fg, n, height, width, device, scan)


def _paint_intervals(iv: _Intervals, height: int, width: int,
                     device: torch.device) -> torch.Tensor:
    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    weight = torch.ones(iv.start.size, dtype=torch.uint8, device=device)
    return _paint(dev(iv.start), dev(iv.end), dev(iv.owner), weight, iv.n, height, width,
                  device, "auto")


class CompactMasks:
    """The masks of one sample as run lengths: small, picklable, decoded on any device.

    Attributes:
        counts: ``int32`` tensor (CPU), every mask's COCO run lengths (column-major, the first
            run background) one after another.
        offsets: ``int64`` tensor ``(N + 1,)``: mask ``k``'s runs are
            ``counts[offsets[k]:offsets[k + 1]]``.
        height, width: the masks' size.

    It pickles as plain bytes (no shared-memory segment per sample), so a DataLoader worker
    hands the main process a few kB instead of ``N * H * W`` bytes. ``len()`` is ``N``.
    """

    __slots__ = ("counts", "height", "offsets", "width")

    counts: torch.Tensor
    offsets: torch.Tensor
    height: int
    width: int

    def __init__(self, counts: torch.Tensor | np.ndarray | Sequence[int],
                 offsets: torch.Tensor | np.ndarray | Sequence[int], height: int,
                 width: int) -> None:
        """Check and hold run lengths; see the class docstring for the layout.

        Raises:
            ValidationError: the offsets do not index the counts, a run is negative, a mask's
                runs do not add up to ``height * width``, or the size does not fit ``int32``.
        """
        self.height = _positive_int(height, "height")
        self.width = _positive_int(width, "width")
        total = self.height * self.width
        if total > _INT32_MAX:
            raise ValidationError(f"{height}x{width} masks are too large for int32 run lengths")
        c = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts,
                       dtype=np.int64).reshape(-1)
        o = np.array(offsets.cpu() if isinstance(offsets, torch.Tensor) else offsets,
                       dtype=np.int64).reshape(-1)
        if o.size < 1 or o[0] != 0 or o[-1] != c.size or (np.diff(o) < 0).any():
            raise ValidationError(f"offsets must rise from 0 to len(counts) = {c.size}, got "
                                  f"{o.size} offsets")
        if c.size and int(c.min()) < 0:
            raise ValidationError("run lengths must not be negative")
        cs = np.concatenate([[0], np.cumsum(c)])
        sums = cs[o[1:]] - cs[o[:-1]]
        wrong = np.flatnonzero(sums != total)
        if wrong.size:
            k = int(wrong[0])
            raise ValidationError(f"mask {k}: runs add up to {int(sums[k])}, not "
                                  f"{height}x{width} = {total}")
        self.counts = torch.from_numpy(c.astype(np.int32))
        self.offsets = torch.from_numpy(o)

    @classmethod
    def from_rles(cls, rles: Sequence[Mapping[str, Any]], height: int,
                  width: int) -> CompactMasks:
        """From COCO RLEs (compressed string or uncompressed list counts) of ``height x width``."""
        h, w = _positive_int(height, "height"), _positive_int(width, "width")
        counts, offsets = _runs_of(rles, h, w)
        return cls(counts, offsets, h, w)

    @classmethod
    def from_dense(cls, masks: torch.Tensor | np.ndarray) -> CompactMasks:
        """From dense ``(N, H, W)`` masks (non-zero is foreground)."""
        t = torch.as_tensor(masks)
        if t.ndim != 3:
            raise ValidationError(f"masks must be (N, H, W), got shape {tuple(t.shape)}")
        counts, offsets = _runs_from_dense(t != 0)
        return cls(counts, offsets, int(t.shape[1]), int(t.shape[2]))

    @classmethod
    def cat(cls, items: Sequence[CompactMasks]) -> CompactMasks:
        """The masks of several :class:`CompactMasks` of one size, in order."""
        if not items:
            raise ValidationError("CompactMasks.cat needs at least one item (the size is "
                                  "unknown otherwise)")
        sizes = {(m.height, m.width) for m in items}
        if len(sizes) != 1:
            raise ValidationError(f"CompactMasks.cat needs one size, got {sorted(sizes)}")
        counts = torch.cat([m.counts for m in items])
        shifts = np.cumsum([0] + [int(m.counts.numel()) for m in items[:-1]])
        offsets = np.concatenate([[0]] + [m.offsets[1:].numpy() + s
                                          for m, s in zip(items, shifts, strict=True)])
        return cls(counts, offsets, items[0].height, items[0].width)

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, H, W)`` of the dense masks."""
        return len(self), self.height, self.width

    @property
    def nbytes(self) -> int:
        """Bytes held (the counts and the offsets)."""
        return int(self.counts.numel() * 4 + self.offsets.numel() * 8)

    def to_dense(self, device: DeviceLike = None, *, scan: Scan = "auto") -> torch.Tensor:
        """Dense ``(N, H, W)`` bool masks on ``device`` (the CPU by default), contiguous.

        Args:
            device: where to decode; only the run lengths travel there.
            scan: how columns are summed: ``"rows"`` (one vector add per row, fastest on the
                CPU), ``"cumsum"`` (one kernel, for GPUs), or ``"auto"`` (``"rows"`` on the
                CPU, ``"cumsum"`` elsewhere). All give the same masks.
        """
        return _decode(self.counts, self.offsets.numpy(), self.height, self.width,
                       _device(device), scan)

    def to_rles(self) -> list[Rle]:
        """The masks as COCO RLEs with string counts (what :mod:`cogseg_ml.mask_codec` uses)."""
        out: list[Rle] = []
        o = self.offsets.tolist()
        c = self.counts.tolist()
        for a, b in zip(o[:-1], o[1:], strict=True):
            obj = coco_mask.frPyObjects({"size": [self.height, self.width], "counts": c[a:b]},
                                        self.height, self.width)
            out.append({"size": [self.height, self.width],
                        "counts": obj["counts"].decode("ascii")})
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_compact, (self.counts.numpy().tobytes(), self.offsets.numpy().tobytes(),
                                   self.height, self.width))

    def __repr__(self) -> str:
        return (f"CompactMasks(n={len(self)}, size={self.height}x{self.width}, "
                f"runs={int(self.counts.numel())}, {self.nbytes} bytes)")


def _rebuild_compact(counts: bytes, offsets: bytes, height: int, width: int) -> CompactMasks:
    return CompactMasks(np.frombuffer(counts, dtype=np.int32),
                        np.frombuffer(offsets, dtype=np.int64), height, width)


# --- at training size ---------------------------------------------------------------------------

def _at_size(rles: Sequence[Mapping[str, Any]], height: int, width: int, out_h: int,
             out_w: int, mode: Any) -> tuple[_Intervals, int, np.ndarray]:
    """Foreground intervals over the distinct sampled columns, ``out_h``, and the expansion.

    The output is ``dense[:, :, expand]`` of the masks the intervals describe at
    ``out_h x distinct columns`` (``expand`` is the identity unless upscaling).
    """
    h, w = _positive_int(height, "height"), _positive_int(width, "width")
    out_h, out_w = _positive_int(out_h, "out_h"), _positive_int(out_w, "out_w")
    m = _mode(mode)
    rows = source_indices(h, out_h, m)
    cols, expand = np.unique(source_indices(w, out_w, m), return_inverse=True)
    counts, offsets = _runs_of(rles, h, w)
    return _resample(_Intervals.of_runs(counts, offsets), h, w, rows, cols), out_h, \
        expand.reshape(-1)


def rle_at_size(rles: Sequence[Mapping[str, Any]], height: int, width: int, out_h: int,
                out_w: int, *, mode: Mode = "nearest",
                device: DeviceLike = None) -> torch.Tensor:
    """Rasterise ``height x width`` COCO RLEs straight at ``out_h x out_w``.

    Equal, pixel for pixel, to decoding at full resolution and then
    ``v2.functional.resize(tv_tensors.Mask(m), [out_h, out_w])`` (torchvision's nearest
    resize, the one ``v2.Resize`` applies to masks), without building the full-resolution
    masks: output pixel ``(i, j)`` takes source pixel ``(rows[i], cols[j])`` where, for the
    default ``mode="nearest"``, ``rows[i] = min(floor(i * H / out_h), H - 1)`` (in float32, see
    :func:`source_indices`; ``"nearest-exact"`` takes ``floor((i + 0.5) * H / out_h)``).

    The foreground runs' ends are mapped to the output (a table look-up over the sampled rows
    and columns per run), then painted there as in :meth:`CompactMasks.to_dense`: work and
    memory are ``O(runs + N * out_h * out_w)``.

    Args:
        rles: COCO RLEs of one size, counts compressed (``str``/``bytes``, as pycocotools
            encodes them) or uncompressed (a list of run lengths).
        height, width: their size (every RLE's ``size`` must match).
        out_h, out_w: the output size, e.g. from :func:`target_size`.
        mode: ``"nearest"`` or ``"nearest-exact"`` (torchvision's two mask modes).
        device: where the output is built (CPU by default).

    Returns:
        ``(N, out_h, out_w)`` bool tensor, contiguous.

    Raises:
        ValidationError: a size is not a positive integer, an RLE has another size, or its
            counts are corrupt.
    """
    iv, out_h, expand = _at_size(rles, height, width, out_h, out_w, mode)
    dev = _device(device)
    distinct = int(expand.max()) + 1
    dense = _paint_intervals(iv, out_h, distinct, dev)
    if distinct != expand.size:  # upscaling: output columns repeat source columns
        dense = dense[:, :, torch.from_numpy(expand).to(dev)]
    return dense


def compact_at_size(rles: Sequence[Mapping[str, Any]], height: int, width: int, out_h: int,
                    out_w: int, *, mode: Mode = "nearest") -> CompactMasks:
    """Like :func:`rle_at_size` (the same masks, the same sampling rule), as :class:`CompactMasks`.

    No dense array is built when downscaling (the usual case): the foreground runs are mapped
    to the output size, empty ones dropped and touching ones merged.
    """
    iv, out_h, expand = _at_size(rles, height, width, out_h, out_w, mode)
    distinct = int(expand.max()) + 1
    if distinct != expand.size:  # upscaling: repeat the columns densely, then encode again
        dense = _paint_intervals(iv, out_h, distinct, torch.device("cpu"))
        return CompactMasks.from_dense(dense[:, :, torch.from_numpy(expand)])
    counts, offsets = iv.to_runs(out_h * distinct)
    return CompactMasks(counts, offsets, out_h, distinct)


def polygons_at_size(instances: Sequence[Iterable[Sequence[tuple[float, float]]]], height: int,
                     width: int, out_h: int, out_w: int, *, normalized: bool = True,
                     mode: Mode = "nearest", device: DeviceLike = None) -> torch.Tensor:
    """Rasterise polygons (one union of polygons per instance) straight at ``out_h x out_w``.

    Each instance is rasterised at full resolution *as RLE* (pycocotools works on polygon
    edges and runs, never on a pixel array; see :func:`cogseg_ml.mask_codec.polygons_to_rle`)
    and then sampled by :func:`rle_at_size`, so the result equals the full-resolution raster
    followed by torchvision's nearest resize exactly, at ``O(perimeter + runs)`` cost.

    Args:
        instances: per instance, its polygons as ``(x, y)`` vertices.
        height, width: the image size the vertices refer to.
        out_h, out_w: the output size.
        normalized: vertices in ``[0, 1]`` (CDF) when true, else in pixels.
        mode, device: as for :func:`rle_at_size`.
    """
    h, w = _positive_int(height, "height"), _positive_int(width, "width")
    rles = [polygons_to_rle(p, h, w, normalized=normalized) for p in instances]
    return rle_at_size(rles, h, w, out_h, out_w, mode=mode, device=device)


# --- batch decoding -----------------------------------------------------------------------------

def decode_rle_batch(rles: Sequence[Mapping[str, Any]], height: int, width: int, *,
                     device: DeviceLike = None, scan: Scan = "auto") -> torch.Tensor:
    """Decode COCO RLEs of one size to a ``(N, H, W)`` bool tensor on ``device``, in one batch.

    Equal to ``pycocotools.mask.decode``; the counts are parsed on the CPU and only the run
    lengths travel to the device, where the masks are built (see :class:`CompactMasks`).
    """
    return CompactMasks.from_rles(rles, height, width).to_dense(device, scan=scan)


def decode_masks(targets: T, device: DeviceLike = None) -> T:
    """Replace each target's :class:`CompactMasks` with a dense ``tv_tensors.Mask`` on ``device``.

    Targets whose ``"masks"`` is anything else are left alone. Targets of one mask size are
    decoded together in one batch. The dicts are updated in place and returned (a single dict
    works too), so this fits right after the DataLoader::

        images, targets = batch
        targets = decode_masks(targets, device="cuda")
    """
    items: Sequence[Any]
    if isinstance(targets, dict):
        items = [targets]
    elif isinstance(targets, Sequence) and not isinstance(targets, (str, bytes)):
        items = targets
    else:
        raise ValidationError(f"decode_masks expects a target dict or a sequence of them, got "
                              f"{type(targets).__name__}")
    groups: dict[tuple[int, int], list[int]] = {}
    for k, t in enumerate(items):
        if isinstance(t, dict) and isinstance(t.get("masks"), CompactMasks):
            m: CompactMasks = t["masks"]
            groups.setdefault((m.height, m.width), []).append(k)
    dev = _device(device)
    for ks in groups.values():
        packs = [items[k]["masks"] for k in ks]
        dense = (CompactMasks.cat(packs) if len(packs) > 1 else packs[0]).to_dense(dev)
        for k, part in zip(ks, torch.split(dense, [len(p) for p in packs]), strict=True):
            items[k]["masks"] = tv_tensors.Mask(part)
    return targets


# --- many RLE strings at once -------------------------------------------------------------------
#
# A sample holds several masks, each a compressed COCO RLE string of a few hundred characters.
# ``mask_codec.run_lengths`` reads one string with about twenty numpy calls, so their fixed cost,
# not the characters, is what a sample pays. ``run_lengths_many`` reads many strings with the
# same calls once: the strings are joined (each ends at the end of a count, so no count spans
# two), counts are read as in ``run_lengths``, and the difference rule (from the fourth count of
# a string on, each is stored as the difference to the count two places earlier) becomes a
# running sum over every other count of the joined string, minus the sum where each string's
# chain begins. ``parse_many`` reads the RLEs of a DataLoader batch that way, with each mask's
# area and box; ``decode_many`` paints dense masks from them. All give exactly what the one-mask
# functions (and pycocotools) give, and raise the same errors for corrupt input (they ask the
# one-mask functions which string is wrong, and why).

def run_lengths_many(counts: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The run lengths of many compressed COCO RLE strings, read together.

    Returns:
        ``(runs, offsets)``: every string's runs concatenated (int64) and the ``(N + 1,)``
        int64 offsets into them; ``runs[offsets[n]:offsets[n + 1]]`` equals
        ``mask_codec.run_lengths(counts[n])``.

    Raises:
        ValidationError: a string is corrupt (the error ``run_lengths`` gives for the first
            such string).
    """
    raws = [c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts]
    chars = np.zeros(len(raws) + 1, dtype=np.int64)
    chars[1:] = np.cumsum([len(r) for r in raws])
    b = np.frombuffer(b"".join(raws), dtype=np.uint8).astype(np.int64) - 48
    is_last = (b & 0x20) == 0
    ends = chars[1:][chars[1:] > chars[:-1]] - 1  # the last character of each non-empty string
    if (b < 0).any() or (b > 63).any() or not is_last[ends].all():
        for c in counts:  # the one-mask reader names what is wrong
            run_lengths(c)
        raise ValidationError("corrupt RLE counts")  # pragma: no cover - run_lengths raised
    seen = np.zeros(b.size + 1, dtype=np.int64)
    np.cumsum(is_last, out=seen[1:])
    first = seen[chars]  # index of each string's first count; first[-1]: how many in all
    n_counts = np.diff(first)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64), first
    # Each character's place in its count (0: the least significant 5 bits), its bits shifted
    # there, and the sign (bit 0x10 of a count's last character) folded into that character.
    place = np.arange(b.size)
    begins = np.empty(b.size, dtype=bool)
    begins[0] = True
    begins[1:] = is_last[:-1]
    shift = 5 * (place - np.maximum.accumulate(np.where(begins, place, 0)))
    bits = (b & 0x1F) << shift
    negative = is_last & ((b & 0x10) != 0)
    bits[negative] -= np.left_shift(1, shift[negative] + 5)
    x = np.add.reduceat(bits, np.flatnonzero(begins))
    # From a string's fourth count on, each adds the one two places earlier: count j >= 1 is
    # the sum of its chain (j, j - 2, ... down to 1 or 2), a running sum over every other count
    # of the joined string less that sum just before the chain's start. Chains of two strings
    # never mix: a chain takes every other position of the joined string too.
    total = np.empty_like(x)
    total[0::2] = np.cumsum(x[0::2])
    total[1::2] = np.cumsum(x[1::2])
    padded = np.concatenate([np.zeros(2, dtype=np.int64), total])  # padded[i + 2] = total[i]
    owner_first = np.repeat(first[:-1], n_counts)
    local = np.arange(x.size) - owner_first
    out: np.ndarray = total - padded[owner_first + 2 - (local & 1)]
    heads = first[:-1][n_counts > 0]
    out[heads] = x[heads]  # a string's first count stands alone
    return out, first


def _local_index(offsets: np.ndarray) -> np.ndarray:
    """Each run's index within its own mask, for runs concatenated at ``offsets``."""
    sizes = np.diff(offsets)
    return np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], sizes)  # type: ignore[no-any-return]


class ParsedRle(NamedTuple):
    """One COCO RLE read ahead (:func:`parse_many`).

    Attributes:
        runs: the run lengths (int64; background first).
        foreground: 1 for the runs that are foreground, else 0 (uint8, one per run).
        valid: the runs are well formed for the RLE's size (none negative, at least one, and
            they add up to ``H * W``); only then do ``area`` and ``box`` mean anything.
        area: foreground pixels: pycocotools' ``area`` of the RLE.
        box: ``(x, y, w, h)``: pycocotools' ``toBbox`` of the RLE.
    """

    runs: np.ndarray
    foreground: np.ndarray
    valid: bool
    area: int
    box: tuple[float, float, float, float]


def rle_areas(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """:func:`cogseg_ml.mask_codec.area`: foreground pixels of any number of RLEs, ``(N,)``
    int64."""
    return mask_area(rles)  # type: ignore[arg-type]


def parse_many(rles: Sequence[Rle]) -> dict[tuple[str | bytes, int, int], ParsedRle]:
    """Each distinct compressed RLE, read in one pass (:func:`run_lengths_many`), keyed by
    ``(counts, height, width)``: for :func:`decode_many`'s ``parsed``, when the masks of several
    samples are known together. RLEs with uncompressed (list) counts, or malformed ones, are
    left out; corrupt counts are kept with ``valid`` false.

    Areas and boxes are pycocotools' own (``area``, ``toBbox``), asked for all the well-formed
    masks in one call each (per 255 masks: pycocotools' ``area`` cannot take 256 at once).
    """
    keys: dict[tuple[str | bytes, int, int], None] = {}
    for r in rles:
        try:
            counts, (h, w) = r["counts"], r["size"]
            if isinstance(counts, (str, bytes)):
                keys[(counts, int(h), int(w))] = None
        except (KeyError, TypeError, ValueError):
            continue
    if not keys:
        return {}
    order = list(keys)
    try:
        runs, offsets = run_lengths_many([c for c, _, _ in order])
    except ValidationError:  # some string is corrupt: read them one by one
        return {k: v for r in rles for k, v in parse_many([r]).items()} if len(order) > 1 \
            else {}
    sizes = np.diff(offsets)
    bounds = np.zeros(runs.size + 1, dtype=np.int64)
    np.cumsum(runs, out=bounds[1:])
    totals = bounds[offsets[1:]] - bounds[offsets[:-1]]
    pixels = np.array([h * w for _, h, w in order], dtype=np.int64)
    valid = (sizes > 0) & (totals == pixels)
    if (runs < 0).any():
        valid &= np.array([not (runs[offsets[i]:offsets[i + 1]] < 0).any()
                           for i in range(len(order))])
    fg = (_local_index(offsets) & 1).astype(np.uint8)
    good = [order[i] for i in np.flatnonzero(valid).tolist()]
    areas: list[int] = []
    boxes: list[list[float]] = []
    for at in range(0, len(good), COCO_AREA_CHUNK):
        objs = [{"size": [h, w], "counts": c.encode("ascii") if isinstance(c, str) else c}
                for c, h, w in good[at:at + COCO_AREA_CHUNK]]
        areas += np.asarray(coco_mask.area(objs)).tolist()
        boxes += np.asarray(coco_mask.toBbox(objs), dtype=np.float64).tolist()
    measured = dict(zip(good, zip(areas, boxes, strict=True), strict=True))
    out = {}
    for i, key in enumerate(order):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        area, box = measured.get(key, (0, [0.0, 0.0, 0.0, 0.0]))
        out[key] = ParsedRle(runs[lo:hi], fg[lo:hi], bool(valid[i]), int(area),
                             (box[0], box[1], box[2], box[3]))
    return out


def decode_many(rles: Sequence[Rle],
                parsed: Mapping[tuple[str | bytes, int, int], ParsedRle] | None = None
                ) -> np.ndarray:
    """:func:`cogseg_ml.mask_codec.decode`, reading all the strings in one pass.

    The same ``(N, H, W)`` bool array (a view of one column-major buffer, strides
    ``(H*W, 1, H)``), the same errors. ``parsed``: RLEs already read (:func:`parse_many`),
    used when it holds every one of ``rles``.

    Raises:
        ValidationError: no RLEs, sizes differ, or counts are corrupt.
    """
    if not rles:
        raise ValidationError("decode needs at least one RLE (the size is unknown otherwise)")
    try:
        sizes = {(int(r["size"][0]), int(r["size"][1])) for r in rles}
        counts = [r["counts"] for r in rles]
    except (KeyError, TypeError, ValueError, IndexError):
        return decode(rles)  # names what is wrong
    if len(sizes) != 1 or not all(isinstance(c, (str, bytes)) for c in counts):
        return decode(rles)  # mixed sizes (an error) or uncompressed counts: the one-mask path
    ((h, w),) = sizes
    known = [parsed.get((c, h, w)) for c in counts] if parsed is not None else []  # type: ignore[arg-type]
    if known and all(k is not None for k in known):
        if not all(k.valid for k in known):  # type: ignore[union-attr]
            return decode(rles)  # corrupt: the one-mask path raises the error naming why
        runs = np.concatenate([k.runs for k in known])  # type: ignore[union-attr]
        fg = np.concatenate([k.foreground for k in known])  # type: ignore[union-attr]
    else:
        runs, offsets = run_lengths_many(counts)  # type: ignore[arg-type]
        bounds = np.zeros(runs.size + 1, dtype=np.int64)
        np.cumsum(runs, out=bounds[1:])
        per_mask = bounds[offsets[1:]] - bounds[offsets[:-1]]
        if (runs < 0).any() or (per_mask != h * w).any() or (np.diff(offsets) == 0).any():
            return decode(rles)  # corrupt: the one-mask path raises the error naming why
        fg = (_local_index(offsets) & 1).astype(np.uint8)
    flat = np.repeat(fg, runs)
    masks: np.ndarray = flat.reshape(len(rles), w, h).transpose(0, 2, 1).view(bool)
    return masks


def decode_many_to_tensor(rles: Sequence[Rle], height: int, width: int,
                          parsed: Mapping[tuple[str | bytes, int, int], ParsedRle] | None = None
                          ) -> torch.Tensor:
    """:func:`cogseg_ml.mask_codec.decode_to_tensor` through :func:`decode_many`: a bool
    ``(N, H, W)`` tensor viewing the decoded buffer (no copy); ``(0, H, W)`` with no RLEs."""
    if not rles:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.from_numpy(decode_many(rles, parsed))


# --- memory budget ------------------------------------------------------------------------------

def _human(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _budget(budget_bytes: object, knob: str) -> int:
    """A byte budget given as an option: a non-negative integer (``None`` is handled by the
    caller)."""
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, numbers.Integral) \
            or budget_bytes < 0:
        raise ValidationError(f"{knob} must be a non-negative integer (bytes) or None, got "
                              f"{budget_bytes!r}")
    return int(budget_bytes)


def check_mask_budget(n: int, h: int, w: int, budget_bytes: int | None, what: str, *,
                      knob: str = "mask_budget_bytes") -> int:
    """Refuse ``n`` dense ``h x w`` bool masks that would exceed ``budget_bytes``.

    Args:
        n, h, w: the masks' shape.
        budget_bytes: the most bytes allowed; ``None`` checks nothing.
        what: the sample, as it should appear in the message (e.g. ``"sample 12 (file id
            42)"``).
        knob: the name of the parameter that sets the budget, for the message.

    Returns:
        The bytes the masks take.

    Raises:
        MaskBudgetError: (a ``ValidationError`` and a ``SampleError``) over the budget; the
            message names the sample, the bytes and the knobs: ``size=`` (train smaller),
            ``mask_format="rle"`` (compact masks until the batch is decoded) or the budget.
    """
    n = int(n)
    if n < 0:
        raise ValidationError(f"the number of masks must not be negative, got {n}")
    h, w = _positive_int(h, "height"), _positive_int(w, "width")
    needed = n * h * w
    if budget_bytes is None:
        return needed
    budget = _budget(budget_bytes, knob)
    if needed <= budget:
        return needed
    hint = ""
    try:
        sh, sw = target_size(h, w, 800, 1333)
        if sh * sw < h * w:
            hint = f" (size=800, max_size=1333 makes them {sh}x{sw}: {_human(n * sh * sw)})"
    except ValidationError:
        pass
    fits = math.floor(budget / (h * w)) if h * w else 0
    raise MaskBudgetError(
        f"{what}: {n} masks at {h}x{w} would need {_human(needed)} as dense bool masks, over "
        f"the budget of {_human(budget)} (room for {fits} at this size); train at a smaller "
        f"size with size=...{hint}, keep masks compact until the batch is decoded with "
        f'mask_format="rle" and cogseg_ml.decode_masks, or raise the budget ({knob}=...)',
        what=what, needed_bytes=needed, budget_bytes=budget, n=n, height=h, width=w)


def fewest_pixels(size: int | Sequence[int] | None, max_size: int | None = None
                  ) -> tuple[int, int, bool]:
    """The smallest ``(h, w)`` any image can have after ``Resize(size, max_size=max_size)``.

    Returns ``(h, w, exact)``: ``exact`` when every image gets exactly that size (a pair);
    otherwise a lower bound on ``h * w``: an int ``size`` gives every image at least that
    short side (``size x size``); with ``max_size`` the long side is at most ``max_size`` and
    the short side may be as small as 1 (``1 x max_size``, or ``size x size`` if smaller).
    Arguments are checked as :func:`target_size` checks them.
    """
    target_size(4096, 4096, size, max_size)  # the combination's errors
    sides: list[int] | None
    if size is None:
        sides = None
    elif isinstance(size, Sequence):
        sides = [int(s) for s in size]
    else:
        sides = [int(size)]
    if sides is not None and len(sides) == 2:
        return sides[0], sides[1], True
    short = None if sides is None else sides[0]
    if max_size is None:
        assert short is not None
        return short, short, False
    if short is not None and short * short <= max_size:
        return short, short, False
    return 1, int(max_size), False


def check_image_budget(height: int, width: int, budget_bytes: int | None, what: str, *,
                       itemsize: int = 1, dtype: str = "uint8", at_least: bool = False,
                       knob: str = "image_budget_bytes") -> int:
    """Refuse a ``(3, height, width)`` image of ``itemsize``-byte channels over ``budget_bytes``.

    Args:
        height, width: the image's size (with ``at_least``, the smallest it can be).
        budget_bytes: the most bytes allowed; ``None`` checks nothing.
        what: the sample or the setting, as it should appear in the message.
        itemsize, dtype: the bytes per channel value and the dtype's name, for the message.
        at_least: the size is a lower bound (the message says so).
        knob: the name of the parameter that sets the budget, for the message.

    Returns:
        The bytes the image takes.

    Raises:
        ImageBudgetError: (a ``ValidationError`` and a ``SampleError``) over the budget; the
            message names the sample, the bytes and the knobs that fix it: a smaller
            ``size=``, a ``max_size=``, or the budget.
        ValidationError: ``budget_bytes`` is not a non-negative integer or ``None``.
    """
    h, w = _positive_int(height, "height"), _positive_int(width, "width")
    needed = 3 * h * w * int(itemsize)
    if budget_bytes is None:
        return needed
    budget = _budget(budget_bytes, knob)
    if needed <= budget:
        return needed
    shape = f"at least {h}x{w} pixels" if at_least else f"{h}x{w} pixels"
    raise ImageBudgetError(
        f"{what}: the image would be {shape}, {_human(needed)} as {dtype} RGB, over the image "
        f"budget of {_human(budget)}; train at a smaller size with size=... (e.g. size=800, "
        "max_size=1333, what torchvision's detection models resize to) or cap the long side "
        f"with max_size=..., or raise the budget ({knob}=...; None checks nothing)",
        what=what, needed_bytes=needed, budget_bytes=budget, height=h, width=w, dtype=dtype)
