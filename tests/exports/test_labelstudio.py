"""Label Studio export read back by the format's documented rules: tasks with the masks as
predictions, points in percent, the labelling config that matches them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from cogseg_ml.exports import to_labelstudio
from tests.exports.labelsets import LabelSet
from tests.exports.readers import iou, read_labelstudio


@pytest.mark.parametrize("rule", ["nonzero", "evenodd"])
def test_round_trip_gives_back_every_mask(labelset: LabelSet, tmp_path: Path, rule: str) -> None:
    out = tmp_path / "ls"
    report = to_labelstudio(labelset.holey, out, cache=labelset.cache)
    read = read_labelstudio(out, rule)
    source = labelset.masks()
    assert report.objects == len(source)
    for image, objects in read.items():
        assert (out / image).is_file()  # data.image: images/<name> under the export
        for label, mask, result in objects:
            ann_id = int(result["id"].removeprefix("cogseg-"))
            rec, name, expected = source[ann_id]
            assert image == f"images/{rec['file_name']}" and label == name
            assert (result["original_width"], result["original_height"]) == \
                (rec["width"], rec["height"])
            assert iou(mask, expected) >= 0.98
            assert np.array_equal(mask, expected)
    assert sum(len(v) for v in read.values()) == len(source)


def test_predictions_carry_scores_model_version_and_match_the_config(
        labelset: LabelSet, tmp_path: Path) -> None:
    out = tmp_path / "ls"
    to_labelstudio(labelset.holey, out, cache=labelset.cache,
                   image_prefix="/data/local-files/?d=site-a/images/")
    tasks = json.loads((out / "tasks.json").read_text())
    coco = labelset.coco()
    scores = {a["id"]: a["score"] for a in coco["annotations"]}
    assert len(tasks) == len(coco["images"])
    config = ET.fromstring((out / "label_config.xml").read_text())
    image_tag, poly_tag = config.find("Image"), config.find("PolygonLabels")
    assert image_tag is not None and poly_tag is not None
    labels = {e.get("value") for e in poly_tag.iter("Label")}
    assert labels == {c["name"] for c in coco["categories"]}
    for task in tasks:
        assert task["data"]["image"].startswith("/data/local-files/?d=site-a/images/")
        for pred in task["predictions"]:
            assert pred["model_version"] == "test-shapes"
            results = pred["result"]
            assert pred["score"] == pytest.approx(np.mean([r["score"] for r in results]))
            for r in results:
                assert r["from_name"] == poly_tag.get("name")
                assert r["to_name"] == poly_tag.get("toName") == image_tag.get("name")
                assert r["score"] == scores[int(r["id"].removeprefix("cogseg-"))]
                assert set(r["value"]["polygonlabels"]) <= labels
                pts = np.asarray(r["value"]["points"])
                assert pts.min() >= 0 and pts.max() <= 100
    assert tasks[-1]["predictions"] == []  # the image without masks: a task to label


def test_model_version_defaults_to_the_labelling_backend(labelset: LabelSet,
                                                         tmp_path: Path) -> None:
    to_labelstudio(labelset.labels, tmp_path / "ls", cache=labelset.cache)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    sources = {a["source"] for a in labelset.coco("labels")["annotations"]}
    assert {p["model_version"] for t in tasks for p in t["predictions"]} == \
        {"+".join(sorted(sources))}
