"""Labels files to export, made as a user makes them: a labelling run against the emulator
(its images land in the mask cache's image store), and a second file for the same images whose
masks have holes, islands and several parts, written by the one COCO writer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cogseg_ml.coco_io import CocoWriter
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.mask_codec import decode, encode
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample
from tests.exports.shapes import SHAPES


@dataclass(frozen=True)
class LabelSet:
    """``labels``: the labeler's own file (RLE); ``holey``: the same images, masks with holes
    and parts (the last image has none); ``cache``: the run's cache (images included)."""

    labels: Path
    holey: Path
    cache: Path

    def coco(self, which: str = "holey") -> dict[str, Any]:
        return json.loads(getattr(self, which).read_text(encoding="utf-8"))  # type: ignore[no-any-return]

    def masks(self, which: str = "holey") -> dict[int, tuple[dict[str, Any], str, np.ndarray]]:
        """``{annotation id: (image record, category name, mask)}``."""
        coco = self.coco(which)
        images = {im["id"]: im for im in coco["images"]}
        names = {c["id"]: c["name"] for c in coco["categories"]}
        return {a["id"]: (images[a["image_id"]], names[a["category_id"]],
                          decode([a["segmentation"]])[0]) for a in coco["annotations"]}


def samples_for(images: list[SyntheticImage]) -> list[Sample]:
    return [Sample(FileRef(external_id=im.name),
                   tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
            for im in images]


def _place(shape: np.ndarray, h: int, w: int, y: int, x: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    sh, sw = shape.shape
    m[y:y + sh, x:x + sw] = shape[: h - y, : w - x]
    return m


def build(folder: Path, emu: Emulator, images: list[SyntheticImage]) -> LabelSet:
    """Label ``images`` (served by ``emu``) into ``folder``; write the holey file beside."""
    cache = folder / "cache"
    lab = SegmentationLabeler(emu.config, cache=cache, workdir=folder / "work", progress=False)
    lab.label(samples_for(images))
    labels = folder / "labels.json"
    lab.to_coco(labels)
    coco = json.loads(labels.read_text(encoding="utf-8"))
    holey = folder / "holey.json"
    shapes = list(SHAPES.values())
    with CocoWriter(holey, coco["categories"]) as out:
        for n, im in enumerate(coco["images"]):
            key = str(im["id"])
            out.add_image(key, file_name=im["file_name"], height=im["height"],
                          width=im["width"], image_id=im["id"], cdf_file=im["cdf_file"],
                          sha256=im["sha256"])
            if n == len(coco["images"]) - 1:
                continue  # an image without masks
            h, w = im["height"], im["width"]
            for k in range(3):
                make = shapes[(3 * n + k) % len(shapes)]
                shape = make(h // 3, w // 3)
                mask = _place(shape, h, w, (k * h) // 3, (k * w) // 3 + (n * 7) % (w // 4))
                if make is SHAPES["frame_at_border"] and k == 0:
                    mask = make(h, w)  # touching the image's border
                cat = coco["categories"][(n + k) % len(coco["categories"])]["id"]
                out.add_annotation(key, cat, encode(mask)[0], 0.5 + 0.1 * k,
                                   source="test-shapes", prompt_index=k)
    return LabelSet(labels, holey, cache)
