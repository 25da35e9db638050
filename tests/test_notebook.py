"""The benchmarking notebook executes top to bottom on a small set (so it cannot rot)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "benchmark_masks.ipynb"


def test_notebook_runs_and_reports(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("COGSEG_NB_IMAGES", "3")
    monkeypatch.delenv("COGSEG_SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                        for o in c.get("outputs", []))
    assert "prompts:" in outputs and "API" in outputs
    assert "local model skipped" in outputs
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # overlays and the IoU-by-size plot
    assert os.environ.get("COGSEG_NB_IMAGES") == "3"


def test_notebook_is_in_step_with_its_generator() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebook",
                                                  NOTEBOOK.with_name("make_notebook.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    on_disk = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in on_disk.cells] == [c.source for c in mod.build().cells]
