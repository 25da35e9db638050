"""SIGINT (Ctrl-C) during ``cogseg export`` or ``cogseg review``: exit 130 with one line, no
traceback, and nothing half-written: a new --out is not created, an earlier output of the same
command is left byte-for-byte as it was. Real processes, stopped while they fetch an image (see
tests/exports/outputs.py: no sleeps)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from cogseg_ml.cli import main
from tests.exports.labelsets import LabelSet
from tests.exports.outputs import one_line, siblings, snapshot, stopped_at_image


def _export(labelset: LabelSet, out: Path, fmt: str) -> list[str]:
    return ["export", str(labelset.holey), "--to", fmt, "--out", str(out), "--cache",
            str(labelset.cache)]


def _review(labelset: LabelSet, out: Path) -> list[str]:
    return ["review", str(labelset.holey), "--out", str(out), "--cache", str(labelset.cache),
            "--offline", "--no-progress"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["coco", "yolo", "labelstudio"])
def test_a_stopped_export_is_130_and_writes_nothing(labelset: LabelSet, tmp_path: Path,
                                                    fmt: str) -> None:
    code, err = stopped_at_image(_export(labelset, tmp_path / "out", fmt), at=2)
    assert code == 130
    assert "stopped by SIGINT" in one_line(err)
    assert siblings(tmp_path) == []


@pytest.mark.timeout(120)
def test_a_stopped_review_is_130_and_leaves_no_folder(labelset: LabelSet,
                                                      tmp_path: Path) -> None:
    code, err = stopped_at_image(_review(labelset, tmp_path / "page"), at=2)
    assert code == 130
    assert "stopped by SIGINT" in one_line(err)
    assert siblings(tmp_path) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["export", "review"])
def test_a_stopped_rerun_leaves_the_earlier_output_as_it_was(
        labelset: LabelSet, tmp_path: Path, command: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = _export(labelset, out, "coco") if command == "export" else _review(labelset, out)
    assert main(args) == 0
    capsys.readouterr()
    before = snapshot(out)
    code, err = stopped_at_image(args, at=2, signum=signal.SIGTERM)
    assert code == 143 and "stopped by SIGTERM" in one_line(err)
    assert snapshot(out) == before and siblings(tmp_path) == ["out"]
