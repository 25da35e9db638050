"""README's main job: segment bundled images through the emulator and report the result.

It starts the emulator in-process on synthetic images with known ground truth, prompts every
object with its box through the real client (``segment_many``), and writes to ``out``:

* ``masks.json``: one record per object (file, category, score, COCO RLE);
* ``overlays/*.png``: the masks drawn over each image;
* ``report.md`` and ``report.json``: counts, timings and IoU against the ground truth.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import make_dataset
from cogseg_ml.mask_codec import decode, iou_matrix
from cogseg_ml.prompts import FileRef, Prompt

__all__ = ["run_demo", "overlay"]

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240]], dtype=np.float32)


def overlay(pixels: np.ndarray, masks: list[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Masks blended over an RGB image, each in its own colour, outlines darkened."""
    out = pixels.astype(np.float32).copy()
    for i, m in enumerate(masks):
        colour = PALETTE[i % len(PALETTE)]
        out[m] = (1 - alpha) * out[m] + alpha * colour
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = colour * 0.6
    result: np.ndarray = out.clip(0, 255).astype(np.uint8)
    return result


def run_demo(out: Path, n_images: int = 12, quiet: bool = False) -> int:
    """Run the demo; returns 0 when every object was segmented, 1 otherwise."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(exist_ok=True)
    images = make_dataset(n_images, seed=2024)
    by_name = {im.name: im for im in images}
    requests = [SegmentRequest(FileRef(external_id=im.name), Prompt(box=obj.box()),
                               tag=(im.name, k))
                for im in images for k, obj in enumerate(im.objects)]
    t0 = time.perf_counter()
    records: list[dict[str, object]] = []
    ious: list[float] = []
    failures: list[str] = []
    masks_by_image: dict[str, list[np.ndarray]] = {im.name: [] for im in images}
    with Emulator(images=images, processing_time_s=0.2, concurrency=16) as emu:
        with SegmentationClient(emu.config) as client:
            for outcome in client.segment_many(requests, concurrency=32):
                name, k = outcome.request.tag
                img = by_name[name]
                if not outcome.ok or outcome.result is None:
                    failures.append(f"{name}#{k}: {outcome.error}")
                    continue
                best = outcome.result.item.best
                if best is None:
                    failures.append(f"{name}#{k}: no segment")
                    continue
                rle = best.to_rle(img.height, img.width)
                truth = img.objects[k]
                from cogseg_ml.mask_codec import encode

                iou = float(iou_matrix([rle], encode(truth.mask))[0, 0])
                ious.append(iou)
                masks_by_image[name].append(decode([rle])[0])
                records.append({"file": name, "category": truth.category, "score": best.score,
                                "iou": round(iou, 4), "segmentation": rle,
                                "job_id": outcome.result.job_id})
            requests_sent = len(emu.requests)
    elapsed = time.perf_counter() - t0
    for im in images:
        Image.fromarray(overlay(im.pixels, masks_by_image[im.name])).save(
            out / "overlays" / im.name)
    (out / "masks.json").write_text(json.dumps(records))
    report = {"images": len(images), "objects": len(requests), "segmented": len(records),
              "failed": len(failures), "seconds": round(elapsed, 2),
              "http_requests": requests_sent,
              "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
              "min_iou": round(float(np.min(ious)), 4) if ious else None,
              "failures": failures}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(
        "# cogseg demo\n\n"
        f"- images: {report['images']}, objects prompted: {report['objects']}\n"
        f"- segmented: {report['segmented']}, failed: {report['failed']}\n"
        f"- wall time: {report['seconds']} s, HTTP requests: {requests_sent}\n"
        f"- IoU against ground truth: mean {report['mean_iou']}, min {report['min_iou']}\n")
    if not quiet:
        print((out / "report.md").read_text())
        print(f"wrote {out / 'masks.json'}, {out / 'overlays'}/, {out / 'report.json'}")
    return 0 if not failures else 1
