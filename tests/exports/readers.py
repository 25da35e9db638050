"""Independent readers of the export formats, written once from the formats' documented rules
(no cogseg_ml code): what a trainer or labelling tool would make of the files.

* A polygon covers a pixel when the pixel's centre ``(col + 0.5, row + 0.5)`` lies inside it,
  by the even-odd rule or by non-zero winding (both are checked).
* OpenCV's rule (``rule="opencv"``), as Ultralytics' ``polygon2mask`` and supervision's
  ``polygon_to_mask`` apply it: vertices parsed as float32, scaled by the image's size in
  float32, truncated to pixels (``astype(int32)``) and filled by ``cv2.fillPoly``, which paints
  the outline as well as the inside.
* YOLO (Ultralytics docs): ``data.yaml`` names the splits' image folders and ``names``, under
  its ``path:`` or, without one, beside the yaml; each image ``images/<split>/<stem>.<ext>`` has
  ``labels/<split>/<stem>.txt``, one object a line, ``class x1 y1 x2 y2 ...`` normalised by the
  image's width and height.
* Label Studio (its import docs): ``tasks.json`` is a list of tasks; each ``polygonlabels``
  result has ``value.points`` in percent of ``original_width`` and ``original_height`` and
  ``value.polygonlabels`` naming the label.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image


def fill_polygons(polygons: Sequence[Sequence[tuple[float, float]]], height: int, width: int,
                  rule: str = "evenodd") -> np.ndarray:
    """The pixels whose centre lies inside the polygons (pixel coordinates), ``(H, W)`` bool."""
    acc = np.zeros((height, width + 1), dtype=np.int64)
    for poly in polygons:
        p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(p) < 3:
            continue
        q = np.roll(p, -1, axis=0)
        (x1, y1), (x2, y2) = p.T, q.T
        slanted = y1 != y2  # horizontal edges cross no row of centres
        x1, y1, x2, y2 = x1[slanted], y1[slanted], x2[slanted], y2[slanted]
        # Rows whose centre y = row + 0.5 lies in [min(y1, y2), max(y1, y2)).
        r0 = np.clip(np.ceil(np.minimum(y1, y2) - 0.5), 0, height).astype(np.int64)
        r1 = np.clip(np.ceil(np.maximum(y1, y2) - 0.5), 0, height).astype(np.int64)
        n = r1 - r0
        edge = np.repeat(np.arange(n.size), n)
        rows = r0[edge] + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        xs = x1[edge] + (rows + 0.5 - y1[edge]) * (x2 - x1)[edge] / (y2 - y1)[edge]
        cols = np.clip(np.ceil(xs - 0.5), 0, width).astype(np.int64)  # first centre right of it
        step = np.ones(edge.size, dtype=np.int64) if rule == "evenodd" else \
            np.where(y2 > y1, 1, -1)[edge]
        np.add.at(acc, (rows, cols), step)
    crossings = np.cumsum(acc, axis=1)[:, :width]
    return crossings % 2 == 1 if rule == "evenodd" else crossings != 0


def fill_opencv(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's fill of one polygon given as float32 pixel coordinates, ``(H, W)`` bool."""
    import cv2

    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.asarray(xy, dtype=np.float32).astype(np.int32)], color=1)
    return mask.astype(bool)


def read_yolo(folder: Path, rule: str = "evenodd") -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{image file name: [(class name, mask), ...]}`` of a YOLO segmentation dataset."""
    data = yaml.safe_load((folder / "data.yaml").read_text(encoding="utf-8"))
    root = Path(data.get("path") or folder)
    names = data["names"]
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for split in dict.fromkeys([data["train"], data["val"]]):
        for img in sorted((root / split).iterdir()):
            # Ultralytics' rule: the last /images/ of the path becomes /labels/, suffix .txt.
            label = Path("/labels/".join(str(img).rsplit("/images/", 1))).with_suffix(".txt")
            with Image.open(img) as im:
                w, h = im.size
            objects = []
            for line in label.read_text(encoding="utf-8").splitlines():
                cls, *coords = line.split()
                if rule == "opencv":
                    xy32 = np.asarray(coords, dtype=np.float32).reshape(-1, 2)
                    xy32 *= np.asarray([w, h], dtype=np.float32)
                    objects.append((names[int(cls)], fill_opencv(xy32, h, w)))
                    continue
                xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2) * [w, h]
                objects.append((names[int(cls)], fill_polygons([xy.tolist()], h, w, rule)))
            out[img.name] = objects
    return out


def read_labelstudio(folder: Path, rule: str = "nonzero"
                     ) -> dict[str, list[tuple[str, np.ndarray, dict[str, Any]]]]:
    """``{data.image: [(label, mask, result), ...]}`` of a Label Studio tasks file."""
    tasks = json.loads((folder / "tasks.json").read_text(encoding="utf-8"))
    out: dict[str, list[tuple[str, np.ndarray, dict[str, Any]]]] = {}
    for t in tasks:
        objects = []
        for pred in t.get("predictions", []):
            for r in pred["result"]:
                assert r["type"] == "polygonlabels"
                w, h = r["original_width"], r["original_height"]
                xy = np.asarray(r["value"]["points"], dtype=np.float64) * [w / 100, h / 100]
                objects.append((r["value"]["polygonlabels"][0],
                                fill_polygons([xy.tolist()], h, w, rule), r))
        out[t["data"]["image"]] = objects
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def read_yolo_supervision(folder: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{image file name: [(class name, mask), ...]}`` as supervision reads a YOLO dataset
    (``DetectionDataset.from_yolo(force_masks=True)``: float32, rounded, ``cv2.fillPoly``)."""
    import supervision as sv

    data = yaml.safe_load((folder / "data.yaml").read_text(encoding="utf-8"))
    root = Path(data.get("path") or folder)
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for split in dict.fromkeys([data["train"], data["val"]]):
        images = root / split
        labels = Path("/labels/".join(str(images).rsplit("/images/", 1)))
        ds = sv.DetectionDataset.from_yolo(
            images_directory_path=str(images), annotations_directory_path=str(labels),
            data_yaml_path=str(folder / "data.yaml"), force_masks=True)
        for path, _, det in ds:
            masks = [] if det.mask is None else list(det.mask.astype(bool))
            out[Path(path).name] = [(ds.classes[int(c)], m)
                                    for c, m in zip(det.class_id, masks, strict=True)]
    return out


def pieces(mask: np.ndarray) -> list[np.ndarray]:
    """A mask's 8-connected pieces (pixels touching at a corner are one piece), in row-major
    order of each piece's first pixel: what one polygon per piece gives back."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return [labels == i for i in range(1, n + 1)]
