"""Masks, polygons and COCO run-length encoding (RLE): pure functions, no I/O.

Pixel convention (the same as pycocotools and :mod:`cogseg_ml.prompts`): continuous pixel
coordinates run from ``0`` (left/top edge of the first pixel) to ``width``/``height``; pixel
``(row r, column c)`` is the unit square ``[c, c+1) x [r, r+1)``. A normalized vertex ``x``
lands at pixel coordinate ``x * width``, so ``x = 0.5`` in a 640-wide image is the boundary
between columns 319 and 320. pycocotools fills a pixel when the polygon covers its square (edges
falling exactly on a pixel boundary include the pixel to their right/below), so a polygon traced
along pixel corners rasterizes back to exactly the pixels it was traced from.

RLE objects are COCO's ``{"size": [h, w], "counts": str}`` (column-major runs, first run
background), JSON-safe: ``counts`` is always ``str`` here. Masks in and out are row-major
``(N, H, W)``; the Fortran-order detail of pycocotools stays inside this module.
"""

from __future__ import annotations

import decimal
import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from pycocotools import mask as coco_mask

from cogseg_ml.errors import ValidationError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Rle",
    "bbox_of",
    "decode",
    "decode_to_tensor",
    "empty_rle",
    "encode",
    "iou_matrix",
    "mask_to_polygons",
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


def area(rles: Sequence[Rle]) -> np.ndarray:
    """Foreground pixel count of each RLE, ``(N,)`` int64."""
    if not rles:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(coco_mask.area([_to_coco(r) for r in rles]), dtype=np.int64)


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
    sx, sy = (float(width), float(height)) if normalized else (1.0, 1.0)
    parts: list[dict[str, Any]] = []
    for index, poly in enumerate(items):
        arr = _polygon_vertices(index, poly)
        if arr.shape[0] < 3:
            continue
        px = np.empty_like(arr)
        px[:, 0] = np.clip(arr[:, 0] * sx, 0.0, float(width))
        px[:, 1] = np.clip(arr[:, 1] * sy, 0.0, float(height))
        parts.extend(coco_mask.frPyObjects([px.ravel().tolist()], height, width))
    if not parts:
        return empty_rle(height, width)
    if len(parts) == 1:
        return _to_str_rle(parts[0])
    return _to_str_rle(coco_mask.merge(parts, 0))


# Directions of travel along pixel edges (dx, dy), image coordinates (y down).
_RIGHT, _DOWN, _LEFT, _UP = 0, 1, 2, 3
_STEP = ((1, 0), (0, 1), (-1, 0), (0, -1))


def mask_to_polygons(mask: np.ndarray, *, holes: bool = False) -> list[list[tuple[int, int]]]:
    """Trace a binary mask into polygons along pixel corners (pixel coordinates).

    The outline follows pixel edges, so :func:`polygons_to_rle` of the result reproduces the
    mask exactly (without holes). Outer outlines run clockwise on screen; pixels that touch
    only at a corner become separate polygons (4-connectivity). Collinear vertices are dropped.

    Args:
        mask: ``(H, W)`` bool or 0/1 array.
        holes: also return hole outlines (counter-clockwise). CDF polygons are read as a union
            of filled regions, so holes are left out by default.

    Returns:
        A list of polygons, each a list of integer ``(x, y)`` corners.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValidationError(f"mask must be (H, W), got shape {m.shape}")
    p = np.pad(m, 1)
    inner = p[1:-1, 1:-1]
    # Edge starts (x, y) in pixel-corner coordinates, per direction, inside on the right.
    starts: list[tuple[np.ndarray, np.ndarray, int]] = []
    r, c = np.nonzero(inner & ~p[:-2, 1:-1])          # top edges, travel right
    starts.append((c, r, _RIGHT))
    r, c = np.nonzero(inner & ~p[1:-1, 2:])           # right edges, travel down
    starts.append((c + 1, r, _DOWN))
    r, c = np.nonzero(inner & ~p[2:, 1:-1])           # bottom edges, travel left
    starts.append((c + 1, r + 1, _LEFT))
    r, c = np.nonzero(inner & ~p[1:-1, :-2])          # left edges, travel up
    starts.append((c, r + 1, _UP))

    out_edges: dict[tuple[int, int], list[int]] = {}
    for xs, ys, d in starts:
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            out_edges.setdefault((x, y), []).append(d)

    polygons: list[list[tuple[int, int]]] = []
    while out_edges:
        start, dirs = next(iter(out_edges.items()))
        d = dirs.pop()
        if not dirs:
            del out_edges[start]
        verts: list[tuple[int, int]] = [start]
        x, y = start
        prev_d = d
        while True:
            x, y = x + _STEP[d][0], y + _STEP[d][1]
            if (x, y) == start:
                break
            options = out_edges.get((x, y))
            if not options:  # cannot happen for a valid boundary; stop safely
                break
            # Prefer a right turn, then straight, then left: hugs the current pixel so that
            # corner-touching pixels end in separate outlines.
            for turn in (1, 0, 3):
                nd = (d + turn) % 4
                if nd in options:
                    break
            else:
                nd = options[0]
            options.remove(nd)
            if not options:
                del out_edges[(x, y)]
            if nd != d:
                verts.append((x, y))
            d = nd
        # The start vertex is a corner only if the closing direction differs from the first.
        if len(verts) > 1 and d == prev_d:
            verts = verts[1:]
        if len(verts) < 3:
            continue
        xs_a = np.asarray([v[0] for v in verts], dtype=np.int64)
        ys_a = np.asarray([v[1] for v in verts], dtype=np.int64)
        signed = int((xs_a * np.roll(ys_a, -1) - np.roll(xs_a, -1) * ys_a).sum())
        if signed > 0 or (holes and signed < 0):
            polygons.append(verts)
    return polygons
