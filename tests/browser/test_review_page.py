"""The review page in a real browser: the grid, the filters, decisions by key and click, the
saved decisions file, and what ``cogseg export --decisions`` makes of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cogseg_ml.cli import main
from cogseg_ml.review.decisions import apply_decisions, load_decisions
from tests.review.conftest import Labelled

TIMEOUT_S = 20


def _wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT_S).until(condition)


def _open(driver: Any, index: Path) -> None:
    driver.get(index.resolve().as_uri())
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "true")


def _cards(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, ".card"))


def _shown_ids(driver: Any) -> list[int]:
    return [int(c.get_attribute("data-ann-id")) for c in _cards(driver) if c.is_displayed()]


def _counts(driver: Any) -> dict[str, int]:
    from selenium.webdriver.common.by import By

    return {k: int(driver.find_element(By.ID, f"count-{k}").text)
            for k in ("accepted", "rejected", "undecided", "shown", "total")}


def _keys(driver: Any, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    for key in keys:
        ActionChains(driver).send_keys(key).perform()


def _select(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def _decision(card: Any) -> str:
    return str(card.get_attribute("data-decision"))


def _all_pictures_loaded(driver: Any) -> bool:
    return bool(driver.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))


def _saved(driver: Any, downloads: Path, name: str) -> Path:
    """The downloaded file, once Chromium has finished writing it."""
    path = downloads / name
    _wait(driver, lambda _: path.exists() and not list(downloads.glob("*.crdownload")))
    return path


@pytest.fixture
def page(labelled: Labelled, tmp_path: Path) -> Path:
    out = tmp_path / "review"
    assert main(["review", str(labelled.labels), "--out", str(out), "--cache",
                 str(labelled.cache), "--offline", "--no-progress"]) == 0
    return out / "index.html"


def test_review_in_chromium(browser: Any, page: Path, labelled: Labelled, downloads: Path,
                            screenshots: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    anns = {a["id"]: a for a in labelled.coco["annotations"]}
    _open(browser, page)
    # the grid shows every mask, each picture loaded
    cards = _cards(browser)
    assert sorted(_shown_ids(browser)) == sorted(anns)
    assert _all_pictures_loaded(browser)
    n = len(anns)
    assert _counts(browser) == {"accepted": 0, "rejected": 0, "undecided": n, "shown": n,
                                "total": n}

    # a category filter hides the other masks; with a source filter too, fewer still
    category = labelled.coco["annotations"][0]["category_id"]
    _select(browser, "filter-category", str(category))
    in_category = sorted(i for i, a in anns.items() if a["category_id"] == category)
    assert sorted(_shown_ids(browser)) == in_category and len(in_category) < n
    assert _counts(browser)["shown"] == len(in_category)
    _select(browser, "filter-provenance", "local")
    local = sorted(i for i in in_category if anns[i]["source"] != "cdf-api")
    assert sorted(_shown_ids(browser)) == local and 0 < len(local) < len(in_category)
    _select(browser, "filter-category", "")
    _select(browser, "filter-provenance", "")
    assert len(_shown_ids(browser)) == n

    # keyboard: a accepts and moves on, r rejects, j/k move, u takes a decision back
    order = [int(c.get_attribute("data-ann-id")) for c in cards]
    _keys(browser, "arjra")  # accept 0, reject 1, skip 2, reject 3, accept 4
    assert [_decision(c) for c in cards[:6]] == ["accept", "reject", "undecided", "reject",
                                                 "accept", "undecided"]
    _keys(browser, "ku")  # back to 4 and take it back
    assert _decision(cards[4]) == "undecided"
    assert _counts(browser) == {"accepted": 1, "rejected": 2, "undecided": n - 3, "shown": n,
                                "total": n}
    # a click rejects; clicking it again takes it back, once more rejects
    reject_last = cards[-1].find_element(By.CSS_SELECTOR, "button[data-decide='reject']")
    for _ in range(3):
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", reject_last)
        reject_last.click()
    assert _decision(cards[-1]) == "reject"
    rejected = {order[1], order[3], order[-1]}
    # the rest, accepted through the undecided filter and the bulk button
    _select(browser, "filter-status", "undecided")
    assert len(_shown_ids(browser)) == n - 4
    browser.find_element(By.ID, "accept-rest").click()
    assert _shown_ids(browser) == []
    _select(browser, "filter-status", "")
    assert _counts(browser) == {"accepted": n - 3, "rejected": 3, "undecided": 0, "shown": n,
                                "total": n}

    # a reload keeps the decisions (this browser's storage), then save them
    _open(browser, page)
    assert _counts(browser)["rejected"] == 3
    assert {int(c.get_attribute("data-ann-id")) for c in _cards(browser)
            if _decision(c) == "reject"} == rejected
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(screenshots / "review.png"))
    browser.find_element(By.ID, "save").click()
    saved = _saved(browser, downloads, "labels.decisions.json")
    assert "saved" in browser.find_element(By.ID, "status").text

    decisions = load_decisions(saved, labelled.coco, "labels.json")
    assert decisions.rejected == rejected
    assert decisions.accepted == set(anns) - rejected
    kept = apply_decisions(labelled.coco, decisions)
    assert {a["id"] for a in kept["annotations"]} == set(anns) - rejected
    shutil.copy(saved, screenshots / "labels.decisions.json")


def test_saved_decisions_drive_cogseg_export(browser: Any, page: Path, labelled: Labelled,
                                             downloads: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, page)
    _keys(browser, "r" + "a" * (len(labelled.coco["annotations"]) - 2) + "r")
    browser.find_element(By.ID, "save").click()
    saved = _saved(browser, downloads, "labels.decisions.json")
    order = [int(c.get_attribute("data-ann-id")) for c in _cards(browser)]
    rejected = {order[0], order[-1]}
    out = tmp_path / "accepted"
    assert main(["export", str(labelled.labels), "--to", "coco", "--decisions", str(saved),
                 "--cache", str(labelled.cache), "--out", str(out)]) == 0
    written = json.loads((out / "annotations.json").read_text())
    assert {a["id"] for a in written["annotations"]} == (
        {a["id"] for a in labelled.coco["annotations"]} - rejected)
    # a decisions file for other labels is refused, by name
    other = tmp_path / "other.json"
    other_coco = dict(labelled.coco, annotations=labelled.coco["annotations"][1:])
    other.write_text(json.dumps(other_coco))
    assert main(["export", str(other), "--to", "coco", "--decisions", str(saved),
                 "--cache", str(labelled.cache), "--out", str(tmp_path / "other-out")]) == 2
    err = capsys.readouterr().err
    assert "labels.decisions.json" in err and "labels.json" in err and "other.json" in err
    assert not (tmp_path / "other-out" / "annotations.json").exists()


def test_the_demo_page(browser: Any, tmp_path: Path, screenshots: Path) -> None:
    """The demo's review page (synthetic shapes and a photo) loads every picture."""
    assert main(["demo", "--out", str(tmp_path / "demo"), "--images", "4", "--quiet"]) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    _open(browser, tmp_path / "demo" / report["review_page"])
    assert len(_shown_ids(browser)) == report["annotations"] == report["review_masks"]
    assert _all_pictures_loaded(browser)
    _keys(browser, "ar")
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(screenshots / "demo.png"))
