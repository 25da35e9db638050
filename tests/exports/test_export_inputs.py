"""What ``cogseg export`` reads besides the labels: a decisions file (stale, hostile) and a
``--cache`` path; and labels whose numbers are not JSON numbers. Each is refused with one line,
exit 2, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cogseg_ml.cli import main
from cogseg_ml.review.decisions import Decisions, labels_digest
from tests.exports.labelsets import LabelSet
from tests.exports.outputs import one_line, siblings


def export(labels: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str,
           to: str = "coco") -> tuple[int, str]:
    code = main(["export", str(labels), "--to", to, "--out", str(out), *extra])
    return code, capsys.readouterr().err


def test_decisions_for_labels_changed_since_say_so(labelset: LabelSet, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    coco = labelset.coco()
    labels = tmp_path / "labels.json"
    decisions = tmp_path / "labels.decisions.json"
    decisions.write_text(Decisions("labels.json", labels_digest(coco), frozenset(),
                                   frozenset()).to_json())
    coco["annotations"] = coco["annotations"][:-1]  # the labels file changed since
    labels.write_text(json.dumps(coco))
    code, err = export(labels, tmp_path / "out", capsys, "--cache", str(labelset.cache),
                       "--decisions", str(decisions))
    line = one_line(err)
    assert code == 2 and "labels.json changed since" in line, line
    assert "not for 'labels.json'" not in line
    assert siblings(tmp_path) == ["labels.decisions.json", "labels.json"]


def _decisions_text(coco: dict[str, object], body: str) -> str:
    return ('{"format": "cogseg-review-decisions", "version": 1, "labels_file": "holey.json", '
            f'"labels_digest": "{labels_digest(coco)}", "decisions": {body}}}')


@pytest.mark.parametrize(("body", "says"), [
    ('{"' + "7" * 5000 + '": "accept"}', "is not an annotation id"),
    ('{"1": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper"),
    ('{"1": "accept", "2": NaN}', "NaN"),
])
def test_hostile_decisions_files_are_one_line(labelset: LabelSet, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], body: str,
                                              says: str) -> None:
    decisions = tmp_path / "d.json"
    decisions.write_text(_decisions_text(labelset.coco(), body))
    code, err = export(labelset.holey, tmp_path / "out", capsys, "--cache",
                       str(labelset.cache), "--decisions", str(decisions))
    line = one_line(err)
    assert code == 2 and says in line and "d.json" in line, line
    assert siblings(tmp_path) == ["d.json"]


def test_a_cache_that_does_not_exist_is_refused_as_review_refuses_it(
        labelset: LabelSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = export(labelset.holey, tmp_path / "out", capsys, "--cache",
                       str(tmp_path / "TYPO"))
    assert code == 2 and "--cache" in one_line(err) and "no mask cache there" in err
    assert siblings(tmp_path) == []


@pytest.mark.parametrize("fmt", ["coco", "yolo", "labelstudio"])
def test_a_score_that_is_not_a_number_is_refused_naming_the_annotation(
        labelset: LabelSet, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        fmt: str) -> None:
    coco = labelset.coco()
    ann = coco["annotations"][1]
    ann["score"] = float("nan")
    labels = tmp_path / "nan.json"
    labels.write_text(json.dumps(coco))  # Python writes a bare NaN
    code, err = export(labels, tmp_path / "out", capsys, "--cache", str(labelset.cache),
                       to=fmt)
    line = one_line(err)
    assert code == 2 and "nan.json" in line and f"id {ann['id']}" in line, line
    assert siblings(tmp_path) == ["nan.json"]


@pytest.mark.parametrize("fmt", ["coco", "labelstudio"])
def test_what_an_export_writes_is_strict_json(labelset: LabelSet, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              fmt: str) -> None:
    out = tmp_path / "out"
    assert export(labelset.holey, out, capsys, "--cache", str(labelset.cache), to=fmt)[0] == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    for path in out.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
