"""YOLO export read back as the readers that train on it read it: Ultralytics' rule (float32,
truncated to pixels, ``cv2.fillPoly``) and supervision's ``from_yolo`` (rounded, the same fill),
after the folder was moved. By default every mask comes back exactly, one instance per piece;
``parts="joined"`` gives one instance per mask, its cuts painted as lines."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cogseg_ml.exports import export_labels, to_yolo
from tests.exports.labelsets import LabelSet
from tests.exports.readers import pieces, read_yolo, read_yolo_supervision

READERS = {"ultralytics": lambda folder: read_yolo(folder, "opencv"),
           "supervision": read_yolo_supervision}


def _moved(out: Path, tmp_path: Path) -> Path:
    """``out`` moved to another folder (an export copied to a training machine)."""
    moved = tmp_path / "elsewhere" / "dataset"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    assert not out.exists()
    return moved


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_mask_comes_back_exactly_after_a_move(labelset: LabelSet, tmp_path: Path,
                                                    reader: str) -> None:
    out = tmp_path / "yolo"
    report = to_yolo(labelset.holey, out, cache=labelset.cache)
    read = READERS[reader](_moved(out, tmp_path))
    source = labelset.masks()
    coco = labelset.coco()
    assert sorted(read) == sorted(im["file_name"] for im in coco["images"])
    assert report.images == len(coco["images"]) and report.objects == len(source)
    several = 0
    for im in coco["images"]:
        expected = [(name, piece) for rec, name, m in source.values() if rec["id"] == im["id"]
                    for piece in pieces(m)]
        got = read[im["file_name"]]
        assert [n for n, _ in got] == [n for n, _ in expected]
        for (_, a), (_, b) in zip(got, expected, strict=True):
            assert np.array_equal(a, b)  # exact: outline painted inside the mask, holes empty
        several += len(expected) - sum(rec["id"] == im["id"] for rec, _, _ in source.values())
    assert several > 0  # the set has objects in several pieces: one line for each


@pytest.mark.parametrize("reader", sorted(READERS))
def test_joined_parts_give_one_instance_per_mask(labelset: LabelSet, tmp_path: Path,
                                                 reader: str) -> None:
    out = tmp_path / "yolo"
    export_labels(labelset.holey, "yolo", out, cache=labelset.cache, parts="joined")
    read = READERS[reader](out)
    source = labelset.masks()
    exact = cut = 0
    for im in labelset.coco()["images"]:
        expected = [(name, m) for rec, name, m in source.values() if rec["id"] == im["id"]]
        got = read[im["file_name"]]
        assert [n for n, _ in got] == [n for n, _ in expected]
        for (_, a), (_, b) in zip(got, expected, strict=True):
            assert (a | b).sum() == a.sum()  # every pixel of the mask; the cuts add lines
            if len(pieces(b)) == 1:
                assert np.array_equal(a, b)
                exact += 1
            else:
                cut += int(a.sum() - b.sum())
    assert exact > 0 and cut > 0


def test_layout_names_and_background_images(labelset: LabelSet, tmp_path: Path) -> None:
    out = tmp_path / "yolo"
    to_yolo(labelset.holey, out, cache=labelset.cache)
    data = yaml.safe_load((out / "data.yaml").read_text())
    coco = labelset.coco()
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    assert data["names"] == {i: c["name"] for i, c in enumerate(cats)}
    assert data["nc"] == len(cats) and "path" not in data  # relocatable: splits beside the yaml
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
    read = read_yolo_supervision(_moved(tmp_path / "a", tmp_path))  # both splits, moved
    assert sorted(read) == sorted(a)


def test_an_unknown_parts_option_is_refused(labelset: LabelSet, tmp_path: Path) -> None:
    from cogseg_ml.errors import ValidationError

    with pytest.raises(ValidationError, match="'separate' or 'joined'"):
        to_yolo(labelset.labels, tmp_path / "y", cache=labelset.cache,
                parts="pieces")  # type: ignore[arg-type]
    assert not (tmp_path / "y").exists()


def test_the_cli_takes_yolo_parts_for_yolo_only(labelset: LabelSet, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from cogseg_ml.cli import main

    args = [str(labelset.holey), "--cache", str(labelset.cache), "--yolo-parts", "joined"]
    assert main(["export", *args, "--to", "yolo", "--out", str(tmp_path / "y")]) == 0
    lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "y" / "labels").rglob("*.txt"))
    assert lines == len(labelset.masks())  # one line per mask
    assert main(["export", *args, "--to", "coco", "--out", str(tmp_path / "c")]) == 2
    assert "--yolo-parts goes with --to yolo" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
