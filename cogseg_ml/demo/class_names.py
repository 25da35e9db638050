"""``cogseg demo``'s class-name run: synthetic images, a class list, labels out, scored.

:func:`run_class_name_demo` adds synthetic images to a running emulator (their shapes stand for
``valve``, ``pressure gauge`` and ``flange``), lists them through ``files/list``, boxes them with
the ground-truth detector (one cross-class duplicate and one distractor injected per image, to
show both handled), segments the boxes through the emulator's segment endpoint, writes the COCO
file with detector and segmenter named per label, and scores the labels against the truth:
mask IoU per object and whether each label has its object's class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import cogseg_ml.strict_json as strict_json
from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.detect.ground_truth import Injections, save_ground_truth_detector
from cogseg_ml.detect.text_boxes import TextBoxDetector
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image, make_dataset
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.mask_codec import encode, iou_matrix
from cogseg_ml.samples.file_listing import samples_from_files
from cogseg_ml.samples.from_text import samples_from_text

__all__ = ["CLASS_NAMES", "run_class_name_demo", "score_against_truth"]

#: What the synthetic shapes stand for in the class-name run.
CLASS_NAMES = {"rectangle": "valve", "ellipse": "pressure gauge", "triangle": "flange"}
DIRECTORY = "/demo/class-names/"


def score_against_truth(coco: Mapping[str, Any], images: Sequence[SyntheticImage],
                        class_names: Mapping[str, str]) -> dict[str, Any]:
    """Each true object against the label that overlaps it most (by mask IoU).

    Returns ``objects``, ``matched`` (IoU >= 0.5), ``mean_iou``/``min_iou`` over matched
    objects, ``right_class`` (matched labels of the object's class) and ``extra_labels``
    (labels that overlap no object by 0.5).
    """
    cat = {c["id"]: c["name"] for c in coco["categories"]}
    by_name = {im.name: im for im in images}
    anns: dict[int, list[Mapping[str, Any]]] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    ious: list[float] = []
    objects = right = extra = 0
    for img in coco["images"]:
        im = by_name.get(img["file_name"])
        if im is None or not im.objects:
            continue
        mine = anns.get(img["id"], [])
        truth = encode(np.stack([o.mask for o in im.objects]))
        objects += len(im.objects)
        if not mine:
            continue
        m = iou_matrix([a["segmentation"] for a in mine], truth)  # (labels, objects)
        extra += int((m.max(axis=1) < 0.5).sum())
        for j, o in enumerate(im.objects):
            i = int(m[:, j].argmax())
            if m[i, j] >= 0.5:
                ious.append(float(m[i, j]))
                right += int(cat[mine[i]["category_id"]] == class_names.get(o.category))
    return {"objects": objects, "matched": len(ious), "right_class": right,
            "extra_labels": extra,
            "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
            "min_iou": round(float(np.min(ious)), 4) if ious else None}


def run_class_name_demo(emulator: Emulator, out: str | Path, *, n_images: int = 6,
                        seed: int = 2025, quiet: bool = False) -> dict[str, Any]:
    """Label synthetic images from class names through a running emulator; returns figures.

    Writes ``out/coco.json`` (labels with ``detector`` and ``segmenter`` per annotation),
    ``out/detector/`` (the ground-truth detector folder) and ``out/report.json``.

    Returns:
        ``classes``, ``listed``/``kept``/``skipped`` (files), ``boxes`` (kept detections),
        ``dropped`` (by reason), ``labelled``, ``failed``, the scores of
        :func:`score_against_truth` and ``seconds``.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    images = make_dataset(n_images, seed=seed, height=240, width=320)
    images = [SyntheticImage(f"class-names-{im.name}", im.pixels, im.objects) for im in images]
    t0 = time.perf_counter()
    for im in images:
        emulator.state.add_file(encode_image(im.pixels), im.name, external_id=im.name,
                                directory=DIRECTORY)
    emulator.state.add_file(b"%PDF-1.4 inspection notes", "class-names-notes.pdf",
                            directory=DIRECTORY)  # listed, then skipped: not an image
    folder = save_ground_truth_detector(root / "detector", images, class_names=CLASS_NAMES,
                                        injections=Injections(duplicates=1, distractors=1))
    detector = TextBoxDetector.from_pretrained(folder, device="cpu")
    classes = list(dict.fromkeys(CLASS_NAMES.values()))
    config = emulator.config
    labeler = SegmentationLabeler(config, cache=root / "cache", categories=classes,
                                  workdir=root / "work", progress=not quiet)
    with SegmentationClient(config) as client:
        listing = samples_from_files(client, {"directoryPrefix": DIRECTORY})
    samples = samples_from_text(listing, classes, detector, store=labeler.store,
                                progress=not quiet)
    report = labeler.label(samples)
    n_ann = labeler.to_coco(root / "coco.json", samples=samples)
    labeler.store.close()
    labeler.cache.close()
    coco = json.loads((root / "coco.json").read_text(encoding="utf-8"))
    summary: dict[str, Any] = {
        "classes": classes, "listed": listing.listed, "kept": len(listing),
        "skipped": dict(listing.skipped), "boxes": sum(samples.per_class.values()),
        "per_class": dict(samples.per_class), "dropped": dict(samples.dropped),
        "labelled": report.labelled, "failed": report.failed, "annotations": n_ann,
        **score_against_truth(coco, images, CLASS_NAMES),
        "seconds": round(time.perf_counter() - t0, 2)}
    (root / "report.json").write_text(strict_json.dumps(summary, indent=2), encoding="utf-8")
    return summary
