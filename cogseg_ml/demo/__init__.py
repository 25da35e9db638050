"""README's main job: label bundled images through the emulator and report the result.

It starts the emulator in-process on bundled images: synthetic flat-colour shapes with exact
ground truth, plus a real photo that a dependency ships (``grace_hopper.jpg`` from matplotlib's
sample data: a U.S. Navy photograph, in the public domain; used when matplotlib is installed).
The labeler prompts every object (shapes by their box, the photo by a point and a box) through
the real client and mask cache, and writes to ``out``:

* ``coco.json``: the labels (COCO instance segmentation, RLE);
* ``overlays/*.png``: the masks drawn over each image (every image);
* ``review/index.html``: the review page of ``coco.json`` (see :mod:`cogseg_ml.review`), to
  open from disk, accept or reject masks and save the decisions;
* ``report.md`` / ``report.json``: counts, timings, IoU and COCO mAP against the ground truth;
* ``cogseg-output.json``: the manifest of all of it
  (:mod:`cogseg_ml.exports.folder_writer`), so that
  a demo run again into ``out`` replaces its own output whole and nothing else.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

import cogseg_ml.strict_json as strict_json
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import make_dataset
from cogseg_ml.exports.folder_writer import output_folder
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.mask_codec import decode, encode, iou_matrix
from cogseg_ml.metrics import coco_map
from cogseg_ml.prompts import Box, FileRef, Point, Prompt
from cogseg_ml.review.images import fetched
from cogseg_ml.review.page import write_review_page
from cogseg_ml.review.thumbnails import PALETTE, overlay
from cogseg_ml.samples import Instance, Sample
from cogseg_ml.store.image_fetcher import ImageFetcher

__all__ = ["PALETTE", "overlay", "run_demo"]

PHOTO = "grace_hopper.jpg"


def _photo() -> tuple[bytes, np.ndarray] | None:
    """The bundled photo's bytes and pixels, if matplotlib (which ships it) is installed."""
    try:
        from matplotlib import cbook
    except ImportError:
        return None
    from PIL import Image

    path = Path(cbook.get_sample_data(PHOTO, asfileobj=False))
    data = path.read_bytes()
    with Image.open(path) as img:
        return data, np.asarray(img.convert("RGB"))


def _finite(value: float, digits: int = 4) -> float | None:
    """``value`` rounded, or ``None`` when it is not a number (the report is strict JSON)."""
    return round(value, digits) if math.isfinite(value) else None


def run_demo(out: str | Path, n_images: int = 12, quiet: bool = False) -> int:
    """Run the demo into the folder ``out``; returns 0 when every prompt was labelled, else 1.

    ``out`` follows :mod:`cogseg_ml.exports.folder_writer`: it must be missing, empty, or an earlier
    demo's unchanged output (replaced whole); the folder appears only when the demo is done.

    Raises:
        ValidationError: ``out`` cannot be used (a file, a folder holding anything the demo
            did not write, ...), checked before the emulator starts; ``out`` is left as it was.
    """
    with output_folder(out, "demo") as work:
        failed = _run(work, n_images, quiet)
    if not quiet:
        print((Path(out) / "report.md").read_text(encoding="utf-8"))
    return 0 if failed == 0 else 1


def _run(out: Path, n_images: int, quiet: bool) -> int:
    """The demo, written into ``out`` (a new folder); how many prompts failed."""
    from PIL import Image

    (out / "overlays").mkdir()
    images = make_dataset(n_images, seed=2024)
    samples = [Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
               for im in images]
    pixels = {im.name: im.pixels for im in images}
    photo = _photo()
    t0 = time.perf_counter()
    with Emulator(images=images, processing_time_s=0.2, concurrency=16) as emu:
        if photo is not None:
            data, px = photo
            emu.add_image(data, PHOTO, external_id=PHOTO)
            pixels[PHOTO] = px
            h, w = px.shape[:2]
            samples.append(Sample(FileRef(external_id=PHOTO), (Instance(Prompt(
                points=(Point.from_pixels(0.52 * w, 0.42 * h, w, h),),
                box=Box(0.25, 0.15, 0.8, 0.75)), "face"),)))
        labeler = SegmentationLabeler(emu.config, cache=out / "cache", concurrency=32,
                                      workdir=out / "work", progress=not quiet)
        report = labeler.label(samples)
        n_ann = labeler.to_coco(out / "coco.json")
        http_requests = len(emu.requests)
        elapsed = time.perf_counter() - t0
        # Labels from class names alone: listed, boxed by a detector, segmented, scored.
        from cogseg_ml.demo.class_names import run_class_name_demo

        class_run = run_class_name_demo(emu, out / "class_names", quiet=True)
    coco = json.loads((out / "coco.json").read_text())
    with ImageFetcher(labeler.cache, offline=True) as fetcher:
        review = write_review_page(coco, out / "review", labels_name="coco.json",
                                   images=fetched(fetcher))
    labeler.cache.close()  # before the manifest records the cache's files

    # Quality against the synthetic ground truth.
    truth = {im.name: im for im in images}
    gt: dict[str, Any] = {"images": [], "annotations": [], "categories": coco["categories"]}
    cat_id = {c["name"]: c["id"] for c in coco["categories"]}
    name_of = {img["id"]: img["cdf_file"].get("externalId") for img in coco["images"]}
    for img in coco["images"]:
        im = truth.get(name_of[img["id"]])
        if im is None:
            continue
        gt["images"].append(img)
        for o, rle in zip(im.objects, encode(np.stack([o.mask for o in im.objects])),
                          strict=True):
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": img["id"],
                "category_id": cat_id[o.category], "segmentation": rle, "iscrowd": 0,
                "area": int(o.mask.sum()), "bbox": [0, 0, 0, 0]})
    ious = []
    masks_by_image: dict[str, list[np.ndarray]] = {}
    for ann in coco["annotations"]:
        name = name_of[ann["image_id"]]
        masks_by_image.setdefault(name, []).append(decode([ann["segmentation"]])[0])
        if name in truth:
            obj = truth[name].objects[ann["prompt_index"]]
            ious.append(float(iou_matrix([ann["segmentation"]], encode(obj.mask))[0, 0]))
    synthetic_dets = [a for a in coco["annotations"] if name_of[a["image_id"]] in truth]
    m_ap = coco_map(gt, synthetic_dets)
    for name, px in pixels.items():
        Image.fromarray(overlay(px, masks_by_image.get(name, []))).save(
            out / "overlays" / (Path(name).stem + ".png"))
    summary = {
        "images": report.samples, "prompts": report.instances, "labelled": report.labelled,
        "failed": report.failed, "annotations": n_ann, "seconds": round(elapsed, 2),
        "http_requests": http_requests, "photo_included": photo is not None,
        "mean_iou_synthetic": round(float(np.mean(ious)), 4) if ious else None,
        "min_iou_synthetic": round(float(np.min(ious)), 4) if ious else None,
        "coco_segm_AP": _finite(m_ap["AP"]), "labeler": report.as_dict(),
        "review_page": str(review.index.relative_to(out)),
        "review_masks": review.masks, "review_without_picture": len(review.without_picture),
        "class_names": class_run}
    (out / "report.json").write_text(strict_json.dumps(summary, indent=2), encoding="utf-8")
    (out / "report.md").write_text(
        "# cogseg demo\n\n"
        f"- images: {summary['images']} ({n_images} synthetic"
        f"{' + 1 photo' if photo else ''}), prompts: {summary['prompts']}\n"
        f"- labelled: {summary['labelled']}, failed: {summary['failed']}, "
        f"annotations written: {n_ann}\n"
        f"- wall time: {summary['seconds']} s, HTTP requests: {http_requests}\n"
        f"- IoU against ground truth (synthetic): mean {summary['mean_iou_synthetic']}, "
        f"min {summary['min_iou_synthetic']}; COCO segm AP {summary['coco_segm_AP']}\n"
        f"- review page: {summary['review_page']} ({review.masks} masks; open it in a "
        "browser, accept or reject, save the decisions, then, in this folder, `cogseg export "
        "coco.json --to coco --decisions coco.decisions.json --cache cache --out accepted`)\n"
        f"- from class names only ({', '.join(class_run['classes'])}): "
        f"{class_run['kept']} images listed by directory ({sum(class_run['skipped'].values())} "
        f"skipped), {class_run['boxes']} boxes kept ({class_run['dropped']} dropped), "
        f"{class_run['labelled']} labelled, right class {class_run['right_class']} of "
        f"{class_run['objects']}, mask IoU mean {class_run['mean_iou']}: class_names/coco.json\n"
        f"\nFiles: coco.json, overlays/*.png, review/index.html, class_names/, report.json\n",
        encoding="utf-8")
    return report.failed
