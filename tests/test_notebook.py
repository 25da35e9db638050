"""The benchmarking notebook executes top to bottom on a small set (so it cannot rot), through
the same function ``make notebook`` uses; the committed notebook carries the outputs of that run
with the notebook's defaults."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "benchmark_masks.ipynb"
OBJECTS_PER_IMAGE = 4  # make_dataset(..., n_objects=4) in the notebook
DEFAULT_IMAGES = 8  # COGSEG_NB_IMAGES' default in the notebook
AGREEMENT_HEADING = "## API vs local model"
MACHINE_PATH = re.compile(r"(/tmp/|/home/|/root/|/work/|/Users/|[A-Z]:\\)")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_notebook",
                                                  NOTEBOOK.with_name("make_notebook.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _execute(settings: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # run from scratch: the committed outputs must not count
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return _generator().execute(nb, settings, timeout_s=300)


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


def _check_defaults_run(nb: nbformat.NotebookNode, n_images: int) -> None:
    """What a run without a checkpoint shows: every table and plot, and that it says so."""
    outputs = _text(nb.cells)
    assert "prompts:" in outputs and "API" in outputs
    assert "local model skipped" in outputs
    # overlays, the IoU-by-size plot, the API-vs-local-model plot, detections and masks
    assert len(_pngs(nb.cells)) == 2 + 1 + 1
    # labels from class names: every object found with its class, duplicates dropped
    assert "'matched': 9, 'right_class': 9, 'extra_labels': 0" in outputs
    assert "cross-class duplicate: 3" in outputs
    section = _check_agreement_output(_agreement_section(nb), n_images=n_images)
    # Without a checkpoint folder the model has random weights, and the notebook says so.
    assert "RANDOM weights" in section and "meaningless" in section
    assert "mechanics, not the model's quality" in section


def test_notebook_runs_and_reports(monkeypatch) -> None:
    monkeypatch.setenv("COGSEG_SAM_CHECKPOINT", "/nonexistent/sam.pth")  # the run drops it
    nb = _execute({"COGSEG_NB_IMAGES": "3"})
    _check_defaults_run(nb, n_images=3)


def test_notebook_uses_the_checkpoint_folder_it_is_given(tmp_path) -> None:
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.backends.sam2 import save_random_checkpoint

    folder = save_random_checkpoint(tmp_path / "sam2-checkpoint", seed=3)
    expected = LocalSamBackend.from_pretrained(folder, device="cpu")
    expected.close()
    nb = _execute({"COGSEG_NB_IMAGES": "2", "COGSEG_SAM2_DIR": str(folder)})
    section = _check_agreement_output(_agreement_section(nb), n_images=2)
    assert f"local model: {folder}" in section
    assert f"{expected.model_version} on " in section  # that folder's weights were loaded
    assert "RANDOM weights" not in section and "mechanics" not in section
    assert len(_pngs(nb.cells)) == 4


def test_notebook_is_in_step_with_its_generator() -> None:
    on_disk = nbformat.read(NOTEBOOK, as_version=4)
    built = _generator().build()
    assert [c.source for c in on_disk.cells] == [c.source for c in built.cells]
    assert [c.id for c in on_disk.cells] == [c.id for c in built.cells]


def test_committed_notebook_is_executed_with_its_defaults() -> None:
    """Outputs and plots are committed (a repository page shows them): every code cell ran,
    in order, without errors, with the defaults (8 images, no checkpoint), and no output names
    a machine's folders."""
    on_disk = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in on_disk.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c.outputs]
    assert [o for o in outputs if o.output_type == "error"] == []
    assert [o for o in outputs if o.get("name") == "stderr"] == []
    _check_defaults_run(on_disk, n_images=DEFAULT_IMAGES)
    assert not MACHINE_PATH.search(_text(on_disk.cells))
    assert on_disk.metadata["kernelspec"]["name"] == "python3"
