"""Writes benchmark_masks.ipynb from the cells below (run it after editing them).

``python -m notebooks.make_notebook --execute`` (``make notebook``) also runs it top to bottom
and writes it with its outputs (tables and plots, visible on a repository page), on the CPU,
offline, with the notebook's defaults (its ``COGSEG_*`` variables unset): that is the committed
version. Without ``--execute`` the cells are written without outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# Benchmarking masks

Compares segmentation masks from the CDF API (here: the local emulator, so the notebook runs
offline) with ground truth, and with a local Segment-Anything model on the same prompts.
Set `COGSEG_NB_IMAGES` for more images, `COGSEG_SAM2_DIR` to a SAM 2.1 (or SAM 1) checkpoint
folder in transformers' format for the "API vs local model" section (unset: a tiny model with
random weights, which shows the mechanics only), and `COGSEG_SAM_CHECKPOINT` (plus
`COGSEG_SAM_MODEL_TYPE`) to compare an original SAM 1 `.pth` checkpoint too."""),
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
SAM2_DIR = os.environ.get("COGSEG_SAM2_DIR")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers loads
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
    ("md", """## API vs local model

The same box prompts, labelled a second time by a local Segment-Anything model
(`LocalSamBackend.from_pretrained`), the images still read from CDF files (here: the emulator's).
For every prompt the API's mask and the local model's mask are compared (IoU and boundary F; a
prompt that one side left without a mask counts 0), then averaged per image.

The model comes from `COGSEG_SAM2_DIR`: a checkpoint folder in transformers' format, e.g.
`hf download facebook/sam2.1-hiera-tiny --include "*.json" "*.safetensors" --local-dir DIR`.
Without it, a tiny SAM 2.1-architecture model with **random weights** is built in a temporary
folder: its masks are meaningless, and the figures below then only show the mechanics."""),
    ("code", """from cogseg_ml.backends.local_sam import LocalSamBackend
from cogseg_ml.backends.sam2 import save_random_checkpoint
from cogseg_ml.metrics import agreement

if SAM2_DIR:
    model_dir = Path(SAM2_DIR)
    print(f"local model: {model_dir}")
else:
    model_dir = save_random_checkpoint(workdir / "random-sam2", seed=0)
    print("local model: a tiny SAM 2.1-architecture model with RANDOM weights (COGSEG_SAM2_DIR "
          "is unset): its masks are meaningless and only show the mechanics")
local_sam = LocalSamBackend.from_pretrained(model_dir)
with Emulator(images=images) as emu:  # images still come from CDF files; no segment calls
    local_labeler = SegmentationLabeler(local_sam, config=emu.config, cache=workdir / "cache",
                                        workdir=workdir / "w-local", progress=False)
    local_report = local_labeler.label(samples)
    local_labeler.to_coco(workdir / "local.json")
local_sam.close()
print(f"{local_sam.model_version} on {local_sam.device}")
print(local_report.summary())"""),
    ("code", """def masks_by_prompt(coco_file):
    names = {img["id"]: img["cdf_file"]["externalId"] for img in coco_file["images"]}
    return {(names[a["image_id"]], a["prompt_index"]): a["segmentation"]
            for a in coco_file["annotations"]}


api_masks = masks_by_prompt(coco)
local_masks = masks_by_prompt(json.loads((workdir / "local.json").read_text()))
keys = [(im.name, k) for im in images for k in range(len(im.objects))]
agree = agreement([api_masks.get(k) for k in keys], [local_masks.get(k) for k in keys])
pair_iou = dict(zip(keys, agree.per_item, strict=True))
pair_bf, local_vs_truth = {}, []
for im in images:
    for k, obj in enumerate(im.objects):
        a, b = api_masks.get((im.name, k)), local_masks.get((im.name, k))
        pair_bf[im.name, k] = (0.0 if a is None or b is None
                               else boundary_f(decode([b])[0], decode([a])[0]))
        local_vs_truth.append(0.0 if b is None else mask_iou(decode([b])[0], obj.mask))
per_image = [{"image": im.name, "prompts": len(im.objects),
              "local": sum((im.name, k) in local_masks for k in range(len(im.objects))),
              "iou": float(np.mean([pair_iou[im.name, k] for k in range(len(im.objects))])),
              "boundary_f": float(np.mean([pair_bf[im.name, k]
                                           for k in range(len(im.objects))]))}
             for im in images]
print(f"{'image':<24}{'prompts':>8}{'local masks':>12}{'IoU':>7}{'boundary F':>12}")
for r in per_image:
    print(f"{r['image']:<24}{r['prompts']:>8}{r['local']:>12}{r['iou']:>7.3f}"
          f"{r['boundary_f']:>12.3f}")
print(f"against ground truth: API mean IoU {np.mean([r['iou'] for r in rows]):.3f}, "
      f"local mean IoU {np.mean(local_vs_truth):.3f}")
print("API vs local model:", agree.summary())
if not SAM2_DIR:
    print("(random weights: these figures show the mechanics, not the model's quality)")
assert len(agree.per_item) == len(rows)"""),
    ("code", """fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(per_image)), 3.5))
x = np.arange(len(per_image))
ax.bar(x - 0.2, [r["iou"] for r in per_image], width=0.4, label="IoU")
ax.bar(x + 0.2, [r["boundary_f"] for r in per_image], width=0.4, label="boundary F")
ax.set_xticks(x, [r["image"] for r in per_image], rotation=30, ha="right", fontsize=8)
ax.set_ylim(0, 1.05)
ax.set_ylabel("API vs local model (mean per image)")
ax.set_title("API vs local model" + ("" if SAM2_DIR else " (random weights: mechanics only)"))
ax.legend()
plt.tight_layout()
plt.show()"""),
    ("md", """## Labelling from class names

No boxes, no clicks: a class list, a text-prompted detector for the boxes, then the API (or a
local model) for the masks. Here the detector is the ground-truth double for the synthetic images
(`cogseg_ml.detect.ground_truth`), with one cross-class duplicate and one distractor injected per
image; with real images give `TextBoxDetector.from_pretrained` a Grounding DINO or OWLv2 folder.
Left: the kept detections with their classes; right: the masks of the labels."""),
    ("code", """from cogseg_ml.demo.class_names import CLASS_NAMES, score_against_truth
from cogseg_ml.detect.ground_truth import Injections, save_ground_truth_detector
from cogseg_ml.detect.text_boxes import TextBoxDetector
from cogseg_ml.samples.from_text import samples_from_text

scenes = make_dataset(3, seed=11, height=240, width=320, n_objects=3)
classes = list(dict.fromkeys(CLASS_NAMES.values()))
det_dir = save_ground_truth_detector(workdir / "detector", scenes, class_names=CLASS_NAMES,
                                     injections=Injections(duplicates=1, distractors=1))
detector = TextBoxDetector.from_pretrained(det_dir, device="cpu")
with Emulator(images=scenes, processing_time_s=0.05, concurrency=16) as emu:
    text_labeler = SegmentationLabeler(emu.config, cache=workdir / "text-cache",
                                       categories=classes, workdir=workdir / "tw",
                                       progress=False)
    found = samples_from_text([FileRef(external_id=im.name) for im in scenes], classes,
                              detector, store=text_labeler.store)
    text_labeler.label(found)
    text_labeler.to_coco(workdir / "from_classes.json", samples=found)
    text_labeler.store.close()
text_coco = json.loads((workdir / "from_classes.json").read_text())
print(found.summary())
print(score_against_truth(text_coco, scenes, CLASS_NAMES))"""),
    ("code", """fig, axes = plt.subplots(len(scenes), 2, figsize=(8, 3 * len(scenes)))
text_name = {img["id"]: img["cdf_file"]["externalId"] for img in text_coco["images"]}
cat_name = {c["id"]: c["name"] for c in text_coco["categories"]}
for row, (im, s) in zip(axes, zip(scenes, found, strict=True), strict=True):
    row[0].imshow(im.pixels)
    for d in s.meta["detections"]:
        x0, y0, x1, y1 = d.box
        row[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow"))
        row[0].text(x0, y0, f"{d.label} {d.score:.2f}", color="yellow", fontsize=7)
    anns = [a for a in text_coco["annotations"] if text_name[a["image_id"]] == im.name]
    row[1].imshow(overlay(im.pixels, [decode([a["segmentation"]])[0] for a in anns]))
    row[1].set_title(", ".join(cat_name[a["category_id"]] for a in anns), fontsize=8)
    for ax in row:
        ax.axis("off")
plt.tight_layout()
plt.show()"""),
    ("md", "## Original SAM 1 checkpoint (optional)"),
    ("code", """if not SAM_CHECKPOINT:
    print("SAM 1 .pth local model skipped: set COGSEG_SAM_CHECKPOINT (and "
          "COGSEG_SAM_MODEL_TYPE) to an original Segment-Anything checkpoint to compare it here")
else:
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
    for i, cell in enumerate(nb.cells):  # stable ids: a regenerated notebook diffs cleanly
        cell.id = f"cell-{i:02d}-{hashlib.sha256(cell.source.encode()).hexdigest()[:8]}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


NOTEBOOK = Path(__file__).with_name("benchmark_masks.ipynb")
#: what the committed run leaves out of the environment (the notebook's defaults apply)
SETTINGS = ("COGSEG_NB_IMAGES", "COGSEG_SAM2_DIR", "COGSEG_SAM_CHECKPOINT",
            "COGSEG_SAM_MODEL_TYPE")
#: and what it sets: CPU only, no network, no warnings in the outputs
FIXED = {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
         "PYTHONWARNINGS": "ignore", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def execute(nb: nbformat.NotebookNode, settings: Mapping[str, str] | None = None,
            timeout_s: int = 900) -> nbformat.NotebookNode:
    """Run every cell in a temporary folder, in the committed run's environment.

    Args:
        nb: the notebook (its cells get their outputs).
        settings: the notebook's ``COGSEG_*`` variables to set (default: none, as committed).
        timeout_s: the most one cell may take.
    """
    from nbclient import NotebookClient

    wanted = {**FIXED, **(settings or {})}
    saved = {k: os.environ.get(k) for k in (*SETTINGS, *wanted)}
    try:
        for k in SETTINGS:
            os.environ.pop(k, None)
        os.environ.update(wanted)
        with tempfile.TemporaryDirectory(prefix="cogseg-nb-run-") as cwd:
            NotebookClient(nb, timeout=timeout_s, kernel_name="python3", record_timing=False,
                           resources={"metadata": {"path": cwd}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def main(argv: list[str] | None = None) -> int:
    """Write the notebook (``--execute``: with its outputs)."""
    p = argparse.ArgumentParser(prog="python -m notebooks.make_notebook",
                                description=__doc__.splitlines()[0])
    p.add_argument("--execute", action="store_true",
                   help="run it and keep the outputs (the committed version)")
    args = p.parse_args(argv)
    nb = build()
    if args.execute:
        execute(nb)
    fd, tmp = tempfile.mkstemp(prefix=f".{NOTEBOOK.name}.", suffix=".incomplete",
                               dir=NOTEBOOK.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, NOTEBOOK)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
