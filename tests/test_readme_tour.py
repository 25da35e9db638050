"""README's quick tour runs as written against the emulator (the first Python block under
"Quick tour", executed in a fresh process with the emulator's variables)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from tests.test_cli_input import cdf_env
from tests.test_no_overwrites import _coco_boxes

README = Path(__file__).resolve().parent.parent / "README.md"


def tour() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick tour"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's quick tour has no Python block"
    return match.group(1)


@pytest.mark.slow
def test_the_quick_tour_runs_as_written(tmp_path: Path, images: list[SyntheticImage]) -> None:
    named = [dataclasses.replace(images[0], name="pump-7.jpg"),
             dataclasses.replace(images[1], name="valve-2.jpg"), *images[2:]]
    assert named[0].height == 240 and named[0].width == 320  # the size the tour uses
    _coco_boxes(tmp_path / "boxes.json", named[:2])
    (tmp_path / "tour.py").write_text(tour(), encoding="utf-8")
    with Emulator(images=named, processing_time_s=0.01, concurrency=8) as emu:
        proc = subprocess.run([sys.executable, "tour.py"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=240, env={**cdf_env(emu),
                                                           "PATH": "/usr/bin:/bin",
                                                           "COGSEG_CACHE_DIR":
                                                               str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pump-7.jpg True None" in proc.stdout and "valve-2.jpg True None" in proc.stdout
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["annotations"] and len(labels["images"]) == 2


def test_the_tour_handles_a_prompt_with_no_segment() -> None:
    """``result.item.best`` is ``None`` when no segment comes back: the tour must not call a
    method on it unguarded."""
    code = tour()
    use = code.index("best = result.item.best")
    after = code[use:]
    assert "result.item.best." not in code
    assert "if best is not None:" in after.split("\n", 2)[1] + after.split("\n", 2)[2][:80]


def test_every_name_the_tour_uses_is_defined() -> None:
    """``requests`` (and every other name) is bound before it is used."""
    import builtins
    import symtable

    table = symtable.symtable(tour(), "tour.py", "exec")
    assigned = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    used = {s.get_name() for s in table.get_symbols() if s.is_referenced()}
    assert used - assigned - set(dir(builtins)) == set()
