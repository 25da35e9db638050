"""COCO export: a dataset folder pycocotools reads, masks exact in RLE and polygon form, ids
and provenance kept, readable again as our labels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from cogseg_ml.coco_io import read_labels
from cogseg_ml.exports import export_labels, to_yolo
from tests.exports.labelsets import LabelSet
from tests.exports.readers import pieces, read_yolo


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_masks_ids_and_images_survive(labelset: LabelSet, tmp_path: Path,
                                      segmentation: str) -> None:
    out = tmp_path / "coco"
    export_labels(labelset.holey, "coco", out, cache=labelset.cache, segmentation=segmentation)
    api = COCO(str(out / "annotations.json"))
    source = labelset.masks()
    assert sorted(api.getAnnIds()) == sorted(source)
    for ann_id, (rec, name, mask) in source.items():
        ann = api.loadAnns([ann_id])[0]
        assert np.array_equal(api.annToMask(ann).astype(bool), mask)
        assert api.loadCats([ann["category_id"]])[0]["name"] == name
        img = api.loadImgs([ann["image_id"]])[0]
        assert img["id"] == rec["id"] and img["cdf_file"] == rec["cdf_file"]
        data = (out / "images" / img["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec["sha256"]
        if segmentation == "polygon":
            assert isinstance(ann["segmentation"], list)
    again = read_labels(out / "annotations.json")  # an export is ours too
    assert len(again["images"]) == len(labelset.coco()["images"])


def test_extra_fields_and_scores_are_kept(labelset: LabelSet, tmp_path: Path) -> None:
    export_labels(labelset.holey, "coco", tmp_path / "c", cache=labelset.cache)
    got = {a["id"]: a for a in json.loads((tmp_path / "c" / "annotations.json").read_text())
           ["annotations"]}
    for a in labelset.coco()["annotations"]:
        assert got[a["id"]]["score"] == a["score"]
        assert got[a["id"]]["source"] == a["source"]
        assert got[a["id"]]["prompt_index"] == a["prompt_index"]


def test_a_polygon_export_exports_again_with_the_same_masks(labelset: LabelSet,
                                                            tmp_path: Path) -> None:
    export_labels(labelset.holey, "coco", tmp_path / "c", cache=labelset.cache,
                  segmentation="polygon")
    to_yolo(tmp_path / "c" / "annotations.json", tmp_path / "y", cache=labelset.cache)
    read = read_yolo(tmp_path / "y", "opencv")  # as Ultralytics fills: one line per piece
    by_image: dict[str, list[np.ndarray]] = {}
    for rec, _, mask in labelset.masks().values():
        by_image.setdefault(rec["file_name"], []).extend(pieces(mask))
    for name, masks in by_image.items():
        assert all(np.array_equal(a, b) for (_, a), b in zip(read[name], masks, strict=True))


def test_clashing_and_unsafe_names_get_names_of_their_own(labelset: LabelSet,
                                                          tmp_path: Path) -> None:
    coco = labelset.coco("labels")
    coco["images"][0]["file_name"] = "site a/Pump 1.PNG"
    coco["images"][1]["file_name"] = "site b/pump 1.png"  # the same name, but for its case
    coco["images"][2]["file_name"] = "../../etc/passwd"
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    export_labels(tmp_path / "labels.json", "yolo", tmp_path / "y", cache=labelset.cache)
    names = sorted(p.name for p in (tmp_path / "y" / "images" / "train").iterdir())
    second = coco["images"][1]["id"]
    assert names == sorted(["Pump_1.png", f"pump_1-{second}.png", "passwd.png"])
    labels = sorted(p.name for p in (tmp_path / "y" / "labels" / "train").iterdir())
    assert labels == sorted(n.replace(".png", ".txt") for n in names)
