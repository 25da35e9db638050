"""YOLO export read back by the format's documented rules (tests/exports/readers.py): every
mask comes back exactly, holes and parts included, under either filling rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cogseg_ml.exports import to_yolo
from tests.exports.labelsets import LabelSet
from tests.exports.readers import iou, read_yolo


@pytest.mark.parametrize("rule", ["evenodd", "nonzero"])
def test_round_trip_gives_back_every_mask(labelset: LabelSet, tmp_path: Path, rule: str) -> None:
    out = tmp_path / "yolo"
    report = to_yolo(labelset.holey, out, cache=labelset.cache)
    source = labelset.masks()
    read = read_yolo(out, rule)
    coco = labelset.coco()
    assert sorted(read) == sorted(im["file_name"] for im in coco["images"])
    assert report.images == len(coco["images"]) and report.objects == len(source)
    for im in coco["images"]:
        expected = [(name, m) for rec, name, m in source.values() if rec["id"] == im["id"]]
        got = read[im["file_name"]]
        assert [n for n, _ in got] == [n for n, _ in expected]
        for (_, a), (_, b) in zip(got, expected, strict=True):
            assert iou(a, b) >= 0.98
            assert np.array_equal(a, b)  # exact: the ring's cuts cancel, holes stay empty


def test_layout_names_and_background_images(labelset: LabelSet, tmp_path: Path) -> None:
    out = tmp_path / "yolo"
    to_yolo(labelset.holey, out, cache=labelset.cache)
    data = yaml.safe_load((out / "data.yaml").read_text())
    coco = labelset.coco()
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    assert data["names"] == {i: c["name"] for i, c in enumerate(cats)}
    assert data["nc"] == len(cats) and Path(data["path"]) == out.absolute()
    assert data["train"] == data["val"] == "images/train"  # no split asked for
    labels = sorted((out / "labels" / "train").iterdir())
    assert [p.stem for p in labels] == sorted(Path(im["file_name"]).stem
                                              for im in coco["images"])
    last = Path(coco["images"][-1]["file_name"]).stem  # it has no masks: an empty label file
    assert (out / "labels" / "train" / f"{last}.txt").read_text() == ""
    for line in (out / "labels" / "train" / labels[0].name).read_text().splitlines():
        cls, *coords = line.split()
        values = np.asarray(coords, dtype=float)
        assert 0 <= int(cls) < len(cats) and len(values) % 2 == 0 and len(values) >= 6
        assert values.min() >= 0 and values.max() <= 1


def test_val_split_is_stable_and_uses_both_splits(labelset: LabelSet, tmp_path: Path) -> None:
    def split_of(out: Path) -> dict[str, str]:
        return {p.name: p.parent.name for p in (out / "images").glob("*/*")}

    to_yolo(labelset.labels, tmp_path / "a", val_fraction=0.5, cache=labelset.cache)
    to_yolo(labelset.labels, tmp_path / "b", val_fraction=0.5, cache=labelset.cache)
    a = split_of(tmp_path / "a")
    assert a == split_of(tmp_path / "b") and set(a.values()) == {"train", "val"}
    data = yaml.safe_load((tmp_path / "a" / "data.yaml").read_text())
    assert data["val"] == "images/val"
    for img, split in a.items():
        assert (tmp_path / "a" / "labels" / split / f"{Path(img).stem}.txt").is_file()
