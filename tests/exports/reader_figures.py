"""How real polygon readers see our exports of the stress masks, before and after the inset rings.

``python -m tests.exports.reader_figures`` prints a table: for each way of writing the masks
and each reader, the IoU of what the reader fills against the mask (min and median over the
stress set) and the lines (instances) it reads per mask. One image per mask, 60x80.

Writers: ``yolo before`` (one corner ring per mask, parts and holes joined by zero-width cuts:
the YOLO export up to 0.1.0), ``yolo separate`` (inset rings, one line per piece: the default),
``yolo joined`` (inset rings, one line per mask); COCO ``rle`` and ``polygon`` (corner rings,
pycocotools' rule; unchanged). Readers: Ultralytics' rule (``polygon2mask``: float32, truncated
to int32, ``cv2.fillPoly``), supervision's ``DetectionDataset.from_yolo`` / ``from_coco``
(``force_masks=True``), a pixel-centre filler (even-odd), pycocotools' ``annToMask``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cogseg_ml.mask_codec import encode, mask_to_inset_rings, mask_to_ring, mask_to_rings
from tests.exports.readers import read_yolo
from tests.exports.shapes import stress_masks

HEIGHT, WIDTH = 60, 80


def _before(mask: np.ndarray) -> list[list[tuple[float, float]]]:
    ring = mask_to_ring(mask)
    return [[(float(x), float(y)) for x, y in ring]] if ring else []


YOLO_WRITERS: dict[str, Callable[[np.ndarray], list[list[tuple[float, float]]]]] = {
    "yolo before": _before,
    "yolo separate": lambda m: mask_to_inset_rings(m, parts="separate"),
    "yolo joined": lambda m: mask_to_inset_rings(m, parts="joined"),
}


def _line(ring: list[tuple[float, float]], h: int, w: int) -> str:
    decimals = max(6, math.ceil(math.log10(max(h, w) * 64)))
    return "0 " + " ".join(f"{x / w:.{decimals}f} {y / h:.{decimals}f}" for x, y in ring)


def write_yolo_folder(folder: Path, masks: dict[str, np.ndarray],
                      trace: Callable[[np.ndarray], list[list[tuple[float, float]]]]) -> None:
    """A YOLO dataset of one blank image per mask, its lines traced by ``trace``."""
    (folder / "images" / "train").mkdir(parents=True)
    (folder / "labels" / "train").mkdir(parents=True)
    for name, mask in masks.items():
        h, w = mask.shape
        Image.new("RGB", (w, h)).save(folder / "images" / "train" / f"{name}.png")
        lines = [_line(ring, h, w) for ring in trace(mask)]
        (folder / "labels" / "train" / f"{name}.txt").write_text(
            "".join(f"{line}\n" for line in lines), encoding="utf-8")
    (folder / "data.yaml").write_text("train: images/train\nval: images/train\nnc: 1\n"
                                      "names:\n  0: object\n", encoding="utf-8")


def read_supervision_yolo(folder: Path) -> dict[str, list[np.ndarray]]:
    """``{image stem: [mask, ...]}`` as supervision's YOLO reader fills the lines."""
    import supervision as sv

    ds = sv.DetectionDataset.from_yolo(
        images_directory_path=str(folder / "images" / "train"),
        annotations_directory_path=str(folder / "labels" / "train"),
        data_yaml_path=str(folder / "data.yaml"), force_masks=True)
    out = {}
    for path, _, det in ds:
        masks = det.mask if det.mask is not None else np.zeros((0, 1, 1), dtype=bool)
        out[Path(path).stem] = [m.astype(bool) for m in masks]
    return out


def write_coco(folder: Path, masks: dict[str, np.ndarray], segmentation: str) -> Path:
    """A COCO file (RLE, or one corner ring per part as our COCO export writes polygons) and
    one blank image per mask; returns the annotations file."""
    (folder / "images").mkdir(parents=True)
    images, anns = [], []
    for i, (name, mask) in enumerate(masks.items(), start=1):
        h, w = mask.shape
        Image.new("RGB", (w, h)).save(folder / "images" / f"{name}.png")
        images.append({"id": i, "file_name": f"{name}.png", "height": h, "width": w})
        seg: Any = (dict(encode(mask)[0]) if segmentation == "rle" else
                    [[float(v) for xy in ring for v in xy] for ring in mask_to_rings(mask)])
        ys, xs = np.nonzero(mask)
        box = ([float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1)] if xs.size else [0.0, 0.0, 0.0, 0.0])
        anns.append({"id": i, "image_id": i, "category_id": 1, "segmentation": seg,
                     "area": int(mask.sum()), "bbox": box, "iscrowd": 0})
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "object"}]}),
                    encoding="utf-8")
    return path


def read_supervision_coco(folder: Path, annotations: Path) -> dict[str, list[np.ndarray]]:
    import supervision as sv

    ds = sv.DetectionDataset.from_coco(images_directory_path=str(folder / "images"),
                                       annotations_path=str(annotations), force_masks=True)
    return {Path(path).stem: [m.astype(bool) for m in det.mask] for path, _, det in ds}


def read_pycocotools(annotations: Path) -> dict[str, list[np.ndarray]]:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        api = COCO(str(annotations))
    return {Path(api.imgs[i]["file_name"]).stem:
            [api.annToMask(a).astype(bool) for a in api.loadAnns(api.getAnnIds(imgIds=[i]))]
            for i in api.getImgIds()}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def score(masks: dict[str, np.ndarray], read: dict[str, list[np.ndarray]]
          ) -> dict[str, tuple[float, int]]:
    """``{mask name: (IoU of the union of what was read, instances read)}``."""
    out = {}
    for name, mask in masks.items():
        got = read.get(name, [])
        union = np.zeros_like(mask)
        for m in got:
            union |= m
        out[name] = (_iou(union, mask), len(got))
    return out


def figures(folder: Path, masks: dict[str, np.ndarray] | None = None
            ) -> dict[tuple[str, str], dict[str, tuple[float, int]]]:
    """``{(writer, reader): score}`` for every writer and reader (files under ``folder``)."""
    masks = stress_masks(HEIGHT, WIDTH) if masks is None else masks
    out = {}
    for writer, trace in YOLO_WRITERS.items():
        sub = folder / writer.replace(" ", "-")
        write_yolo_folder(sub, masks, trace)
        for reader, rule in (("ultralytics rule", "opencv"), ("pixel centres", "evenodd")):
            read = {Path(k).stem: [m for _, m in v] for k, v in read_yolo(sub, rule).items()}
            out[writer, reader] = score(masks, read)
        out[writer, "supervision"] = score(masks, read_supervision_yolo(sub))
    for segmentation in ("rle", "polygon"):
        sub = folder / f"coco-{segmentation}"
        path = write_coco(sub, masks, segmentation)
        out[f"coco {segmentation}", "supervision"] = score(masks, read_supervision_coco(sub, path))
        out[f"coco {segmentation}", "pycocotools"] = score(masks, read_pycocotools(path))
    return out


def table(results: dict[tuple[str, str], dict[str, tuple[float, int]]]) -> str:
    rows = ["| written as | read by | IoU min | IoU median | masks exact | instances per "
            "mask (max) |", "|---|---|---|---|---|---|"]
    for (writer, reader), scores in results.items():
        ious = np.asarray([v[0] for v in scores.values()])
        counts = [v[1] for v in scores.values()]
        rows.append(f"| {writer} | {reader} | {ious.min():.3f} | {np.median(ious):.3f} | "
                    f"{int((ious == 1.0).sum())}/{ious.size} | {max(counts)} |")
    return "\n".join(rows)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        print(table(figures(Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
