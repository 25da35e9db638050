"""``cogseg review --out DIR`` follows the output-folder rule: its own earlier page is replaced
whole and listed in its manifest. The refusals (files it did not write, an empty path, the
current folder) are tested for export and review together in
``tests/exports/test_output_rule.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cogseg_ml.cli import main
from tests.exports.outputs import MANIFEST, siblings, snapshot
from tests.review.conftest import Labelled


def review(labelled: Labelled, out: Path | str, capsys: pytest.CaptureFixture[str]
           ) -> tuple[int, str]:
    code = main(["review", str(labelled.labels), "--out", str(out), "--cache",
                 str(labelled.cache), "--offline", "--no-progress"])
    return code, capsys.readouterr().err


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
