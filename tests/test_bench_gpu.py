"""``make bench-gpu`` (``python -m benchmarks.gpu``): on a machine without a GPU it says so in
one line, exits 0 and writes nothing; its every section runs on the CPU path (``--smoke``)
and writes a result file the tables read; its time budget skips what would not fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.common import RESULTS, ROOT, load_reports
from benchmarks.gpu import Budget


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: it would measure")
def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing() -> None:
    before = sorted(p.name for p in RESULTS.iterdir())
    gpu_json = RESULTS / "gpu.json"
    old = gpu_json.read_bytes() if gpu_json.exists() else None
    done = _run(env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], done.stdout
    assert sorted(p.name for p in RESULTS.iterdir()) == before
    assert (gpu_json.read_bytes() if gpu_json.exists() else None) == old


def test_every_section_runs_on_the_cpu_path(tmp_path: Path) -> None:
    out = tmp_path / "results" / "gpu.json"
    out.parent.mkdir()
    done = _run("--smoke", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "gpu" and data["params"]["skipped"] == []
    names = [f["name"] for f in data["figures"]]
    for section in ("images/s at 1 prompts", "images/s at 16 prompts", "images/s at 64 prompts",
                    "decoder + post-processing share", "peak GPU memory", "grounding-dino",
                    "CompactMasks.to_dense", "Ray, 1 local-model actor",
                    "jobs/s through cogseg serve", "encoder passes per job"):
        assert any(section in n for n in names), (section, names)
    for f in data["figures"]:
        assert f["value"] >= 0, f
        assert f["baseline"] is not None or f["name"] == "encoder passes per job", f
    # the tables read it like any other result file
    assert [r["benchmark"] for r in load_reports(out.parent)] == ["gpu"]


def test_the_budget_skips_sections_that_would_not_fit() -> None:
    now = [0.0]
    budget = Budget(100.0, clock=lambda: now[0])
    assert budget.allows("first", needs_s=60)
    now[0] = 50.0
    assert not budget.allows("second", needs_s=60)
    assert budget.allows("third", needs_s=40)
    assert budget.skipped == ["second"]
