"""``cogseg review --out DIR`` follows the output-folder rule: files it did not write are
never overwritten (refused with one line, byte-for-byte unchanged), an empty path and the
current folder are refused, and its own earlier page is replaced whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cogseg_ml.cli import main
from tests.exports.outputs import MANIFEST, one_line, siblings, snapshot
from tests.review.conftest import Labelled


def review(labelled: Labelled, out: Path | str, capsys: pytest.CaptureFixture[str]
           ) -> tuple[int, str]:
    code = main(["review", str(labelled.labels), "--out", str(out), "--cache",
                 str(labelled.cache), "--offline", "--no-progress"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("theirs", ["index.html", "coco.json", "report.md"])
def test_files_it_did_not_write_are_refused_untouched(labelled: Labelled, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     theirs: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / theirs).write_text("<p>the user's own page</p>\n")
    before = snapshot(out)
    code, err = review(labelled, out, capsys)
    assert code == 2 and theirs in one_line(err)
    assert snapshot(out) == before and siblings(tmp_path) == ["out"]


def test_its_own_page_is_replaced_and_listed_in_its_manifest(labelled: Labelled, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    out = tmp_path / "out"
    assert review(labelled, out, capsys)[0] == 0
    first = snapshot(out)
    assert review(labelled, out, capsys)[0] == 0
    second = snapshot(out)
    assert first.keys() != second.keys()  # new thumbnails folder: an open page never mixes
    manifest = json.loads(second[MANIFEST] or b"")
    assert manifest["command"] == "review"
    assert set(manifest["files"]) == {k for k, v in second.items() if v is not None} - {MANIFEST}
    assert siblings(tmp_path) == ["out"]


@pytest.mark.parametrize("out", ["", "."])
def test_an_empty_path_and_the_current_folder_are_refused(
        labelled: Labelled, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, out: str) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, err = review(labelled, out, capsys)
    assert code == 2 and "--out" in one_line(err)
    assert siblings(here) == [] and siblings(tmp_path) == ["here"]
