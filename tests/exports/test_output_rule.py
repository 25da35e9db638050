"""The output-folder rule of ``cogseg export`` and ``cogseg review`` (shared with demo): a
folder is written whole, an earlier output of the same command (recognised by its manifest,
``cogseg-output.json``) is replaced whole, and nothing cogseg did not write is ever touched:
such a folder is refused before any work, with one line, its files byte-for-byte unchanged."""

from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import cogseg_ml.exports.folder_writer as output_folder
from cogseg_ml.cli import main
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.errors import ValidationError
from cogseg_ml.exports import to_coco
from tests.exports.labelsets import LabelSet, build
from tests.exports.outputs import COGSEG, MANIFEST, one_line, siblings, snapshot


def export(labelset: LabelSet, out: Path | str, capsys: pytest.CaptureFixture[str],
           *extra: str, to: str = "coco", labels: Path | None = None) -> tuple[int, str]:
    code = main(["export", str(labels or labelset.holey), "--to", to, "--out", str(out),
                 "--cache", str(labelset.cache), *extra])
    return code, capsys.readouterr().err


def run_command(command: str, labelset: LabelSet, out: Path | str,
                capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``cogseg export`` or ``cogseg review`` (offline, from the cache) into ``out``: both
    follow the one output-folder rule."""
    if command == "export":
        return export(labelset, out, capsys)
    code = main(["review", str(labelset.labels), "--out", str(out), "--cache",
                 str(labelset.cache), "--offline", "--no-progress"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["export", "review"])
@pytest.mark.parametrize("theirs", ["index.html", "coco.json", "report.md"])
def test_a_folder_with_files_cogseg_did_not_write_is_refused_untouched(
        labelset: LabelSet, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        theirs: str, command: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / theirs).write_text("the user's own file\n")
    before = snapshot(out)
    code, err = run_command(command, labelset, out, capsys)
    assert code == 2
    assert theirs in one_line(err)
    assert snapshot(out) == before and siblings(tmp_path) == ["out"]


def test_its_own_earlier_output_is_replaced_whole(labelset: LabelSet, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert export(labelset, out, capsys)[0] == 0
    first = snapshot(out)
    assert "annotations.json" in first and MANIFEST in first
    code, err = export(labelset, out, capsys, to="yolo")
    assert code == 0, err
    second = snapshot(out)
    assert "annotations.json" not in second and "data.yaml" in second  # nothing of the first
    manifest = json.loads(second[MANIFEST] or b"")
    assert manifest["command"] == "export"
    files = {rel for rel, data in second.items() if data is not None} - {MANIFEST}
    assert set(manifest["files"]) == files
    assert siblings(tmp_path) == ["out"]  # no temporary or earlier folder left beside it


def test_a_file_added_to_or_changed_in_its_output_makes_it_not_its_own(
        labelset: LabelSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert export(labelset, out, capsys)[0] == 0
    (out / "images" / "notes.txt").write_text("mine")
    before = snapshot(out)
    code, err = export(labelset, out, capsys)
    assert code == 2 and "images/notes.txt" in one_line(err)
    assert snapshot(out) == before
    (out / "images" / "notes.txt").unlink()
    annotations = out / "annotations.json"
    annotations.write_bytes(annotations.read_bytes().replace(b'"', b'"', 1) + b"\n")  # edited
    before = snapshot(out)
    code, err = export(labelset, out, capsys)
    line = one_line(err)
    assert code == 2 and "annotations.json" in line and "changed" in line
    assert snapshot(out) == before


def test_another_commands_output_is_not_replaced(labelset: LabelSet, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "page"
    assert main(["review", str(labelset.holey), "--out", str(out), "--cache",
                 str(labelset.cache), "--offline", "--no-progress"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    code, err = export(labelset, out, capsys)
    assert code == 2 and "cogseg review" in one_line(err)
    assert snapshot(out) == before


def test_an_input_inside_the_output_is_refused(labelset: LabelSet, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert export(labelset, out, capsys)[0] == 0
    before = snapshot(out)
    code, err = export(labelset, out, capsys, to="yolo", labels=out / "annotations.json")
    line = one_line(err)
    assert code == 2 and "annotations.json" in line and "reads" in line
    assert snapshot(out) == before


@pytest.mark.parametrize("command", ["export", "review"])
@pytest.mark.parametrize("out", ["", "."])
def test_an_empty_path_and_the_current_folder_are_refused(
        labelset: LabelSet, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, out: str, command: str) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, err = run_command(command, labelset, out, capsys)
    assert code == 2 and "--out" in one_line(err)
    assert siblings(here) == [] and siblings(tmp_path) == ["here"]


def test_to_coco_into_a_path_that_cannot_be_a_folder_raises_our_error(
        labelset: LabelSet, tmp_path: Path) -> None:
    for out in (tmp_path / ("x" * 300), tmp_path / "nul\0byte", Path("/proc/cogseg-out")):
        with pytest.raises(ValidationError):
            to_coco(labelset.labels, out, cache=labelset.cache)
    assert siblings(tmp_path) == []


def _file_size_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_write_that_fails_midway_is_exit_2_and_leaves_nothing(
        images: list[SyntheticImage], make_emulator: Callable[..., Emulator],
        tmp_path: Path) -> None:
    """A file-size limit (EFBIG, as a full disk's ENOSPC) stops the export at its image: one
    incompressible image of about 230 kB, a limit of 100 kB (room for the cache's reads)."""
    noise = np.random.default_rng(7).integers(0, 256, images[0].pixels.shape, dtype=np.uint8)
    big = SyntheticImage("noisy.png", noise, images[0].objects)
    labelset = build(tmp_path / "set", make_emulator(images=[big]), [big])
    out = tmp_path / "out"
    done = subprocess.run([str(COGSEG), "export", str(labelset.labels), "--to", "coco", "--out",
                           str(out), "--cache", str(labelset.cache)], capture_output=True,
                          text=True, timeout=120, preexec_fn=lambda: _file_size_limit(100_000))
    assert done.returncode == 2, done.stderr
    assert str(out) in one_line(done.stderr)
    assert siblings(tmp_path) == ["set"]


def test_without_an_atomic_exchange_its_output_is_still_replaced_whole(
        labelset: LabelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the system cannot swap two folders in one step (not Linux), two renames do."""
    monkeypatch.setattr(output_folder, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    to_coco(labelset.labels, out, cache=labelset.cache)
    to_coco(labelset.holey, out, cache=labelset.cache, segmentation="polygon")
    coco = json.loads((out / "annotations.json").read_text())
    assert isinstance(coco["annotations"][0]["segmentation"], list)  # the second export's
    assert siblings(tmp_path) == ["out"]
