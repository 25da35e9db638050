"""The benchmarking notebook executes top to bottom on a small set (so it cannot rot)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "benchmark_masks.ipynb"
OBJECTS_PER_IMAGE = 4  # make_dataset(..., n_objects=4) in the notebook
AGREEMENT_HEADING = "## API vs local model"


def _execute(tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def _text(cells: list[nbformat.NotebookNode]) -> str:
    return "\n".join(o.get("text", "") for c in cells if c.cell_type == "code"
                     for o in c.get("outputs", []))


def _pngs(cells: list[nbformat.NotebookNode]) -> list[nbformat.NotebookNode]:
    return [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


def _agreement_section(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The cells from the agreement heading up to the next markdown cell."""
    start = next(i for i, c in enumerate(nb.cells)
                 if c.cell_type == "markdown" and c.source.startswith(AGREEMENT_HEADING))
    end = next((i for i in range(start + 1, len(nb.cells))
                if nb.cells[i].cell_type == "markdown"), len(nb.cells))
    return list(nb.cells[start + 1:end])


def _check_agreement_output(section: list[nbformat.NotebookNode], n_images: int) -> str:
    text = _text(section)
    prompts = n_images * OBJECTS_PER_IMAGE
    assert re.search(rf"^API vs local model: {prompts} items: mean IoU [01]\.\d{{3}}, "
                     r"\d+% at IoU >= 0\.9$", text, re.M), text
    table = re.findall(rf"^synthetic_\d+\.png +{OBJECTS_PER_IMAGE} +\d+ +[01]\.\d{{3}} +"
                       r"[01]\.\d{3}$", text, re.M)
    assert len(table) == n_images, text  # one row per image
    # the local model's labelling report: every prompt labelled, none failed
    assert re.search(rf"^{n_images} images, {prompts} prompts: {prompts} labelled .*, 0 failed",
                     text, re.M), text
    assert len(_pngs(section)) == 1  # the per-image IoU / boundary F plot
    return text


def test_notebook_runs_and_reports(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("COGSEG_NB_IMAGES", "3")
    monkeypatch.delenv("COGSEG_SAM_CHECKPOINT", raising=False)
    monkeypatch.delenv("COGSEG_SAM2_DIR", raising=False)
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    nb = _execute(tmp_path)
    outputs = _text(nb.cells)
    assert "prompts:" in outputs and "API" in outputs
    assert "local model skipped" in outputs
    images = _pngs(nb.cells)
    # overlays, the IoU-by-size plot, and the API-vs-local-model plot
    assert len(images) == 2 + 1
    assert os.environ.get("COGSEG_NB_IMAGES") == "3"
    section = _check_agreement_output(_agreement_section(nb), n_images=3)
    # Without a checkpoint folder the model has random weights, and the notebook says so.
    assert "RANDOM weights" in section and "meaningless" in section
    assert "mechanics, not the model's quality" in section


def test_notebook_uses_the_checkpoint_folder_it_is_given(monkeypatch, tmp_path) -> None:
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.backends.sam2 import save_random_checkpoint

    folder = save_random_checkpoint(tmp_path / "sam2-checkpoint", seed=3)
    expected = LocalSamBackend.from_pretrained(folder, device="cpu")
    expected.close()
    monkeypatch.setenv("COGSEG_NB_IMAGES", "2")
    monkeypatch.delenv("COGSEG_SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("COGSEG_SAM2_DIR", str(folder))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    nb = _execute(tmp_path)
    section = _check_agreement_output(_agreement_section(nb), n_images=2)
    assert f"local model: {folder}" in section
    assert f"{expected.model_version} on " in section  # that folder's weights were loaded
    assert "RANDOM weights" not in section and "mechanics" not in section
    assert len(_pngs(nb.cells)) == 3


def test_notebook_is_in_step_with_its_generator() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebook",
                                                  NOTEBOOK.with_name("make_notebook.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    on_disk = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in on_disk.cells] == [c.source for c in mod.build().cells]


def test_committed_notebook_has_no_outputs() -> None:
    on_disk = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in on_disk.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
