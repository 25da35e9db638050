"""Masks shaped like the COCO segments peers report losing: holes, islands in holes, several
parts, one-pixel parts, pixels touching only at a corner, shapes cut by the image border."""

from __future__ import annotations

import numpy as np


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r  # type: ignore[no-any-return]


def donut(h: int, w: int) -> np.ndarray:
    """A ring: one hole (a tyre, a flange)."""
    return _disk(h, w, h / 2, w / 2, min(h, w) * 0.4) & ~_disk(h, w, h / 2, w / 2, min(h, w) * 0.2)


def target(h: int, w: int) -> np.ndarray:
    """A ring with an island in its hole (a valve wheel's hub)."""
    return donut(h, w) | _disk(h, w, h / 2, w / 2, min(h, w) * 0.08)


def wheel(h: int, w: int) -> np.ndarray:
    """A rim, a hub and four spokes: four holes."""
    m = target(h, w)
    r = min(h, w)
    cy, cx = h // 2, w // 2
    m[cy - 1:cy + 2, int(cx - r * 0.4):int(cx + r * 0.4)] = True
    m[int(cy - r * 0.4):int(cy + r * 0.4), cx - 1:cx + 2] = True
    return m


def figure_eight(h: int, w: int) -> np.ndarray:
    """Two holes one above the other (the letter B, a chain link)."""
    r = min(h / 4, w / 2) * 0.9
    top = _disk(h, w, h / 4, w / 2, r) & ~_disk(h, w, h / 4, w / 2, r * 0.5)
    bottom = _disk(h, w, 3 * h / 4, w / 2, r) & ~_disk(h, w, 3 * h / 4, w / 2, r * 0.5)
    return top | bottom


def frame_at_border(h: int, w: int) -> np.ndarray:
    """A window frame cut by the image's top-left corner: a hole, parts on the border."""
    m = np.zeros((h, w), dtype=bool)
    m[: h // 2, : w // 2] = True
    m[3: h // 2 - 3, 3: w // 2 - 3] = False
    m[h - 3:, w - 3:] = True  # a second part in the other corner
    return m


def scattered(h: int, w: int) -> np.ndarray:
    """Several parts: a block, a one-pixel part, pixels touching only at a corner, a hole of
    one pixel."""
    m = np.zeros((h, w), dtype=bool)
    m[h // 4: h // 2, w // 4: w // 2] = True
    m[h // 3, w // 3] = False  # a one-pixel hole
    m[h - 2, 1] = True  # a one-pixel part
    m[1, w - 3] = m[2, w - 2] = m[3, w - 3] = True  # corner-touching pixels
    return m


SHAPES = {"donut": donut, "target": target, "wheel": wheel, "figure_eight": figure_eight,
          "frame_at_border": frame_at_border, "scattered": scattered}


def random_masks(rng: np.random.Generator, n: int, max_side: int = 40) -> list[np.ndarray]:
    """Random masks of every kind: noise of any density (holes, islands, one-pixel parts,
    corner touches everywhere), blobs with punched holes, checkerboards, empty and full."""
    out = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, max_side, size=2))
        kind = i % 5
        if kind == 0:
            m = rng.random((h, w)) < rng.random()
        elif kind == 1:  # a blob with holes punched into it
            m = _disk(h, w, h / 2, w / 2, max(h, w) * 0.45) & (rng.random((h, w)) > 0.15)
        elif kind == 2:  # checkerboard patches: diagonal touches
            m = ((np.add.outer(np.arange(h), np.arange(w)) % 2) == 0) & (rng.random((h, w)) < 0.8)
        elif kind == 3:
            m = np.zeros((h, w), dtype=bool)
            m[rng.integers(0, h, 3), rng.integers(0, w, 3)] = True  # one-pixel parts
        else:
            m = np.ones((h, w), dtype=bool) if i % 2 else np.zeros((h, w), dtype=bool)
            if h > 2 and w > 2:
                m[1:-1, 1:-1] = rng.random((h - 2, w - 2)) < 0.5
        out.append(m)
    return out


def _blank(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w), dtype=bool)


def thin_ring(h: int, w: int) -> np.ndarray:
    """A ring three pixels wide (a gasket): every pixel on an outline."""
    return _disk(h, w, h / 2, w / 2, min(h, w) * 0.3) & ~_disk(h, w, h / 2, w / 2,
                                                                min(h, w) * 0.3 - 3)


def pixel_ring(h: int, w: int) -> np.ndarray:
    """The eight pixels around a one-pixel hole."""
    m = _blank(h, w)
    m[h // 2 - 1: h // 2 + 2, w // 2 - 1: w // 2 + 2] = True
    m[h // 2, w // 2] = False
    return m


def two_blobs(h: int, w: int) -> np.ndarray:
    """Two blocks far apart (an object seen either side of a pipe)."""
    m = _blank(h, w)
    m[h // 8: h // 3, w // 8: w // 3] = True
    m[2 * h // 3: 7 * h // 8, 2 * w // 3: 7 * w // 8] = True
    return m


def pixel_and_line(h: int, w: int) -> np.ndarray:
    """A one-pixel part and a horizontal line one pixel thick."""
    m = _blank(h, w)
    m[h // 4, w // 4] = True
    m[3 * h // 4, w // 8: 7 * w // 8] = True
    return m


def lines(h: int, w: int) -> np.ndarray:
    """Lines one pixel thick: vertical, and diagonal both ways (a cable, a railing)."""
    m = _blank(h, w)
    m[h // 8: 7 * h // 8, w // 8] = True
    n = min(h, w) // 2
    k = np.arange(n)
    m[h // 4 + k, w // 4 + k] = True
    m[h // 4 + k, 3 * w // 4 + 4 - k] = True
    return m


def checker(h: int, w: int) -> np.ndarray:
    """A checkerboard patch: pixels touching only at corners, in both diagonals."""
    m = _blank(h, w)
    r, c = np.mgrid[0:h // 3, 0:w // 3]
    m[h // 3: h // 3 + h // 3, w // 3: w // 3 + w // 3] = (r + c) % 2 == 0
    return m


def full(h: int, w: int) -> np.ndarray:
    """The whole image."""
    return np.ones((h, w), dtype=bool)


def border_pieces(h: int, w: int) -> np.ndarray:
    """Pieces on every edge and corner of the image, a one-pixel one in each corner."""
    m = _blank(h, w)
    m[0, 0] = m[0, w - 1] = m[h - 1, 0] = m[h - 1, w - 1] = True
    m[0, w // 4: w // 2] = True
    m[h // 4: h // 2, w - 1] = True
    m[h - 3:, w // 2: 3 * w // 4] = True
    m[h // 2: 3 * h // 4, :2] = True
    return m


#: Every shape a polygon reader gets wrong in some way: holes, islands in holes, several parts,
#: one-pixel parts and lines, pixels touching at a corner, parts on the image's border.
STRESS = {**SHAPES, "thin_ring": thin_ring, "pixel_ring": pixel_ring, "two_blobs": two_blobs,
          "pixel_and_line": pixel_and_line, "lines": lines, "checker": checker, "full": full,
          "border_pieces": border_pieces}


def stress_masks(h: int, w: int, seed: int = 0, n_random: int = 20) -> dict[str, np.ndarray]:
    """The :data:`STRESS` shapes at ``h`` x ``w``, and random masks placed in the image."""
    out = {name: make(h, w) for name, make in STRESS.items()}
    rng = np.random.default_rng(seed)
    for i, small in enumerate(random_masks(rng, n_random, max_side=min(h, w, 40))):
        m = _blank(h, w)
        sh, sw = small.shape
        y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        m[y:y + sh, x:x + sw] = small
        out[f"random_{i}"] = m
    return out
