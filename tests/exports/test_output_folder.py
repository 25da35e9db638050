"""An export's folder appears complete or not at all: an existing non-empty --out is refused
before any work, and a failure or a stop midway leaves neither the folder nor a temporary one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cogseg_ml.errors import ValidationError
from cogseg_ml.exports import export_labels, to_coco
from cogseg_ml.store.image_fetcher import ImageFetcher
from tests.exports.labelsets import LabelSet


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".incomplete")]


def test_a_folder_that_is_not_empty_is_refused_first(labelset: LabelSet, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValidationError, match="exists and is not empty"):
        export_labels(tmp_path / "no-such-labels.json", "yolo", out)  # out is checked first
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValidationError, match="is not a folder"):
        to_coco(labelset.labels, tmp_path / "a-file", cache=labelset.cache)
    with pytest.raises(ValidationError, match="does not exist"):
        to_coco(labelset.labels, tmp_path / "missing" / "out", cache=labelset.cache)


def test_an_empty_folder_is_filled(labelset: LabelSet, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    to_coco(labelset.labels, out, cache=labelset.cache)
    assert (out / "annotations.json").is_file() and leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["coco", "yolo", "labelstudio"])
def test_a_stop_midway_leaves_nothing(labelset: LabelSet, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    real = ImageFetcher.get
    calls: list[int] = []

    def stop_at_the_second(self: ImageFetcher, record: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second image is being fetched
        return real(self, record)

    monkeypatch.setattr(ImageFetcher, "get", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        export_labels(labelset.holey, fmt, tmp_path / "out", cache=labelset.cache)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_folder_filled_by_someone_else_meanwhile_is_not_overwritten(
        labelset: LabelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    real = ImageFetcher.get

    def and_meanwhile(self: ImageFetcher, record: Any) -> Any:
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("theirs")
        return real(self, record)

    monkeypatch.setattr(ImageFetcher, "get", and_meanwhile)
    with pytest.raises(ValidationError, match="created or filled while the export ran"):
        to_coco(labelset.labels, out, cache=labelset.cache)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and leftovers(tmp_path) == []
