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
