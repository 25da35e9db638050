"""Review decisions reach the export: only accepted masks are written (undecided ones too with
"keep"), and decisions saved for another labels file are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cogseg_ml.errors import ValidationError
from cogseg_ml.exports import export_labels, to_coco, to_yolo
from cogseg_ml.review.decisions import Decisions, labels_digest
from tests.exports.labelsets import LabelSet


def decisions_file(path: Path, labels: Path, accepted: set[int], rejected: set[int]) -> Path:
    coco = json.loads(labels.read_text())
    path.write_text(Decisions(labels.name, labels_digest(coco), frozenset(accepted),
                              frozenset(rejected)).to_json())
    return path


def test_only_accepted_masks_are_written(labelset: LabelSet, tmp_path: Path) -> None:
    ids = sorted(labelset.masks())
    accepted, rejected = {ids[0], ids[3]}, {ids[1]}
    dec = decisions_file(tmp_path / "d.json", labelset.holey, accepted, rejected)
    report = to_coco(labelset.holey, tmp_path / "c", decisions=dec, cache=labelset.cache)
    got = json.loads((tmp_path / "c" / "annotations.json").read_text())
    assert {a["id"] for a in got["annotations"]} == accepted
    assert len(got["images"]) == len(labelset.coco()["images"])  # images are all kept
    assert report.objects == 2 and report.dropped == len(ids) - 2
    kept = to_yolo(labelset.holey, tmp_path / "y", decisions=dec, undecided="keep",
                   cache=labelset.cache, parts="joined")  # one line per mask
    lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "y" / "labels").rglob("*.txt"))
    assert lines == kept.objects == len(ids) - len(rejected)
    assert yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())["nc"] >= 1


def test_decisions_for_another_labels_file_are_refused_by_name(labelset: LabelSet,
                                                               tmp_path: Path) -> None:
    ids = sorted(a["id"] for a in labelset.coco("labels")["annotations"])
    dec = decisions_file(tmp_path / "d.json", labelset.labels, {ids[0]}, set())
    with pytest.raises(ValidationError) as err:
        export_labels(labelset.holey, "labelstudio", tmp_path / "ls", decisions=dec,
                      cache=labelset.cache)
    assert "labels.json" in str(err.value) and "holey.json" in str(err.value)
    assert not (tmp_path / "ls").exists()


def test_undecided_needs_decisions_and_options_their_format(labelset: LabelSet,
                                                            tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="undecided applies with decisions"):
        to_coco(labelset.holey, tmp_path / "c", undecided="keep", cache=labelset.cache)
    with pytest.raises(ValidationError, match="val_fraction does not apply to the coco export"):
        export_labels(labelset.holey, "coco", tmp_path / "c", val_fraction=0.2)
    with pytest.raises(ValidationError, match="unknown export format 'voc'"):
        export_labels(labelset.holey, "voc", tmp_path / "c")  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()
