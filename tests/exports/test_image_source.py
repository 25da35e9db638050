"""Where an export's image bytes come from: the mask cache's image store (no CDF needed), else
CDF through the store (kept in the cache for next time); bytes that are not the labelled ones,
and images found nowhere, are refused before anything is written."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cogseg_ml.coco_io import CocoWriter
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image
from cogseg_ml.errors import ValidationError
from cogseg_ml.exports import to_coco, to_yolo
from tests.exports.labelsets import LabelSet, build


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".incomplete")]


def test_cached_images_need_no_cdf(labelset: LabelSet, tmp_path: Path,
                                   shared_emulator: Emulator) -> None:
    before = len(shared_emulator.requests)
    report = to_yolo(labelset.labels, tmp_path / "y", cache=labelset.cache)  # no COGNITE_* set
    assert report.from_cache == report.images == 3 and report.downloaded == 0
    assert len(shared_emulator.requests) == before


def test_images_missing_from_the_cache_come_from_cdf_and_stay(
        labelset: LabelSet, tmp_path: Path, shared_emulator: Emulator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "fresh-cache"
    first = to_coco(labelset.labels, tmp_path / "a", cache=cache, config=shared_emulator.config)
    assert first.downloaded == 3 and first.from_cache == 0
    shas = {im["file_name"]: im["sha256"] for im in labelset.coco("labels")["images"]}
    for name, sha in shas.items():
        assert hashlib.sha256((tmp_path / "a" / "images" / name).read_bytes()).hexdigest() == sha
    # COGNITE_* variables are read only when needed; here the cache has them all now.
    monkeypatch.setenv("COGNITE_PROJECT", "not-used")
    second = to_coco(labelset.labels, tmp_path / "b", cache=cache)
    assert second.from_cache == 3 and second.downloaded == 0


def test_cdf_from_the_environment(labelset: LabelSet, tmp_path: Path, shared_emulator: Emulator,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"COGNITE_PROJECT": shared_emulator.project,
                 "COGNITE_BASE_URL": shared_emulator.base_url,
                 "COGNITE_TOKEN": shared_emulator.issue_token()}.items():
        monkeypatch.setenv(k, v)
    report = to_yolo(labelset.labels, tmp_path / "y", cache=tmp_path / "empty-cache")
    assert report.downloaded == 3


def test_no_cdf_configured_for_uncached_images_is_refused(labelset: LabelSet,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="3 of 3 images are not in the image cache") as err:
        to_yolo(labelset.labels, tmp_path / "y", cache=tmp_path / "empty-cache")
    assert "COGNITE_PROJECT" in str(err.value) and "image 1 ('synthetic_00000.png'" in \
        str(err.value)
    assert not (tmp_path / "y").exists() and leftovers(tmp_path) == []


def _labels_naming(path: Path, records: list[dict]) -> Path:
    with CocoWriter(path, [{"id": 1, "name": "thing"}]) as out:
        for r in records:
            out.add_image(str(r["id"]), image_id=r["id"], file_name=r["file_name"],
                          height=r["height"], width=r["width"], cdf_file=r["cdf_file"],
                          **({"sha256": r["sha256"]} if "sha256" in r else {}))
    return path


def test_an_image_found_nowhere_is_refused_up_front(labelset: LabelSet, tmp_path: Path,
                                                    shared_emulator: Emulator) -> None:
    records = labelset.coco("labels")["images"]
    ghost = {**records[0], "id": 99, "file_name": "ghost.png",
             "cdf_file": {"externalId": "no-such-file.png"}, "sha256": "0" * 64}
    labels = _labels_naming(tmp_path / "labels.json", [*records, ghost])
    before = [r.path for r in shared_emulator.requests]
    with pytest.raises(ValidationError, match="1 image is neither in the image cache") as err:
        to_yolo(labels, tmp_path / "y", cache=labelset.cache, config=shared_emulator.config)
    assert "image 99 ('ghost.png', CDF file externalId='no-such-file.png')" in str(err.value)
    assert "does not exist" in str(err.value)
    assert not (tmp_path / "y").exists() and leftovers(tmp_path) == []
    new = [r.path for r in shared_emulator.requests][len(before):]
    assert new and all(p.endswith("/files/byids") for p in new)  # looked up, nothing downloaded


def test_a_file_replaced_in_cdf_since_labelling_is_refused(
        make_emulator: Callable[..., Emulator], images: list[SyntheticImage],
        tmp_path: Path) -> None:
    emu = make_emulator(images=images[:2])
    ls = build(tmp_path / "set", emu, images[:2])
    emu.replace_file(images[1].name, encode_image(images[0].pixels))
    with pytest.raises(ValidationError, match="replaced since it was labelled") as err:
        to_yolo(ls.labels, tmp_path / "y", cache=tmp_path / "empty", config=emu.config)
    assert images[1].name in str(err.value)
    assert not (tmp_path / "y").exists() and leftovers(tmp_path) == []


def test_bytes_of_another_size_than_labelled_are_refused(labelset: LabelSet,
                                                         tmp_path: Path) -> None:
    records = [dict(r) for r in labelset.coco("labels")["images"]]
    records[-1]["height"] = 100
    labels = _labels_naming(tmp_path / "labels.json", records)
    with pytest.raises(ValidationError, match="but its labels are for 100x320"):
        to_yolo(labels, tmp_path / "y", cache=labelset.cache)
    assert not (tmp_path / "y").exists() and leftovers(tmp_path) == []
    assert json.loads(labels.read_text())["images"][-1]["height"] == 100
