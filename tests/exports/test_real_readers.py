"""Our exports of the stress masks (rings, holes, islands in holes, objects in several pieces,
one-pixel parts and lines, pixels touching at a corner, objects on the image's border, random
masks) read by the real readers: supervision's YOLO and COCO readers, Ultralytics' fill rule,
pycocotools. The YOLO export is read after it was moved to another folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cogseg_ml.coco_io import CocoWriter
from cogseg_ml.exports import to_coco, to_yolo
from cogseg_ml.mask_codec import encode
from tests.exports import reader_figures
from tests.exports.labelsets import LabelSet
from tests.exports.readers import pieces, read_yolo, read_yolo_supervision
from tests.exports.shapes import stress_masks

Masks = dict[str, list[tuple[str, np.ndarray]]]


@pytest.fixture(scope="module")
def stress(labelset: LabelSet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Masks]:
    """A labels file of the labelset's images holding every stress mask, and
    ``{file name: [(category, mask), ...]}`` in file order."""
    coco = labelset.coco("labels")
    path = tmp_path_factory.mktemp("stress") / "stress.json"
    expected: Masks = {}
    images = coco["images"][:3]
    with CocoWriter(path, coco["categories"]) as out:
        for n, im in enumerate(images):
            key = str(im["id"])
            out.add_image(key, file_name=im["file_name"], height=im["height"],
                          width=im["width"], image_id=im["id"], cdf_file=im["cdf_file"],
                          sha256=im["sha256"])
            masks = stress_masks(im["height"], im["width"], seed=n)
            for k, mask in enumerate(list(masks.values())[n::len(images)]):
                cat = coco["categories"][k % len(coco["categories"])]
                out.add_annotation(key, cat["id"], encode(mask)[0], 0.9, source="stress",
                                   prompt_index=k)
                expected.setdefault(im["file_name"], []).append((cat["name"], mask))
    return path, expected


@pytest.mark.parametrize("reader", ["ultralytics", "supervision"])
def test_yolo_stress_masks_come_back_exactly(stress: tuple[Path, Masks], labelset: LabelSet,
                                             tmp_path: Path, reader: str) -> None:
    labels, expected = stress
    to_yolo(labels, tmp_path / "yolo", cache=labelset.cache)
    moved = tmp_path / "moved" / "yolo"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "yolo"), str(moved))
    read = read_yolo(moved, "opencv") if reader == "ultralytics" else read_yolo_supervision(moved)
    assert sorted(read) == sorted(expected)
    for name, objects in expected.items():
        want = [(cat, piece) for cat, m in objects for piece in pieces(m)]
        got = read[name]
        assert [c for c, _ in got] == [c for c, _ in want]
        for (_, a), (_, b) in zip(got, want, strict=True):
            assert np.array_equal(a, b)


def test_coco_rle_export_is_exact_in_supervision(stress: tuple[Path, Masks],
                                                 labelset: LabelSet, tmp_path: Path) -> None:
    import supervision as sv

    labels, expected = stress
    to_coco(labels, tmp_path / "coco", cache=labelset.cache)
    ds = sv.DetectionDataset.from_coco(images_directory_path=str(tmp_path / "coco" / "images"),
                                       annotations_path=str(tmp_path / "coco" /
                                                            "annotations.json"),
                                       force_masks=True)
    seen = 0
    for path, _, det in ds:
        want = expected[Path(path).name]
        assert det.mask is not None and len(det) == len(want)
        assert [ds.classes[int(c)] for c in det.class_id] == [c for c, _ in want]
        for a, (_, b) in zip(det.mask, want, strict=True):
            assert np.array_equal(a, b)
        seen += 1
    assert seen == len(expected)


def test_coco_polygon_export_is_exact_in_pycocotools(stress: tuple[Path, Masks],
                                                     labelset: LabelSet,
                                                     tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    labels, expected = stress
    to_coco(labels, tmp_path / "coco", cache=labelset.cache, segmentation="polygon")
    api = COCO(str(tmp_path / "coco" / "annotations.json"))
    for img in api.loadImgs(api.getImgIds()):
        anns = sorted(api.loadAnns(api.getAnnIds(imgIds=[img["id"]])), key=lambda a: a["id"])
        assert all(isinstance(a["segmentation"], list) for a in anns)
        got = [api.annToMask(a).astype(bool) for a in anns]
        want = [m for _, m in expected[img["file_name"]]]
        assert len(got) == len(want)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_reader_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The figures of ``python -m tests.exports.reader_figures``: the default YOLO export is
    exact in both OpenCV readers, one instance per piece; ``joined`` one per mask."""
    results = reader_figures.figures(tmp_path)
    masks = reader_figures.stress_masks(reader_figures.HEIGHT, reader_figures.WIDTH)
    with capsys.disabled():
        print("\n" + reader_figures.table(results))
    for reader in ("ultralytics rule", "supervision"):
        scores = results["yolo separate", reader]
        assert all(iou == 1.0 for iou, _ in scores.values())
        assert all(n == len(pieces(masks[name])) for name, (_, n) in scores.items())
        joined = results["yolo joined", reader]
        assert all(n == 1 for name, (_, n) in joined.items() if masks[name].any())
        # A cut between pieces paints a line; a mask in one piece is exact.
        assert all(iou == 1.0 for name, (iou, _) in joined.items()
                   if len(pieces(masks[name])) == 1)
        assert min(iou for iou, _ in joined.values()) < 1.0
        # Pixel-corner rings, the YOLO export before: OpenCV grows them and paints their cuts.
        assert min(iou for iou, _ in results["yolo before", reader].values()) < 1.0
    for reader in ("supervision", "pycocotools"):
        assert all(iou == 1.0 for iou, _ in results["coco rle", reader].values())
    assert all(iou == 1.0 for iou, _ in results["coco polygon", "pycocotools"].values())
