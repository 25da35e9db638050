"""The demo's YOLO export (``cogseg export --to yolo``), moved to another folder, read and
trained on by Ultralytics: its loader finds every image and instance, its ``polygon2mask`` at
the image's own size gives back exactly our masks (one instance per piece), and one epoch of
``yolo11n-seg.yaml`` (from scratch, on the CPU) runs to the end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cogseg_ml.cli import main
from cogseg_ml.demo import run_demo
from cogseg_ml.mask_codec import decode
from tests.exports.readers import pieces


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """The moved export's data.yaml, and each image's expected instances (pieces of its
    masks, in file order) by image file name."""
    pytest.importorskip("ultralytics", reason="make test-ultralytics installs it")
    tmp = tmp_path_factory.mktemp("ultralytics")
    assert run_demo(tmp / "demo", n_images=4, quiet=True) == 0
    assert main(["export", str(tmp / "demo" / "coco.json"), "--to", "yolo",
                 "--cache", str(tmp / "demo" / "cache"), "--out", str(tmp / "yolo")]) == 0
    moved = tmp / "copied" / "yolo"
    moved.parent.mkdir()
    shutil.move(str(tmp / "yolo"), str(moved))
    coco = json.loads((tmp / "demo" / "coco.json").read_text(encoding="utf-8"))
    name_of = {im["id"]: Path(im["file_name"]).name for im in coco["images"]}
    expected: dict[str, list[np.ndarray]] = {name: [] for name in name_of.values()}
    for ann in coco["annotations"]:
        expected[name_of[ann["image_id"]]].extend(pieces(decode([ann["segmentation"]])[0]))
    assert sorted(p.name for p in (moved / "images" / "train").iterdir()) == sorted(expected)
    return moved / "data.yaml", expected


def test_loader_finds_every_instance_and_fills_it_exactly(
        dataset: tuple[Path, dict[str, list[np.ndarray]]]) -> None:
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset, polygon2mask

    yaml_path, expected = dataset
    data = check_det_dataset(str(yaml_path))
    assert Path(data["train"]) == yaml_path.parent / "images" / "train"
    ds = YOLODataset(img_path=data["train"], data=data, task="segment", imgsz=64,
                     augment=False, cache=False)
    assert sorted(Path(lb["im_file"]).name for lb in ds.labels) == sorted(expected)
    instances = 0
    for lb in ds.labels:
        want = expected[Path(lb["im_file"]).name]
        h, w = lb["shape"]
        assert len(lb["segments"]) == len(lb["cls"]) == len(want)
        for seg, mask in zip(lb["segments"], want, strict=True):
            xy = seg * np.asarray([w, h], dtype=np.float32)  # as Instances.denormalize
            got = polygon2mask((h, w), [xy.reshape(-1)]).astype(bool)
            assert got.shape == mask.shape and np.array_equal(got, mask)
            instances += 1
    assert instances >= len(expected)


def test_one_epoch_from_scratch_on_the_cpu(dataset: tuple[Path, dict[str, list[np.ndarray]]],
                                           tmp_path: Path) -> None:
    from ultralytics import YOLO

    yaml_path, expected = dataset
    model = YOLO("yolo11n-seg.yaml")  # from scratch: the .pt name would download weights
    model.train(data=str(yaml_path), epochs=1, imgsz=64, batch=2, device="cpu", workers=0,
                plots=False, amp=False, project=str(tmp_path), name="run", exist_ok=True,
                verbose=False)
    run = tmp_path / "run"
    assert (run / "weights" / "last.pt").is_file()
    results = (run / "results.csv").read_text(encoding="utf-8").splitlines()
    assert len(results) == 2  # a header and the one epoch
    assert "metrics/mAP50(M)" in results[0]
