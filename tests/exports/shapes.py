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
