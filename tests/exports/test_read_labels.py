"""read_labels takes our labels files and refuses anything else with a line naming the file,
the item and what is wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cogseg_ml import mask_codec as mc
from cogseg_ml.coco_io import read_labels, segmentation_rle
from cogseg_ml.errors import ValidationError
from tests.exports.labelsets import LabelSet
from tests.exports.shapes import SHAPES


def test_reads_the_labelers_file(labelset: LabelSet) -> None:
    coco = read_labels(labelset.labels)
    assert coco == labelset.coco("labels")
    assert all("sha256" in im and "cdf_file" in im for im in coco["images"])


Edit = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Edit:
    def edit(coco: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = coco
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is KeyError:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return edit


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda c: [c], "not COCO"),
    (_set("annotations", KeyError), "not COCO"),
    (_set("info.description", "COCO 2017 train"), "'COCO 2017 train', not one of ours"),
    (_set("info", KeyError), "no info.description"),
    (_set("images.0.cdf_file", KeyError), "images[0] (id 1) has no cdf_file"),
    (_set("images.0.cdf_file", {"name": "x.png"}), "has no cdf_file"),
    (_set("images.1.height", 0), "images[1] (id 2) needs positive integer height"),
    (_set("images.0.sha256", "abc"), "sha256"),
    (_set("images.1.id", 1), "repeats an image id"),
    (_set("annotations.0.image_id", 999), "names image 999"),
    (_set("annotations.0.category_id", 77), "names category 77"),
    (_set("annotations.0.segmentation.size", [3, 3]), "its RLE is 3x3 but its image is"),
    (_set("annotations.0.segmentation", [[1, 2, 3]]), "at least three x, y pairs"),
    (_set("annotations.0.score", "high"), "score that is not a number"),
    (_set("annotations.1.id", 1), "repeats an annotation id"),
    (_set("categories.1.name", "ellipse"), "repeats the name"),
])
def test_refuses_what_is_not_ours_or_broken(labelset: LabelSet, tmp_path: Path, edit: Edit,
                                            expected: str) -> None:
    coco = labelset.coco("labels")
    coco["categories"][0]["name"] = "ellipse"
    coco["categories"][1]["name"] = "other" if len(coco["categories"]) > 1 else "x"
    replaced = edit(coco)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(coco if replaced is None else replaced))
    with pytest.raises(ValidationError, match="labels.json") as err:
        read_labels(path)
    assert expected in str(err.value)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValidationError, match="bad.json is not JSON"):
        read_labels(tmp_path / "bad.json")
    with pytest.raises(ValidationError, match="no such labels file"):
        read_labels(tmp_path / "missing.json")
    with pytest.raises(ValidationError, match="is a folder"):
        read_labels(tmp_path)


def test_segmentation_rle_reads_rle_and_polygons() -> None:
    m = SHAPES["wheel"](50, 70)
    rle = mc.encode(m)[0]
    assert segmentation_rle(rle, 50, 70) == rle
    flat = [[float(v) for xy in r for v in xy] for r in mc.mask_to_rings(m)]
    assert np.array_equal(mc.decode([segmentation_rle(flat, 50, 70)])[0], m)
    runs = mc.run_lengths(rle["counts"]).tolist()  # uncompressed RLE
    assert np.array_equal(mc.decode([segmentation_rle({"size": [50, 70], "counts": runs},
                                                      50, 70)])[0], m)
