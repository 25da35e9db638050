"""``cogseg demo`` writes the review page of its labels, beside an overlay for every image."""

from __future__ import annotations

import json
from pathlib import Path

from cogseg_ml.cli import main
from cogseg_ml.review.decisions import labels_digest
from tests.review.page_parse import read_page


def test_demo_writes_overlays_and_the_review_page(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--images", "2", "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    coco = json.loads((tmp_path / "coco.json").read_text())
    overlays = {p.stem for p in (tmp_path / "overlays").glob("*.png")}
    assert overlays == {Path(im["file_name"]).stem for im in coco["images"]}
    assert report["review_page"] == "review/index.html"
    page = read_page(tmp_path / report["review_page"])
    assert sorted(c.ann_id for c in page.cards) == sorted(a["id"] for a in coco["annotations"])
    assert report["review_masks"] == len(coco["annotations"])
    assert report["review_without_picture"] == 0
    assert page.notes == {}  # every picture came from the demo's cache
    assert all((tmp_path / "review" / src).is_file() for src in page.pictures)
    assert page.meta["labels_file"] == "coco.json"
    assert page.meta["labels_digest"] == labels_digest(coco)
    assert "review/index.html" in (tmp_path / "report.md").read_text()


def test_demo_labels_from_class_names_with_duplicates_and_distractors_handled(
        tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--images", "1", "--quiet"]) == 0
    run = json.loads((tmp_path / "report.json").read_text())["class_names"]
    assert run["classes"] == ["valve", "pressure gauge", "flange"]
    assert run["failed"] == 0 and run["objects"] > 0
    assert run["matched"] == run["right_class"] == run["objects"]  # every object, its class
    assert run["extra_labels"] == 0 and run["min_iou"] >= 0.98
    # the injected duplicate and distractor of each image were dropped, not labelled
    assert run["dropped"].get("cross-class duplicate", 0) >= run["kept"]
    assert sum(run["skipped"].values()) == 1  # the PDF in the same directory
    coco = json.loads((tmp_path / "class_names" / "coco.json").read_text())
    assert len(coco["annotations"]) == run["objects"]
    assert "from class names only" in (tmp_path / "report.md").read_text()
