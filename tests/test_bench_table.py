"""The benchmark tables of docs/benchmarks.md and README.md are generated from the committed
result files (``python -m benchmarks table``), never copied by hand: the committed tables equal
what the command generates, hold every figure, and follow the JSON when it changes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks.__main__ as bench_main
from benchmarks.common import (
    EXCERPT_MARKERS,
    RESULTS,
    ROOT,
    TABLE_MARKERS,
    TABLE_PAGE,
    load_reports,
    render_tables,
    replace_between,
)


def test_the_committed_tables_are_what_the_command_generates() -> None:
    for path, text in render_tables().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} is not what `python -m benchmarks table` generates from "
            "benchmarks/results/*.json: run it and commit the result")


def test_every_figure_of_every_result_file_is_in_the_table() -> None:
    page = TABLE_PAGE.read_text(encoding="utf-8")
    body = page.split(TABLE_MARKERS[0], 1)[1].split(TABLE_MARKERS[1], 1)[0]
    files = sorted(RESULTS.glob("*.json"))
    assert files and len(load_reports()) == len(files)
    for path in files:
        rep = json.loads(path.read_text(encoding="utf-8"))
        section = body.split(f"### {rep['benchmark']}\n", 1)[1].split("\n### ", 1)[0]
        assert rep["time"] in section
        rows = [ln for ln in section.splitlines() if ln.startswith("| ")][1:]
        assert [r.split(" | ")[0][2:] for r in rows] == [f["name"] for f in rep["figures"]]


def _copy(tmp: Path) -> Path:
    """The result files, the README and the benchmarks page under ``tmp`` (a repository)."""
    shutil.copytree(RESULTS, tmp / "benchmarks" / "results")
    (tmp / "docs").mkdir()
    shutil.copy(ROOT / "README.md", tmp / "README.md")
    shutil.copy(TABLE_PAGE, tmp / "docs" / "benchmarks.md")
    return tmp / "benchmarks" / "results"


def test_the_tables_follow_the_result_files(tmp_path: Path) -> None:
    results = _copy(tmp_path)
    path = results / "labeler.json"
    rep = json.loads(path.read_text(encoding="utf-8"))
    rep["figures"][0].update(value=123456.0, baseline=1000.0, ratio=123.456)
    path.write_text(json.dumps(rep), encoding="utf-8")
    (results / "zz_new.json").write_text(json.dumps({
        "benchmark": "zz_new", "time": "2030-01-01T00:00:00Z", "machine": {"cpus": 64},
        "params": {}, "figures": [{"name": "a | b", "value": 0.5, "unit": "s",
                                   "baseline_name": "", "baseline": None,
                                   "higher_is_better": False, "goal": "", "notes": "",
                                   "ratio": None}]}), encoding="utf-8")
    out = render_tables(results, tmp_path)
    page, readme = out[tmp_path / "docs" / "benchmarks.md"], out[tmp_path / "README.md"]
    assert "| items/s | 123,456 items/s | 1,000 (naive loop) | 123.46x | higher |" in page
    assert "| labeler | items/s | 123,456 items/s | 1,000 (naive loop) | 123.46x |" in readme
    assert page.index("### labeler") < page.index("### zz_new")  # after the known ones
    assert "| a \\| b | 0.5 s |" in page and "2030-01-01T00:00:00Z: 64 CPUs" in page
    # Everything outside the markers is left as it was.
    for name, text in [("docs/benchmarks.md", page), ("README.md", readme)]:
        before = (tmp_path / name).read_text(encoding="utf-8")
        for markers in (TABLE_MARKERS, EXCERPT_MARKERS):
            if markers[0] in before:
                assert text.split(markers[0])[0] == before.split(markers[0])[0]
                assert text.split(markers[1])[1] == before.split(markers[1])[1]


def test_a_page_without_its_markers_is_refused() -> None:
    with pytest.raises(ValueError, match=r"README.md: needs the lines"):
        replace_between("no markers here\n", EXCERPT_MARKERS, "x", "README.md")
    twice = f"{TABLE_MARKERS[0]}\n{TABLE_MARKERS[1]}\n{TABLE_MARKERS[0]}\n{TABLE_MARKERS[1]}\n"
    with pytest.raises(ValueError, match="once each"):
        replace_between(twice, TABLE_MARKERS, "x", "docs/benchmarks.md")


def test_table_check_says_stale_and_table_writes(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    results = _copy(tmp_path)
    (results / "cache.json").write_text(
        (results / "cache.json").read_text().replace("12677.", "99999."), encoding="utf-8")
    monkeypatch.setattr(bench_main, "ROOT", tmp_path)
    monkeypatch.setattr(bench_main, "render_tables",
                        lambda: render_tables(results, tmp_path))
    page = tmp_path / "docs" / "benchmarks.md"
    before = page.read_text(encoding="utf-8")
    assert bench_main.main(["table", "--check"]) == 1
    assert "stale: docs/benchmarks.md" in capsys.readouterr().err
    assert page.read_text(encoding="utf-8") == before  # --check writes nothing
    assert bench_main.main(["table"]) == 0
    assert "99,999 entries/s" in page.read_text(encoding="utf-8")
    assert bench_main.main(["table", "--check"]) == 0
    assert bench_main.main(["table", "--bogus"]) == 2


def test_the_command_checks_the_repository() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "table", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "docs/benchmarks.md: current" in proc.stdout
