"""Masks, polygons and COCO run-length encoding (RLE): pure functions, no I/O.

Pixel convention (the same as pycocotools and :mod:`cogseg_ml.prompts`): continuous pixel
coordinates run from ``0`` (left/top edge of the first pixel) to ``width``/``height``; pixel
``(row r, column c)`` is the unit square ``[c, c+1) x [r, r+1)``. A normalized vertex ``x``
lands at pixel coordinate ``x * width``, so ``x = 0.5`` in a 640-wide image is the boundary
between columns 319 and 320. pycocotools fills a pixel when the polygon covers its square (edges
falling exactly on a pixel boundary include the pixel to their right/below), so a polygon traced
along pixel corners rasterizes back to exactly the pixels it was traced from. Masks with holes
and several parts become such polygons too (:func:`mask_to_polygons`, which is
:func:`mask_to_rings` unless asked for the lossy ``outline="filled"``, and :func:`mask_to_ring`):
holes are joined to their part by zero-width cuts, which any crossing-based filler cancels.
Readers that fill with OpenCV's ``fillPoly`` (Ultralytics, supervision) take vertices as pixel
centres and paint the outline too: :func:`mask_to_inset_rings` traces rings exact for them.

RLE objects are COCO's ``{"size": [h, w], "counts": str}`` (column-major runs, first run
background), JSON-safe: ``counts`` is always ``str`` here. Masks in and out are row-major
``(N, H, W)``; the Fortran-order detail of pycocotools stays inside this module.
"""

from __future__ import annotations

import decimal
import itertools
import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np
from pycocotools import mask as coco_mask

from cogseg_ml.errors import ValidationError

if TYPE_CHECKING:
    import torch

__all__ = [
    "InsetParts",
    "Outline",
    "Rle",
    "bbox_of",
    "decode",
    "decode_to_tensor",
    "empty_rle",
    "encode",
    "iou_matrix",
    "mask_to_inset_rings",
    "mask_to_polygon_arrays",
    "mask_to_polygons",
    "mask_to_ring",
    "mask_to_rings",
    "merge",
    "run_lengths",
    "area",
    "polygons_to_rle",
]


class Rle(TypedDict):
    """COCO compressed RLE with ``counts`` as an ASCII string."""

    size: list[int]
    counts: str


def _to_str_rle(obj: dict[str, Any]) -> Rle:
    counts = obj["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    h, w = obj["size"]
    return {"size": [int(h), int(w)], "counts": counts}


def _to_coco(rle: Rle) -> dict[str, Any]:
    try:
        h, w = rle["size"]
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"not a COCO RLE object ({exc}); expected "
                              "{'size': [h, w], 'counts': str}") from exc
    if isinstance(counts, list):  # uncompressed RLE: let pycocotools compress it
        return coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w)  # type: ignore[no-any-return]
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    return {"size": [int(h), int(w)], "counts": raw}


def empty_rle(height: int, width: int) -> Rle:
    """The RLE of an all-background mask."""
    return encode(np.zeros((1, height, width), dtype=bool))[0]


def encode(masks: np.ndarray | torch.Tensor) -> list[Rle]:
    """Encode masks to RLE.

    Args:
        masks: ``(N, H, W)`` or ``(H, W)`` bool or uint8 (non-zero is foreground), numpy array
            or torch tensor (any device; moved to the CPU).

    Returns:
        One RLE per mask.
    """
    if not isinstance(masks, np.ndarray):
        masks = masks.detach().to("cpu").numpy()
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValidationError(f"masks must be (N, H, W) or (H, W), got shape {masks.shape}")
    if masks.dtype != np.uint8:
        masks = (masks if masks.dtype == bool else masks != 0).view(np.uint8)
    if masks.shape[0] == 0:
        return []
    # (N, H, W) C-order is exactly (H, W, N) F-order after a transpose: no copy when contiguous.
    fortran = np.asfortranarray(masks.transpose(1, 2, 0))
    return [_to_str_rle(r) for r in coco_mask.encode(fortran)]


def run_lengths(counts: str | bytes) -> np.ndarray:
    """The run lengths of a compressed COCO RLE string (vectorized; pycocotools' rleFrString).

    Each count is written in 5-bit groups, least significant first, as ``chr(48 + group)``
    with bit 0x20 meaning "more groups follow" and bit 0x10 of the last group the sign; from
    the fourth count on, each is stored as the difference to the count two places earlier.
    """
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    b = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (b < 0).any() or (b > 63).any():
        raise ValidationError("corrupt RLE counts: characters outside the COCO alphabet")
    last = np.flatnonzero((b & 0x20) == 0)
    if last.size == 0 or last[-1] != b.size - 1:
        raise ValidationError("corrupt RLE counts: the string ends inside a number")
    start = np.empty_like(last)
    start[0] = 0
    start[1:] = last[:-1] + 1
    group = np.repeat(np.arange(last.size), last - start + 1)
    shift = 5 * (np.arange(b.size) - start[group])
    x = np.add.reduceat((b & 0x1F) << shift, start)
    negative = (b[last] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * (last[negative] - start[negative] + 1))
    out: np.ndarray = x.copy()
    out[2::2] = np.cumsum(x[2::2])
    out[1::2] = np.cumsum(x[1::2])
    return out


def decode(rles: Sequence[Rle]) -> np.ndarray:
    """Decode RLEs of one size into a ``(N, H, W)`` bool array.

    One output buffer for all masks, filled run by run in numpy (about twice pycocotools'
    speed, identical output); returned as a strided view of the column-major buffer, strides
    ``(H*W, 1, H)``: no copy is made to reorder it.

    Raises:
        ValidationError: sizes differ, or the counts are corrupt (they must add up to H*W).
    """
    if not rles:
        raise ValidationError("decode needs at least one RLE (the size is unknown otherwise)")
    sizes = set()
    for r in rles:
        try:
            sizes.add((int(r["size"][0]), int(r["size"][1])))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValidationError(f"not a COCO RLE object ({exc!r})") from None
    if len(sizes) != 1:
        raise ValidationError(f"all RLEs must have one size to decode together, got {sizes}")
    ((h, w),) = sizes
    out = np.empty((len(rles), w * h), dtype=np.uint8)
    for n, r in enumerate(rles):
        counts = r["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            runs = np.asarray(counts, dtype=np.int64)
        else:
            runs = run_lengths(counts)
        if runs.size and (runs.min() < 0 or int(runs.sum()) != h * w):
            raise ValidationError(f"corrupt RLE: runs add up to {int(runs.sum())}, "
                                  f"not {h}x{w} = {h * w}")
        if runs.size == 0:
            if h * w:
                raise ValidationError("corrupt RLE: no runs for a non-empty mask")
            continue
        out[n] = np.repeat((np.arange(runs.size) & 1).astype(np.uint8), runs)
    masks: np.ndarray = out.reshape(len(rles), w, h).transpose(0, 2, 1).view(bool)
    return masks


def decode_to_tensor(rles: Sequence[Rle], height: int | None = None,
                     width: int | None = None) -> torch.Tensor:
    """Decode RLEs into a torch bool tensor ``(N, H, W)`` without copying the decoded pixels.

    The tensor is a strided view of pycocotools' column-major buffer (strides ``(H*W, 1, H)``):
    call ``.contiguous()`` only where a kernel needs it. With no RLEs, ``height`` and ``width``
    give the shape of the empty ``(0, H, W)`` result.
    """
    import torch

    if not rles:
        if height is None or width is None:
            raise ValidationError("decode_to_tensor([]) needs height and width")
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.from_numpy(decode(rles))


#: pycocotools' ``area`` counts the RLEs it is given in a uint8 (``np.array((n,),
#: dtype=np.uint8)``, an OverflowError under NumPy 2 from 256 on): at most this many a call.
COCO_AREA_CHUNK = 255


def area(rles: Sequence[Rle]) -> np.ndarray:
    """Foreground pixel count of each RLE, ``(N,)`` int64, for any number of RLEs.

    pycocotools' ``area``, asked per :data:`COCO_AREA_CHUNK` RLEs (it cannot take 256 at once).
    """
    if not rles:
        return np.zeros(0, dtype=np.int64)
    objs = [_to_coco(r) for r in rles]
    return np.concatenate([np.asarray(coco_mask.area(objs[at:at + COCO_AREA_CHUNK]),
                                      dtype=np.int64)
                           for at in range(0, len(objs), COCO_AREA_CHUNK)])


def bbox_of(rles: Sequence[Rle]) -> np.ndarray:
    """Tight boxes ``(N, 4)`` float64 as pixel ``[x, y, w, h]`` (COCO); zeros when empty."""
    if not rles:
        return np.zeros((0, 4), dtype=np.float64)
    return np.asarray(coco_mask.toBbox([_to_coco(r) for r in rles]), dtype=np.float64)


def iou_matrix(a: Sequence[Rle], b: Sequence[Rle]) -> np.ndarray:
    """IoU between every RLE of ``a`` and every RLE of ``b``, ``(len(a), len(b))`` float64."""
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    out = coco_mask.iou([_to_coco(r) for r in a], [_to_coco(r) for r in b], [0] * len(b))
    return np.asarray(out, dtype=np.float64).reshape(len(a), len(b))


def merge(rles: Sequence[Rle], height: int, width: int) -> Rle:
    """The union of RLEs (all of one size); an empty RLE when there are none."""
    if not rles:
        return empty_rle(height, width)
    return _to_str_rle(coco_mask.merge([_to_coco(r) for r in rles], 0))


def _polygon_vertices(index: int, poly: Any) -> np.ndarray:
    """One polygon as an ``(n, 2)`` float64 array, or a :class:`ValidationError` naming it."""
    try:
        raw = np.asarray(poly)
    except (ValueError, TypeError):  # ragged: numpy cannot make an array of it
        raise ValidationError(f"polygon {index} is not a sequence of (x, y) vertices: its "
                              "vertices differ in length or nesting") from None
    if raw.size == 0:  # no vertices: nothing to draw
        return np.zeros((0, 2), dtype=np.float64)
    found = ""
    if raw.dtype.kind == "O":
        bad = [v for v in raw.ravel()
               if isinstance(v, bool) or not isinstance(v, numbers.Real | decimal.Decimal)]
        if bad:
            found = f"found {type(bad[0]).__name__} {bad[0]!r:.40}"
    elif raw.dtype.kind not in "iuf":
        found = {"U": "text", "S": "bytes", "b": "booleans",
                 "c": "complex numbers"}.get(raw.dtype.kind, f"dtype {raw.dtype}")
    if found:
        raise ValidationError(f"polygon {index} holds vertex coordinates that are not numbers "
                              f"({found}); expected (x, y) pairs of floats")
    if raw.ndim > 2:
        raise ValidationError(f"polygon {index} is nested too deeply (shape {raw.shape}); each "
                              "polygon is a sequence of (x, y) vertices: pass several polygons "
                              "as separate entries of `polygons`")
    if raw.ndim != 2 or raw.shape[1] != 2:
        hint = {0: ": a single value", 1: ": a bare vertex or a flat list of numbers; "
                "`polygons` is a list of polygons"}.get(raw.ndim, "")
        raise ValidationError(f"polygon {index} must be a sequence of (x, y) vertices, got shape "
                              f"{raw.shape}{hint}")
    arr = raw.astype(np.float64)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise ValidationError(f"polygon {index} has a vertex that is NaN or infinite (vertex {k}: "
                              f"x={arr[k, 0]}, y={arr[k, 1]})")
    return arr


def polygons_to_rle(
    polygons: Iterable[Sequence[tuple[float, float]]], height: int, width: int,
    *, normalized: bool = True,
) -> Rle:
    """Rasterize polygons (their union) to one RLE at ``height`` x ``width``.

    Args:
        polygons: each a sequence of ``(x, y)`` vertices, closed implicitly.
        height, width: the image size in pixels.
        normalized: vertices in ``[0, 1]`` (CDF) when true, else in pixels.

    Degenerate input is handled: polygons with fewer than 3 vertices are skipped (pycocotools
    would read a 2-vertex list as a box), vertices slightly outside the image are clipped,
    zero-area polygons add nothing, and no polygon gives an empty mask.

    Raises:
        ValidationError: (a ``ValueError``) a polygon is malformed: a vertex is NaN or
            infinite, a coordinate is not a number, or a polygon is not a sequence of
            ``(x, y)`` pairs (ragged, a bare vertex, a flat list, nested too deeply). The
            message names the polygon by its index.
    """
    try:
        items = iter(polygons)
    except TypeError:
        raise ValidationError(f"polygons must be an iterable of polygons, got "
                              f"{type(polygons).__name__}") from None
    scale = np.array([float(width), float(height)] if normalized else [1.0, 1.0])
    arrays = [arr for index, poly in enumerate(items)
              if (arr := _polygon_vertices(index, poly)).shape[0] >= 3]
    if not arrays:
        return empty_rle(height, width)
    # All polygons scaled and clipped at once, rasterised by one pycocotools call.
    px = np.concatenate(arrays) * scale
    np.clip(px, 0.0, np.array([float(width), float(height)]), out=px)
    flat = px.ravel()
    ends = np.cumsum([2 * a.shape[0] for a in arrays]).tolist()
    parts = coco_mask.frPyObjects([flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)],
                                  height, width)
    if len(parts) == 1:
        return _to_str_rle(parts[0])
    return _to_str_rle(coco_mask.merge(parts, 0))


# --- tracing: masks to polygons along pixel corners -------------------------------------------
#
# The boundary of a mask is a set of unit edges between a foreground and a background pixel,
# directed so that the foreground is on the right (on screen, y down): top edges run right,
# right edges down, bottom edges left, left edges up. At each corner an edge continues with a
# right turn when it can, else straight on, else a left turn: the outline hugs its pixel, so the
# foreground is 4-connected (pixels touching only at a corner are separate parts) and the
# background 8-connected. Every edge has exactly one successor, so the boundary falls into
# closed loops: one outer loop per part (clockwise on screen) and one loop per hole
# (counter-clockwise).
#
# A hole is joined to the loop just above it by a zero-width cut: a vertical segment along the
# left edge of the hole's top-left pixel column, up through the part's own pixels to the first
# background pixel, walked down and back up. A rasteriser that fills by crossings (even-odd, as
# pycocotools does along each column, or non-zero winding) sees the cut's two copies cancel,
# so the single ring fills exactly the part's pixels, holes left empty.

_RIGHT, _DOWN, _LEFT, _UP = 0, 1, 2, 3
_INSET = 16  # inset rings (mask_to_inset_rings) are in units of 1/16 pixel
_DX = np.array([1, 0, -1, 0], dtype=np.int64)
_DY = np.array([0, 1, 0, -1], dtype=np.int64)


def _quarter(offset: np.ndarray) -> np.ndarray:
    """An inset ring's offset from a pixel corner, in 1/16 pixel, for an edge moved toward
    ``offset`` (-1, 0 or 1): +1 from a pixel's left or top side, -9 from its right or bottom
    side (7/16 into it), 0 along it. Truncated or rounded, the vertex is the pixel's."""
    return np.where(np.asarray(offset) < 0, -9, offset)


def _key(width: int, x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
    return (y * (width + 1) + x) * 4 + d  # type: ignore[no-any-return]


def _find(keys: np.ndarray, width: int, x: np.ndarray, y: np.ndarray, d: np.ndarray
          ) -> np.ndarray:
    """The node of each edge ``(x, y, d)`` among edges sorted by ``keys``, or -1 where there
    is no such edge."""
    want = _key(width, x, y, d)
    if keys.size == 0:
        return np.full(want.shape, -1, dtype=np.int64)
    pos = np.searchsorted(keys, want).clip(0, keys.size - 1)
    return np.where(keys[pos] == want, pos, -1)


class _EdgeLookup:
    """Finding boundary edges by corner and direction in sorted ``keys``."""

    keys: np.ndarray
    width: int

    def find(self, x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The node of each edge ``(x, y, d)``, or -1 where there is no such edge."""
        return _find(self.keys, self.width, x, y, d)

    def nodes(self, x: np.ndarray, y: np.ndarray, d: int) -> np.ndarray:
        """The nodes of edges ``(x[i], y[i], d)`` (they must exist)."""
        found = self.find(x, y, np.full(np.shape(x), d, dtype=np.int64))
        if (found < 0).any():  # cannot happen: callers name edges the mask's pixels imply
            k = int(np.flatnonzero(found < 0)[0])
            raise AssertionError(f"no boundary edge at ({x[k]}, {y[k]}) direction {d}")
        return found


class _Edges(_EdgeLookup):
    """The directed unit edges of a mask's boundary, as arrays: node ``i`` is the edge from
    corner ``(x[i], y[i])`` in direction ``d[i]``, ``succ[i]`` the edge that follows it and
    ``pred[i]`` the one before. Nodes are sorted by ``keys`` (corner in raster order, then
    direction)."""

    def __init__(self, m: np.ndarray) -> None:
        h, w = m.shape
        self.height, self.width = h, w
        p = np.pad(m, 1)
        inner = p[1:-1, 1:-1]
        # Which edges start at each corner (y, x), by direction: the flat index of (y, x, d) in
        # this array is the edge's key, so the edges come out of it sorted.
        at = np.zeros((h + 1, w + 1, 4), dtype=bool)
        at[:h, :w, _RIGHT] = inner & ~p[:-2, 1:-1]  # top edges, from the top-left corner
        at[:h, 1:, _DOWN] = inner & ~p[1:-1, 2:]    # right edges, from the top-right corner
        at[1:, 1:, _LEFT] = inner & ~p[2:, 1:-1]    # bottom edges, from the bottom-right corner
        at[1:, :w, _UP] = inner & ~p[1:-1, :-2]     # left edges, from the bottom-left corner
        flat = at.ravel()
        keys = np.flatnonzero(flat)
        y, rest = np.divmod(keys, 4 * (w + 1))
        x, d = np.divmod(rest, 4)
        # The successor of each edge: the first of right turn, straight on, left turn that
        # starts where the edge ends (one of them always does).
        base = keys - d + 4 * (_DY[d] * (w + 1) + _DX[d])  # the end corner's key, direction 0
        turn = np.where(flat[base + (d + 1) % 4], (d + 1) % 4,
                        np.where(flat[base + d], d, (d + 3) % 4))
        nxt = base + turn
        if not flat[nxt].all():  # cannot happen for a boundary; guards the invariant
            raise AssertionError("an edge of the mask's boundary has no successor")
        succ = np.searchsorted(keys, nxt)  # memory by edges, not by pixels
        pred = np.empty_like(succ)
        pred[succ] = np.arange(succ.size)
        self.keys = keys
        self.x, self.y, self.d, self.succ, self.pred = x, y, d, succ, pred



class _Boundary(_EdgeLookup):
    """The directed unit edges of a mask's boundary as a linked list of nodes.

    Node ``i`` is the start corner ``(x[i], y[i])`` of the segment to node ``succ[i]``; nodes
    added by :meth:`splice` carry the cuts.
    """

    def __init__(self, m: np.ndarray) -> None:
        e = _Edges(m)
        self.height, self.width = e.height, e.width
        self.keys = e.keys
        self.x: list[int] = e.x.tolist()
        self.y: list[int] = e.y.tolist()
        self.succ: list[int] = e.succ.tolist()
        self.pred: list[int] = e.pred.tolist()
        self._dirs, self._preds = e.d, e.pred

    def node(self, x: int, y: int, d: int) -> int:
        """The node of one edge (it must exist)."""
        return int(self.nodes(np.array([x]), np.array([y]), d)[0])

    def splice(self, at: int, loop: int) -> None:
        """Join the loop through node ``loop`` into the loop through node ``at``: a cut from
        ``at``'s corner to ``loop``'s, round that loop, and back along the cut."""
        before, last = self.pred[at], self.pred[loop]
        down = self._add(self.x[at], self.y[at])
        up = self._add(self.x[loop], self.y[loop])
        self.succ[before], self.pred[down] = down, before
        self.succ[down], self.pred[loop] = loop, down
        self.succ[last], self.pred[up] = up, last
        self.succ[up], self.pred[at] = at, up

    def inset(self) -> None:
        """Move every node into a pixel of the mask's boundary, in units of 1/16 pixel (call
        before any splice).

        Each edge moves along its normal into its foreground pixel: a left or top edge by 1/16
        pixel, a right or bottom edge by 9/16, so that it runs through the top-left quarter of
        its pixels. A node sits where the moved lines of its incoming and its own edge meet: in
        its pixel at a convex corner, in the foreground pixel that makes the turn at a concave
        one, on the moved line when the edge goes straight on.
        """
        d, dp = self._dirs, self._dirs[self._preds]
        nx, ny = -_DY[d], _DX[d]  # the inward normal: the edge's direction turned right
        straight = d == dp
        ox = np.where(straight, nx, nx - _DY[dp])
        oy = np.where(straight, ny, ny + _DX[dp])
        self.x = (np.asarray(self.x, dtype=np.int64) * _INSET + _quarter(ox)).tolist()
        self.y = (np.asarray(self.y, dtype=np.int64) * _INSET + _quarter(oy)).tolist()

    def insert_after(self, node: int, x: int, y: int) -> int:
        """A new node at ``(x, y)`` right after ``node`` (a point on ``node``'s segment keeps
        the path as it was)."""
        new, after = self._add(x, y), self.succ[node]
        self.succ[node], self.pred[new] = new, node
        self.succ[new], self.pred[after] = after, new
        return new

    def _add(self, x: int, y: int) -> int:
        self.x.append(x)
        self.y.append(y)
        self.succ.append(-1)
        self.pred.append(-1)
        return len(self.x) - 1

    def walk(self, start: int) -> list[int]:
        """The nodes of the loop through ``start``, in order."""
        out = [start]
        succ = self.succ
        i = succ[start]
        while i != start:
            out.append(i)
            i = succ[i]
        return out

    def corners(self, loops: Sequence[Sequence[int]]) -> list[list[tuple[int, int]]]:
        """Each loop's vertices: repeated corners and corners on a straight run dropped (the
        turning points of a zero-width cut are kept). All loops at once, in numpy."""
        if not loops:
            return []
        lens = np.fromiter((len(lp) for lp in loops), dtype=np.int64, count=len(loops))
        nodes = np.fromiter(itertools.chain.from_iterable(loops), dtype=np.int64,
                            count=int(lens.sum()))
        pts = np.stack([np.asarray(self.x, dtype=np.int64)[nodes],
                        np.asarray(self.y, dtype=np.int64)[nodes]], axis=1)
        return _as_tuples(*_corner_points(pts, lens))


def _corner_points(pts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loops of points ``pts`` (``(n, 2)``, loops of ``lens`` one after another) with repeated
    corners and corners on a straight run dropped (the turning points of a zero-width cut are
    kept): the kept points and each loop's new length."""
    if lens.size == 0:
        return pts, lens
    x, y = pts[:, 0], pts[:, 1]
    prev, _ = _cyclic_neighbours(lens)
    moved = (x != x[prev]) | (y != y[prev])
    if not moved.all():
        lens = _counts(moved, lens)
        x, y = x[moved], y[moved]
        prev, _ = _cyclic_neighbours(lens)
    _, nxt = _cyclic_neighbours(lens)
    ax, ay = x - x[prev], y - y[prev]
    bx, by = x[nxt] - x, y[nxt] - y
    keep = (ax * by != ay * bx) | (ax * bx + ay * by < 0)
    return np.stack([x[keep], y[keep]], axis=1), _counts(keep, lens)


def _as_tuples(pts: np.ndarray, lens: np.ndarray) -> list[list[tuple[int, int]]]:
    """Loops of integer points as lists of ``(x, y)`` tuples."""
    flat = list(zip(pts[:, 0].tolist(), pts[:, 1].tolist(), strict=True))
    out, at = [], 0
    for n in lens.tolist():
        out.append(flat[at:at + n])
        at += n
    return out


def _starts(lens: np.ndarray) -> np.ndarray:
    return np.cumsum(lens) - lens  # type: ignore[no-any-return]


def _counts(flags: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """How many of each loop's items are flagged (loops of ``lens`` one after another)."""
    return np.add.reduceat(flags.astype(np.int64), _starts(lens))  # type: ignore[no-any-return]


def _cyclic_neighbours(lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For loops of ``lens`` stored one after another (each at least one item): each item's
    previous and next index within its own loop."""
    ends = np.cumsum(lens)
    starts = ends - lens
    idx = np.arange(int(ends[-1]) if ends.size else 0, dtype=np.int64)
    prev = idx - 1
    prev[starts] = ends - 1
    nxt = idx + 1
    nxt[ends - 1] = starts
    return prev, nxt


def _as_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValidationError(f"mask must be (H, W), got shape {m.shape}")
    return m


def _cropped(mask: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """The mask cut to its bounding box and the box's top-left ``(x, y)``; ``None`` if empty
    (tracing then costs the object's size, not the image's)."""
    m = _as_mask(mask)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], int(cols[0]), int(rows[0])


def _shifted(polys: list[list[tuple[int, int]]], x0: int, y0: int
             ) -> list[list[tuple[int, int]]]:
    if x0 == 0 and y0 == 0:
        return polys
    return [[(x + x0, y + y0) for x, y in p] for p in polys]


Outline = Literal["exact", "filled", "loops"]
"""What :func:`mask_to_polygons` traces: see there."""


def mask_to_polygons(mask: np.ndarray, *, outline: Outline = "exact"
                     ) -> list[list[tuple[int, int]]]:
    """Trace a binary mask into polygons along pixel corners (pixel coordinates).

    By default the polygons are exact: one ring per part with its holes joined in, the rings
    of :func:`mask_to_rings`, and pycocotools' rasterisation of them as one COCO
    ``segmentation`` (a union of polygons) gives back exactly the mask, holes and every part
    kept. Parts are 4-connected (pixels that touch only at a corner are separate parts);
    rings run clockwise on screen, collinear vertices dropped.

    Args:
        mask: ``(H, W)`` bool or 0/1 array.
        outline: ``"exact"`` (the default, see above); ``"filled"`` each part's outer outline
            alone, clockwise: lossy, a union of them fills every hole (CDF's polygons, which
            cannot carry holes); ``"loops"`` every boundary loop as a polygon of its own,
            outer outlines clockwise and hole outlines counter-clockwise (a union fills the
            holes too: use the orientation to tell them apart).

    Returns:
        A list of polygons, each a list of integer ``(x, y)`` corners; ``[]`` for an empty
        mask. :func:`mask_to_polygon_arrays` gives the same polygons as arrays.

    Raises:
        ValidationError: ``mask`` is not 2-D, or ``outline`` is none of the above.
    """
    return _as_tuples(*mask_to_polygon_arrays(mask, outline=outline))


def mask_to_polygon_arrays(mask: np.ndarray, *, outline: Outline = "exact"
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The polygons of :func:`mask_to_polygons` as two arrays, for callers that go on in
    numpy (no Python tuple per vertex is made).

    Args:
        mask: ``(H, W)`` bool or 0/1 array.
        outline: ``"exact"``, ``"filled"`` or ``"loops"``, as for :func:`mask_to_polygons`.

    Returns:
        ``(vertices, lengths)``: every polygon's integer ``(x, y)`` corners in pixels, the
        polygons one after another, as an ``(n, 2)`` int64 array; and each polygon's number of
        vertices, ``(k,)`` int64 (``n`` is their sum). Polygon ``i`` is
        ``vertices[s:s + lengths[i]]`` with ``s = lengths[:i].sum()``.

    Raises:
        ValidationError: ``mask`` is not 2-D, or ``outline`` is none of the above.
    """
    if outline not in ("exact", "filled", "loops"):
        raise ValidationError(f"outline must be 'exact', 'filled' or 'loops', got {outline!r}")
    found = _cropped(mask)
    if found is None:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    m, x0, y0 = found
    pts, lens = _ring_points(m) if outline == "exact" else _loop_points(m, outline)
    return pts + np.array([x0, y0], dtype=np.int64), lens


def _loop_points(m: np.ndarray, outline: Outline) -> tuple[np.ndarray, np.ndarray]:
    """Every boundary loop (``"loops"``) or the clockwise ones alone (``"filled"``), in the
    order of their first node, each from that node: corners and lengths."""
    e = _Edges(m)
    order, lens = _loop_order(e.succ, _cycle_firsts(e.succ))
    pts, lens = _corner_points(np.stack([e.x[order], e.y[order]], axis=1), lens)
    _, nxt = _cyclic_neighbours(lens)
    terms = pts[:, 0] * pts[nxt, 1] - pts[nxt, 0] * pts[:, 1]
    signed = np.add.reduceat(terms, _starts(lens))  # twice the area; > 0: clockwise on screen
    keep = (signed > 0) | ((signed < 0) if outline == "loops" else False)
    return pts[np.repeat(keep, lens)], lens[keep]


def _path_graph(succ: np.ndarray, missing: int = -1) -> Any:
    """``succ`` as a sparse graph, an edge from each node to its successor (none from
    ``missing``)."""
    from scipy.sparse import csr_matrix

    n = succ.size
    has = np.ones(n, dtype=bool)
    if missing >= 0:
        has[missing] = False
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(has, out=indptr[1:])
    return csr_matrix((np.ones(int(indptr[-1]), dtype=np.int8), succ[has], indptr),
                      shape=(n, n))


def _cycle_firsts(succ: np.ndarray) -> np.ndarray:
    """The first (lowest) node of each loop of ``succ``, in increasing order."""
    from scipy.sparse.csgraph import connected_components

    count, labels = connected_components(_path_graph(succ), directed=True, connection="strong")
    # Labels come in the order of each loop's first node: a node starts a loop where its label
    # passes every label before it.
    new = np.empty(labels.size, dtype=bool)
    new[:1] = True
    np.greater(labels[1:], np.maximum.accumulate(labels)[:-1], out=new[1:])
    first = np.flatnonzero(new)
    if first.size != count:  # numbered in another order: sort them out
        first = np.sort(np.unique(labels, return_index=True)[1])
    return first


def _loop_order(succ: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walk the loops through ``starts`` (one node on each loop; every node on one of them):
    all nodes in walking order, loop after loop, each from its start; and the loops' lengths.

    The loops are cut before their starts and chained into one path, which scipy's
    depth-first order walks in C.
    """
    from scipy.sparse.csgraph import depth_first_order

    n = succ.size
    pred = np.empty_like(succ)
    pred[succ] = np.arange(n)
    ends = pred[starts]  # the last node of each loop
    path = succ.copy()
    path[ends[:-1]] = starts[1:]
    order = depth_first_order(_path_graph(path, int(ends[-1])), int(starts[0]), directed=True,
                              return_predecessors=False).astype(np.int64)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(order.size)
    at = pos[starts]
    if order.size != n or (np.diff(at) <= 0).any():  # guards the invariant
        raise AssertionError("the loops' starts do not name every loop once")
    return order, np.diff(np.append(at, n))


def _hole_cuts(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each hole (a bounded 8-connected background region), in arrays ``(r, c, r2)``: its
    top-left pixel ``(r, c)`` in row-major order and the row ``r2`` of the first background
    pixel above it in column ``c`` (-1: none up to the image's top edge). Column ``c`` is
    foreground from row ``r2 + 1`` to ``r - 1``: one part's pixels, the path of the hole's
    cut."""
    from scipy import ndimage

    h, w = m.shape
    padded, _ = ndimage.label(np.pad(~m, 1, constant_values=True),
                              structure=np.ones((3, 3), dtype=bool))
    outside = int(padded[0, 0])  # the padding joins all of the outside
    flat = padded[1:-1, 1:-1].ravel()
    idx = np.flatnonzero(flat)
    labels, first = np.unique(flat[idx], return_index=True)
    r, c = np.divmod(idx[first][labels != outside].astype(np.int64), w)
    if r.size == 0:
        return r, c, r.copy()
    # The last background row at or above each pixel (-1: none); a hole never starts on row 0.
    last_bg = np.maximum.accumulate(np.where(m, -1, np.arange(h)[:, None]), axis=0)
    r2 = np.where(r > 0, last_bg[np.maximum(r - 1, 0), c], -1).astype(np.int64)
    return r, c, r2


def _holes(m: np.ndarray) -> list[tuple[int, int, int]]:
    """:func:`_hole_cuts` as a list of ``(r, c, r2)``."""
    r, c, r2 = _hole_cuts(m)
    return list(zip(r.tolist(), c.tolist(), r2.tolist(), strict=True))


def _part_starts(b: _Boundary | _Edges, labels: np.ndarray) -> np.ndarray:
    """For each labelled part, in raster order of its top-left pixel, the node of that pixel's
    top edge (on the part's outer loop)."""
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    _, first = np.unique(flat[idx], return_index=True)
    r, c = np.divmod(np.sort(idx[first]), labels.shape[1])
    return b.nodes(c, r, _RIGHT)


def _parts(m: np.ndarray) -> tuple[_Boundary, list[int]]:
    """The boundary with every hole spliced into its part's loop, and for each part (in raster
    order of its top-left pixel) a node of its loop."""
    from scipy import ndimage

    b = _Boundary(m)
    for r, c, r2 in _holes(m):
        # The cut: up column c from the hole's top-left pixel (r, c) to the first background
        # pixel (row r2, or the image's top edge), along the column's left edge.
        target = b.node(c, r2 + 1, _RIGHT)   # the top edge of pixel (r2 + 1, c)
        hole = b.node(c, r, _DOWN)          # the hole's edge leaving corner (c, r)
        b.splice(target, hole)
    fg, _ = ndimage.label(m)
    return b, _part_starts(b, fg).tolist()


def _ring_points(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rings of :func:`mask_to_rings` for a cropped mask, corners and lengths: what
    :func:`_parts` and a walk of each part give, every step done on whole arrays.

    Before the cuts, the first (lowest) node of a part's outer loop is the top edge of the
    part's top-left pixel, and the first node of a hole's loop the edge leaving the corner
    ``(c, r)`` of the hole's top-left pixel downwards: the loops' first nodes tell the parts
    and the holes apart, in the raster order of those pixels. A hole's cut goes up to the
    nearest top edge in column ``c`` above row ``r``. The cuts touch disjoint nodes, so they
    are spliced in all at once, each reading the boundary as it was.
    """
    e = _Edges(m)
    first = _cycle_firsts(e.succ)
    kind = e.d[first]
    if (kind > _DOWN).any():  # cannot happen: guards the invariant
        raise AssertionError("a boundary loop starts neither at a part nor at a hole")
    starts, loop = first[kind == _RIGHT], first[kind == _DOWN]
    x, y, succ = e.x, e.y, e.succ
    if loop.size:
        # The top edges by column, then row: the cut's end is the last one above the hole.
        tops = np.flatnonzero(e.d == _RIGHT)
        col_key = e.x[tops] * (e.height + 1) + e.y[tops]
        by_col = np.argsort(col_key)
        want = e.x[loop] * (e.height + 1) + e.y[loop]
        at = tops[by_col[np.searchsorted(col_key[by_col], want) - 1]]
        if (e.x[at] != e.x[loop]).any() or (e.y[at] >= e.y[loop]).any():  # guards
            raise AssertionError("a hole has no top edge above it in its column")
        n = succ.size
        down = n + 2 * np.arange(loop.size, dtype=np.int64)  # the cut's new nodes: down, up
        up = down + 1
        succ = np.concatenate([succ, np.empty(2 * loop.size, dtype=np.int64)])
        succ[e.pred[at]], succ[down] = down, loop
        succ[e.pred[loop]], succ[up] = up, at
        x = np.concatenate([x, np.stack([x[at], x[loop]], axis=1).ravel()])
        y = np.concatenate([y, np.stack([y[at], y[loop]], axis=1).ravel()])
    order, lens = _loop_order(succ, starts)
    return _corner_points(np.stack([x[order], y[order]], axis=1), lens)


def mask_to_rings(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Trace a binary mask into one closed ring per part, its holes joined in (COCO polygons).

    Each part (4-connected; pixels touching only at a corner are separate parts) is one ring
    along pixel corners, clockwise on screen; each of its holes is walked counter-clockwise and
    joined to the ring by a zero-width cut (a segment walked there and back). pycocotools'
    rasterisation of the rings, as one COCO ``segmentation`` (a union of polygons), gives back
    exactly the mask: holes stay empty, every part and every one-pixel part is kept.

    Args:
        mask: ``(H, W)`` bool or 0/1 array.

    Returns:
        The rings in raster order of each part's top-left pixel, each a list of integer
        ``(x, y)`` corners in pixels (``(0, 0)`` the top-left corner of the image).
        :func:`mask_to_polygon_arrays` gives the same rings as arrays.
    """
    return _as_tuples(*mask_to_polygon_arrays(mask))


def mask_to_ring(mask: np.ndarray) -> list[tuple[int, int]]:
    """Trace a binary mask into a single closed ring: every part and hole in one polygon.

    For formats that take one polygon per object (YOLO segmentation, Label Studio polygons):
    the rings of :func:`mask_to_rings` are joined, each part to the nearest earlier part (by
    bounding box) at their closest corners, by zero-width cuts. Under even-odd and non-zero
    filling alike, the cuts cancel and the ring fills exactly the mask's pixels when a pixel is
    taken as filled where its centre is inside (pycocotools' rule for pixel-corner polygons).
    A filler that also paints the outline (OpenCV's ``fillPoly``) paints the cuts too: lines
    one pixel wide.

    Returns:
        Integer ``(x, y)`` corners in pixels; ``[]`` for an empty mask.
    """
    found = _cropped(mask)
    if found is None:
        return []
    m, x0, y0 = found
    b, starts = _parts(m)
    if len(starts) > 1:
        _join_parts(b, starts)
    return _shifted(b.corners([b.walk(starts[0])]), x0, y0)[0]


def _join_parts(b: _Boundary, starts: list[int]) -> None:
    """Splice every part's loop into one: each part to the nearest earlier part (by bounding
    box gap), between their closest corners."""
    from scipy.spatial import cKDTree

    loops = [b.walk(s) for s in starts]
    lens = np.fromiter((len(lp) for lp in loops), dtype=np.int64, count=len(loops))
    nodes = np.fromiter(itertools.chain.from_iterable(loops), dtype=np.int64,
                        count=int(lens.sum()))
    xy = np.stack([np.asarray(b.x, dtype=np.int64)[nodes],
                   np.asarray(b.y, dtype=np.int64)[nodes]], axis=1)
    prev, nxt = _cyclic_neighbours(lens)
    turn = (xy - xy[prev] != xy[nxt] - xy).any(axis=1)  # corners: candidate ends of a cut
    at = _starts(lens)
    boxes = np.stack([np.minimum.reduceat(xy[:, 0], at), np.minimum.reduceat(xy[:, 1], at),
                      np.maximum.reduceat(xy[:, 0], at), np.maximum.reduceat(xy[:, 1], at)], 1)
    splits = np.cumsum(_counts(turn, lens))[:-1]
    corner_nodes = np.split(nodes[turn], splits)
    corner_xy = np.split(xy[turn], splits)
    trees: dict[int, Any] = {}
    for k in range(1, lens.size):
        gap_x = np.maximum(0, np.maximum(boxes[:k, 0] - boxes[k, 2], boxes[k, 0] - boxes[:k, 2]))
        gap_y = np.maximum(0, np.maximum(boxes[:k, 1] - boxes[k, 3], boxes[k, 1] - boxes[:k, 3]))
        j = int(np.argmin(gap_x * gap_x + gap_y * gap_y))
        tree = trees.get(j)
        if tree is None:
            tree = trees[j] = cKDTree(corner_xy[j])
        dist, near = tree.query(corner_xy[k])
        i = int(np.argmin(dist))
        b.splice(int(corner_nodes[j][int(near[i])]), int(corner_nodes[k][i]))


# --- inset rings: for fillers that take each vertex to a pixel and paint the outline ---------
#
# OpenCV's fillPoly takes integer vertices as pixel centres and paints the polygon's outline as
# well as its inside; its callers make the vertices integers by truncating (Ultralytics'
# polygon2mask: ``astype(int32)``) or by rounding (supervision: ``np.round``). A ring along pixel
# corners then grows by a pixel on its right and bottom edges, and a zero-width cut becomes a
# line one pixel wide. An inset ring keeps every vertex in the top-left quarter of a foreground
# pixel (1/16 pixel from the quarter's sides): truncated or rounded, the vertices are pixels of
# the mask's own boundary, every edge runs along a row or a column of foreground pixels, so the
# painted outline is foreground and the inside is what the corner ring encloses. A hole's cut
# runs down a column of the part's own pixels; parts that touch at a corner join there (the line
# between two diagonal neighbours paints no third pixel).

InsetParts = Literal["separate", "joined"]
"""How :func:`mask_to_inset_rings` treats an object in several pieces: see there."""


def _touch_pairs(m: np.ndarray, labels: np.ndarray, b: _Boundary
                 ) -> list[tuple[int, int, int, int]]:
    """Pixels of two parts that touch only at a corner: ``(part, part, node, node)``, the nodes
    of each pixel's boundary that start at the shared corner."""
    out: list[tuple[int, int, int, int]] = []
    for diagonal, first, second, dirs in (
            # (r, c) and (r+1, c+1): the first's bottom edge and the second's top edge
            (m[:-1, :-1] & m[1:, 1:] & ~m[:-1, 1:] & ~m[1:, :-1], (0, 0), (1, 1),
             (_LEFT, _RIGHT)),
            # (r, c+1) and (r+1, c): the first's left edge and the second's right edge
            (m[:-1, 1:] & m[1:, :-1] & ~m[:-1, :-1] & ~m[1:, 1:], (0, 1), (1, 0),
             (_UP, _DOWN))):
        r, c = np.nonzero(diagonal)
        x, y = c + 1, r + 1  # the shared corner
        out.extend(zip(labels[r + first[0], c + first[1]].tolist(),
                       labels[r + second[0], c + second[1]].tolist(),
                       b.nodes(x, y, dirs[0]).tolist(), b.nodes(x, y, dirs[1]).tolist(),
                       strict=True))
    return out


def _inset_loops(m: np.ndarray, parts: InsetParts) -> tuple[_Boundary, list[int]]:
    """The inset boundary with holes cut in and pieces joined; a node of each ring."""
    from scipy import ndimage

    b = _Boundary(m)
    b.inset()
    s = _INSET
    for r, c, r2 in _holes(m):
        # The cut runs 1/16 pixel right of column c's left edge, from the moved top edge of
        # pixel (r2 + 1, c) down to the hole's moved edge along the bottom of pixel (r - 1, c).
        top = b.insert_after(b.node(c, r2 + 1, _RIGHT), s * c + 1, s * (r2 + 1) + 1)
        hole = b.insert_after(b.node(c + 1, r, _LEFT), s * c + 1, s * r - 9)
        b.splice(top, hole)
    labels, n = ndimage.label(m)
    starts = _part_starts(b, labels).tolist()
    group = list(range(n + 1))  # union-find over 4-connected parts touching at corners

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for p, q, at, loop in _touch_pairs(m, labels, b):
        rp, rq = root(p), root(q)
        if rp != rq:
            group[max(rp, rq)] = min(rp, rq)
            b.splice(at, loop)
    # Parts are labelled in raster order of their top-left pixel, as ``starts`` is ordered.
    firsts = [starts[i - 1] for i in range(1, n + 1) if root(i) == i]
    if parts == "joined" and len(firsts) > 1:
        _join_parts(b, firsts)
        return b, firsts[:1]
    return b, firsts


def mask_to_inset_rings(mask: np.ndarray, *, parts: InsetParts = "separate"
                        ) -> list[list[tuple[float, float]]]:
    """Trace a binary mask into rings that OpenCV's ``fillPoly`` paints back exactly.

    For polygon readers that take each vertex to a pixel, by truncating (Ultralytics'
    ``polygon2mask``) or by rounding (supervision's YOLO and COCO readers), and fill with
    ``cv2.fillPoly``, which paints the outline too: every vertex lies in the top-left quarter
    of a boundary pixel of the mask, 1/16 pixel from the quarter's sides, holes are joined to
    their piece by a zero-width cut down a column of its own pixels, and pixels that touch only
    at a corner are joined there; the painted outline never leaves the mask. Vertices are
    multiples of 1/16 pixel: exact through any text precision that keeps them less than 1/16
    pixel off. (A filler that takes a pixel when its centre is inside, pycocotools' rule, misses
    the right and bottom boundary pixels: use :func:`mask_to_rings` for such readers.)

    Args:
        mask: ``(H, W)`` bool or 0/1 array.
        parts: ``"separate"`` (the default): one ring per piece (8-connected: pixels touching
            at a corner are one piece), each exact; ``"joined"``: one ring for the whole mask,
            pieces joined by zero-width cuts between their closest vertices: OpenCV paints
            each such cut as a line one pixel wide across the background.

    Returns:
        The rings in raster order of each piece's top-left pixel, each a list of ``(x, y)``
        vertices in pixels (``(0, 0)`` the top-left corner of the image); ``[]`` for an empty
        mask. A ring has at least four vertices.

    Raises:
        ValidationError: ``mask`` is not 2-D, or ``parts`` is neither of the above.
    """
    if parts not in ("separate", "joined"):
        raise ValidationError(f"parts must be 'separate' or 'joined', got {parts!r}")
    found = _cropped(mask)
    if found is None:
        return []
    m, x0, y0 = found
    b, starts = _inset_loops(m, parts)
    s = float(_INSET)
    return [[(x / s + x0, y / s + y0) for x, y in ring]
            for ring in b.corners([b.walk(i) for i in starts])]
