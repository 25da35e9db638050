"""``cogseg review``: the page read back with html.parser, its pictures, and where they come
from (the cache, else CDF, else the mask alone)."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.cli import main
from cogseg_ml.coco_io import CocoWriter
from cogseg_ml.errors import ValidationError
from cogseg_ml.mask_codec import decode
from cogseg_ml.review.decisions import labels_digest
from cogseg_ml.review.page import write_review_page
from cogseg_ml.review.thumbnails import annotation_mask, thumbnail
from tests.review.conftest import Labelled
from tests.review.page_parse import read_page


def _review(labelled: Labelled, out: Path, *extra: str) -> int:
    return main(["review", str(labelled.labels), "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def page_dir(labelled: Labelled, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("page") / "review"
    assert _review(labelled, out, "--cache", str(labelled.cache), "--offline") == 0
    return out


def _score(ann: dict[str, Any]) -> float:
    return float(ann["score"])


def test_every_mask_once_grouped_by_image_lowest_score_first(labelled: Labelled,
                                                             page_dir: Path) -> None:
    page = read_page(page_dir / "index.html")
    anns = {a["id"]: a for a in labelled.coco["annotations"]}
    assert sorted(c.ann_id for c in page.cards) == sorted(anns)
    for card in page.cards:
        ann = anns[card.ann_id]
        assert card.image_id == ann["image_id"] and card.category_id == ann["category_id"]
        assert card.provenance == ("api" if ann["source"] == "cdf-api" else "local")
        assert f"score {ann['score']:.3f}" in card.text
        assert f"area {ann['area']:,} px" in card.text
        assert ("API" if ann["source"] == "cdf-api" else "local model (box-model)") in card.text
    # one group per image, in a run; images ordered by their lowest score, masks within too
    runs = [c.image_id for c in page.cards]
    assert page.groups == list(dict.fromkeys(runs))
    lowest = []
    for image_id in page.groups:
        scores = [_score(anns[c.ann_id]) for c in page.cards if c.image_id == image_id]
        assert scores == sorted(scores)
        lowest.append(scores[0])
    assert lowest == sorted(lowest)


def test_every_referenced_picture_exists_and_is_what_the_page_says(page_dir: Path) -> None:
    page = read_page(page_dir / "index.html")
    assert len(page.pictures) == len(page.cards)
    for card in page.cards:
        src = card.img["src"]
        path = page_dir / src
        assert path.is_file(), src
        assert path.resolve().is_relative_to(page_dir.resolve())
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert (img.width, img.height) == (int(card.img["width"]), int(card.img["height"]))
            assert max(img.size) <= 256
    # nothing to fetch from elsewhere: no server, no network
    assert all("://" not in link and not link.startswith("/") for link in page.links)
    assert [s for s in page.scripts if "src" in s] == []


def test_the_page_names_its_labels_and_offers_the_filters(labelled: Labelled,
                                                          page_dir: Path) -> None:
    page = read_page(page_dir / "index.html")
    digest = labels_digest(labelled.coco)
    assert page.meta == {"labels_file": "labels.json", "labels_digest": digest,
                         "download_name": "labels.decisions.json"}
    assert page.metas["cogseg-labels-digest"] == digest
    names = {c["id"]: c["name"] for c in labelled.coco["categories"]}
    per_cat = Counter(a["category_id"] for a in labelled.coco["annotations"])
    cats = page.options["filter-category"]
    assert cats[0] == ("", f"all categories ({len(labelled.coco['annotations'])})")
    assert sorted(cats[1:]) == sorted((str(k), f"{names[k]} ({n})") for k, n in per_cat.items())
    per_source = Counter(a["source"] for a in labelled.coco["annotations"])
    assert page.options["filter-provenance"][1:] == [
        ("api", f"API ({per_source['cdf-api']})"),
        ("local", f"local model ({per_source['box-model']})")]
    assert [v for v, _ in page.options["filter-status"]] == ["", "undecided", "accept",
                                                             "reject"]


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_thumbnails_show_the_labelled_pixels(labelled: Labelled, page_dir: Path,
                                             images: list[Any]) -> None:
    """Each thumbnail is its mask over the very image it was labelled on (from the cache)."""
    page = read_page(page_dir / "index.html")
    by_name = {im.name: im for im in images}
    records = {im["id"]: im for im in labelled.coco["images"]}
    anns = {a["id"]: a for a in labelled.coco["annotations"]}
    colour = {c["id"]: i for i, c in enumerate(labelled.coco["categories"])}
    for card in page.cards:
        record, ann = records[card.image_id], anns[card.ann_id]
        mask = annotation_mask(ann, record["height"], record["width"])
        expected = thumbnail(by_name[record["file_name"]].pixels, mask,
                             colour=colour[ann["category_id"]])
        assert np.array_equal(_png(page_dir / card.img["src"]),
                              np.asarray(expected.convert("RGB")))
        alone = thumbnail(None, mask, colour=colour[ann["category_id"]])
        assert not np.array_equal(_png(page_dir / card.img["src"]),
                                  np.asarray(alone.convert("RGB")))
    assert page.notes == {}


def test_images_come_from_cdf_when_the_cache_lacks_them(labelled: Labelled, tmp_path: Path,
                                                        page_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    emu = labelled.emulator
    monkeypatch.setenv("COGNITE_PROJECT", emu.project)
    monkeypatch.setenv("COGNITE_BASE_URL", emu.base_url)
    monkeypatch.setenv("COGNITE_TOKEN", emu.issue_token())
    downloads = len([r for r in emu.requests if "/files/downloadlink" in r.path])
    out = tmp_path / "from-cdf"
    assert _review(labelled, out, "--cache", str(tmp_path / "empty-cache")) == 2  # no cache
    assert _review(labelled, out) == 0  # the (empty) user cache, then CDF
    assert len([r for r in emu.requests if "/files/downloadlink" in r.path]) > downloads
    from_cdf, from_cache = read_page(out / "index.html"), read_page(page_dir / "index.html")
    assert from_cdf.notes == {}
    for a, b in zip(from_cdf.cards, from_cache.cards, strict=True):
        assert a.ann_id == b.ann_id
        assert np.array_equal(_png(out / a.img["src"]), _png(page_dir / b.img["src"]))


def test_without_images_the_masks_are_drawn_alone_and_said(labelled: Labelled, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    out = tmp_path / "no-images"
    MaskCache(tmp_path / "other-cache").close()  # a cache, but not the labels' one
    assert _review(labelled, out, "--offline", "--cache", str(tmp_path / "other-cache")) == 0
    err = capsys.readouterr().err
    assert f"{len(labelled.coco['images'])} images drawn without their picture" in err
    page = read_page(out / "index.html")
    assert set(page.notes) == {im["id"] for im in labelled.coco["images"]}
    assert all("not in the cache" in note for note in page.notes.values())
    card = page.cards[0]
    ann = next(a for a in labelled.coco["annotations"] if a["id"] == card.ann_id)
    got = _png(out / card.img["src"])
    assert (got == 150).all(axis=2).any()  # the grey canvas of a mask without its picture
    assert got.shape[:2] == (int(card.img["height"]), int(card.img["width"]))
    assert ann["area"] > 0


def test_a_new_page_replaces_the_old_one_whole(labelled: Labelled, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert _review(labelled, out, "--offline") == 0
    first = {p.name for p in out.iterdir()}
    assert _review(labelled, out, "--offline") == 0
    second = {p.name for p in out.iterdir()}
    thumbs = [n for n in second if n.startswith("thumbs-")]
    assert len(thumbs) == 1 and thumbs[0] not in first
    assert {n for n in second if n.startswith(".")} == set()  # no temporary leftovers
    page = read_page(out / "index.html")
    assert all(c.img["src"].startswith(thumbs[0] + "/") for c in page.cards)


def test_polygon_labels_show_the_same_masks(labelled: Labelled, tmp_path: Path) -> None:
    coco = labelled.coco
    path = tmp_path / "polygons.json"
    with CocoWriter(path, coco["categories"], segmentation="polygon") as out:
        for im in coco["images"]:
            out.add_image(str(im["id"]), file_name=im["file_name"], height=im["height"],
                          width=im["width"], image_id=im["id"])
        for a in coco["annotations"]:
            out.add_annotation(str(a["image_id"]), a["category_id"], a["segmentation"],
                               a["score"], source=a["source"])
    polygons = json.loads(path.read_text())
    for a, p in zip(coco["annotations"], polygons["annotations"], strict=True):
        assert isinstance(p["segmentation"], list)
        im = next(i for i in coco["images"] if i["id"] == a["image_id"])
        assert np.array_equal(annotation_mask(p, im["height"], im["width"]),
                              decode([a["segmentation"]])[0])
    page = write_review_page(polygons, tmp_path / "poly-page", labels_name="polygons.json")
    assert page.masks == len(coco["annotations"])


def test_names_cannot_break_out_of_the_page(labelled: Labelled, tmp_path: Path) -> None:
    coco = copy.deepcopy(labelled.coco)
    coco["images"][0]["file_name"] = '</script><script>alert(1)</script><img src="x">'
    coco["categories"][0]["name"] = "<b>bold</b>"
    page = write_review_page(coco, tmp_path / "p", labels_name='a"</script>.json')
    read = read_page(page.index)
    assert len(read.scripts) == 2  # the data and the page's own script, nothing injected
    assert len(read.pictures) == len(coco["annotations"])
    assert read.meta["labels_file"] == 'a"</script>.json'
    assert any(label.startswith("<b>bold</b> (") for _, label in read.options["filter-category"])


@pytest.mark.parametrize(("coco", "says"), [
    ({"images": [], "annotations": [{"id": 1, "image_id": 9, "category_id": 1}],
      "categories": []}, "image 9, which the labels file does not list"),
    ({"images": [{"id": 1, "height": 2, "width": 2}], "categories": [],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1}] * 2},
     "annotation id 1 is used twice"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": []},
     "image 1 needs an integer 'height'"),
    ({"images": {}, "annotations": [], "categories": []}, "has lists 'images'"),
])
def test_inconsistent_labels_say_what_to_fix(tmp_path: Path, coco: dict[str, Any],
                                             says: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(says)):
        write_review_page(coco, tmp_path / "out", labels_name="labels.json")
    assert not (tmp_path / "out" / "index.html").exists()


@pytest.mark.parametrize(("text", "says"), [
    ("not json", "is not JSON"),
    (json.dumps({"images": [], "annotations": [], "categories": [],
                 "info": {"description": "another tool"}}), "not a cogseg_ml labels file"),
])
def test_the_command_refuses_files_it_cannot_review(tmp_path: Path, text: str, says: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text(text)
    assert main(["review", str(labels), "--out", str(tmp_path / "out"), "--offline"]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
