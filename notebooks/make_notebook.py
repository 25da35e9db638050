"""Writes benchmark_masks.ipynb from the cells below (run it after editing them)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# Benchmarking masks

Compares segmentation masks from the CDF API (here: the local emulator, so the notebook runs
offline) with ground truth, and with a local Segment-Anything model when a checkpoint is given.
Set `COGSEG_NB_IMAGES` for more images and `COGSEG_SAM_CHECKPOINT` (plus
`COGSEG_SAM_MODEL_TYPE`) to include the local model."""),
    ("code", """import json
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cogseg_ml.demo import overlay
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import make_dataset
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.mask_codec import decode, encode
from cogseg_ml.metrics import boundary_f, coco_map, mask_iou
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample

N_IMAGES = int(os.environ.get("COGSEG_NB_IMAGES", "8"))
SAM_CHECKPOINT = os.environ.get("COGSEG_SAM_CHECKPOINT")
workdir = Path(tempfile.mkdtemp(prefix="cogseg-nb-"))"""),
    ("md", "## Label the images through the API (emulated) with box prompts"),
    ("code", """images = make_dataset(N_IMAGES, seed=7, height=240, width=320, n_objects=4)
samples = [Sample(FileRef(external_id=im.name),
                  tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
           for im in images]
with Emulator(images=images, processing_time_s=0.05, concurrency=16) as emu:
    labeler = SegmentationLabeler(emu.config, cache=workdir / "cache", workdir=workdir / "w",
                                  progress=False)
    report = labeler.label(samples)
    labeler.to_coco(workdir / "api.json")
print(report.summary())"""),
    ("md", "## Metrics against the ground truth"),
    ("code", """coco = json.loads((workdir / "api.json").read_text())
truth = {im.name: im for im in images}
name_of = {img["id"]: img["cdf_file"]["externalId"] for img in coco["images"]}
rows = []
for ann in coco["annotations"]:
    im = truth[name_of[ann["image_id"]]]
    obj = im.objects[ann["prompt_index"]]
    pred = decode([ann["segmentation"]])[0]
    rows.append({"image": im.name, "category": obj.category, "area": int(obj.mask.sum()),
                 "iou": mask_iou(pred, obj.mask), "boundary_f": boundary_f(pred, obj.mask)})
gt = {"images": coco["images"], "categories": coco["categories"], "annotations": []}
cat = {c["name"]: c["id"] for c in coco["categories"]}
for img in coco["images"]:
    for o in truth[name_of[img["id"]]].objects:
        gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": img["id"],
                                  "category_id": cat[o.category], "iscrowd": 0,
                                  "segmentation": encode(o.mask)[0],
                                  "area": int(o.mask.sum()), "bbox": [0, 0, 1, 1]})
stats = coco_map(gt, coco["annotations"])
print(f"{'source':<10}{'masks':>7}{'mean IoU':>10}{'boundary F':>12}{'AP':>7}{'AP50':>7}")
print(f"{'API':<10}{len(rows):>7}{np.mean([r['iou'] for r in rows]):>10.3f}"
      f"{np.mean([r['boundary_f'] for r in rows]):>12.3f}{stats['AP']:>7.3f}{stats['AP50']:>7.3f}")
assert len(rows) == sum(len(im.objects) for im in images)"""),
    ("md", "## Overlays"),
    ("code", """fig, axes = plt.subplots(1, min(4, len(images)), figsize=(14, 3.5))
for ax, im in zip(np.atleast_1d(axes), images, strict=False):
    masks = [decode([a["segmentation"]])[0] for a in coco["annotations"]
             if name_of[a["image_id"]] == im.name]
    ax.imshow(overlay(im.pixels, masks))
    ax.set_title(im.name, fontsize=8)
    ax.axis("off")
plt.tight_layout()
plt.show()"""),
    ("md", "## IoU by object size"),
    ("code", """fig, ax = plt.subplots(figsize=(6, 3.5))
ax.scatter([r["area"] for r in rows], [r["iou"] for r in rows], s=14, label="API")
ax.set_xscale("log")
ax.set_xlabel("object area (pixels)")
ax.set_ylabel("IoU against ground truth")
ax.set_ylim(0, 1.05)
ax.legend()
plt.show()"""),
    ("md", "## Local Segment-Anything (optional)"),
    ("code", """if not SAM_CHECKPOINT:
    print("local model skipped: set COGSEG_SAM_CHECKPOINT (and COGSEG_SAM_MODEL_TYPE) to a "
          "Segment-Anything checkpoint to compare it here")
else:
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.metrics import agreement

    sam = LocalSamBackend(checkpoint=SAM_CHECKPOINT,
                          model_type=os.environ.get("COGSEG_SAM_MODEL_TYPE", "vit_b"))
    local, api = [], []
    for im in images:
        anns = [a for a in coco["annotations"] if name_of[a["image_id"]] == im.name]
        for o, ann in zip(im.objects, anns, strict=True):
            (res,) = sam.segment_image(im.pixels, [Prompt(box=o.box())])
            local.append(res.best.rle if res.best else None)
            api.append(ann["segmentation"])
    print("API vs local:", agreement(api, local).summary())"""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


if __name__ == "__main__":
    nbformat.write(build(), Path(__file__).with_name("benchmark_masks.ipynb"))
