"""The curated public surface stays in step with ``__all__`` and documented."""

from __future__ import annotations

import subprocess
import sys

import cogseg_ml


def test_all_names_exist_and_are_documented() -> None:
    for name in cogseg_ml.__all__:
        obj = getattr(cogseg_ml, name)
        if name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"
    public = {n for n in dir(cogseg_ml) if not n.startswith("_")}
    exported = set(cogseg_ml.__all__)
    modules = {n for n in public if type(getattr(cogseg_ml, n)).__name__ == "module"}
    assert public - modules - {"annotations"} <= exported


def test_import_does_not_load_torch() -> None:
    code = "import sys, cogseg_ml; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
