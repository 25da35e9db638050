"""``cogseg demo --out DIR`` follows the output-folder rule: a file, an empty path or a folder
with files it did not write are refused with one line before any work (nothing changed); its
own earlier output is replaced whole."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cogseg_ml.cli import main
from tests.exports.outputs import COGSEG, MANIFEST, one_line, siblings, snapshot, stopped_at_image


def demo(out: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["demo", "--out", str(out), "--images", "1", "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("theirs", ["index.html", "coco.json", "report.md"])
def test_files_it_did_not_write_are_refused_untouched(tmp_path: Path, theirs: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / theirs).write_text("the user's own file\n")
    before = snapshot(out)
    code, err = demo(out, capsys)
    assert code == 2 and theirs in one_line(err)
    assert snapshot(out) == before and siblings(tmp_path) == ["out"]


def test_an_existing_file_is_exit_2_with_one_line(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    done = subprocess.run([str(COGSEG), "demo", "--out", str(target), "--images", "1",
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "not a folder" in one_line(done.stderr)
    assert target.read_text() == "keep me\n" and siblings(tmp_path) == ["notes.txt"]


def test_an_empty_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = demo("", capsys)
    assert code == 2 and "--out" in one_line(err)
    assert siblings(tmp_path) == []


def test_its_own_output_is_replaced_and_then_a_users_file_protects_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert demo(out, capsys)[0] == 0
    assert demo(out, capsys)[0] == 0  # its own output (its cache included) is its own again
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["command"] == "demo" and "review/index.html" in manifest["files"]
    assert siblings(tmp_path) == ["out"]
    (out / "coco.decisions.json").write_text("{}\n")  # saved from the review page
    before = snapshot(out)
    code, err = demo(out, capsys)
    assert code == 2 and "coco.decisions.json" in one_line(err)
    assert snapshot(out) == before


@pytest.mark.timeout(120)
def test_a_stopped_demo_is_130_and_leaves_no_folder(tmp_path: Path) -> None:
    code, err = stopped_at_image(["demo", "--out", str(tmp_path / "out"), "--images", "1",
                                  "--quiet"], at=1)
    assert code == 130 and "stopped by SIGINT" in one_line(err)
    assert siblings(tmp_path) == []
