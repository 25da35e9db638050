"""The curated public surface stays in step with ``__all__``, documented, and light to import."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

import cogseg_ml
import cogseg_ml.backends

HEAVY = ("httpx", "numpy", "pydantic", "torch")
LOADED = f"import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"


def loaded_after(statement: str) -> str:
    """Which of the heavy libraries a fresh interpreter holds after ``statement``."""
    out = subprocess.run([sys.executable, "-c", f"{statement}\n{LOADED}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def documented(doc: str) -> dict[str, str]:
    """The table of a module docstring: an indented name, two or more spaces, its line."""
    return {m[1]: m[2] for m in re.finditer(r"^ {4}(\w+) {2,}(\S.*)$", doc, re.M)}


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


def test_import_loads_none_of_httpx_numpy_pydantic_torch() -> None:
    assert loaded_after("import cogseg_ml") == "[]"


def test_backend_authoring_types_load_none_of_them_either() -> None:
    assert loaded_after("from cogseg_ml.backends import BackendJob, BackendOutcome, "
                        "MaskResult, ScoredMask, SegmentationBackend") == "[]"


def test_the_command_line_help_loads_none_of_them() -> None:
    statement = ("import contextlib, io\nfrom cogseg_ml.cli import main\n"
                 "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):"
                 "\n    main(['--help'])")
    assert loaded_after(statement) == "[]"


def test_at_most_50_names_each_with_a_line_in_the_module_docstring() -> None:
    names = cogseg_ml.__all__
    assert len(names) <= 50
    assert len(set(names)) == len(names)
    table = documented(cogseg_ml.__doc__ or "")
    assert set(table) == set(names)
    assert all(len(line.split()) >= 3 for line in table.values()), table


def test_every_exported_name_resolves_to_a_documented_object() -> None:
    for name in cogseg_ml.__all__:
        obj = getattr(cogseg_ml, name)
        if name == "__version__":
            assert isinstance(obj, str) and obj
            continue
        assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"
        assert getattr(obj, "__name__", name) == name
        assert obj.__module__.startswith("cogseg_ml."), (name, obj.__module__)
        # The same object as in its defining module.
        assert getattr(importlib.import_module(obj.__module__), name) is obj


def test_dir_lists_every_exported_name() -> None:
    assert set(cogseg_ml.__all__) <= set(dir(cogseg_ml))
    assert set(cogseg_ml.backends.__all__) <= set(dir(cogseg_ml.backends))


def test_backend_authoring_and_errors_are_exported() -> None:
    for name in ("MaskResult", "ScoredMask", "SegmentationBackend", "CdfUnreachableError"):
        assert name in cogseg_ml.__all__
    assert {"SegmentationBackend", "BackendJob", "BackendOutcome", "MaskResult",
            "ScoredMask"} <= set(cogseg_ml.backends.__all__)
    from cogseg_ml.backends import base

    for name in cogseg_ml.backends.__all__:
        assert getattr(cogseg_ml.backends, name).__doc__, name
    assert cogseg_ml.backends.MaskResult is base.MaskResult
    assert cogseg_ml.MaskResult is base.MaskResult


def test_internals_are_not_exported() -> None:
    for name in ("CacheKey", "CachedResult", "ImageStore", "target_size"):
        assert name not in cogseg_ml.__all__


@pytest.mark.parametrize(("name", "module"), [
    ("CacheKey", "cogseg_ml.cache.cache_keys"),
    ("CachedResult", "cogseg_ml.cache.mask_cache"),
    ("ImageStore", "cogseg_ml.cache.image_store"),
    ("target_size", "cogseg_ml.masks_at_size"),
    ("PromptValidationError", "cogseg_ml.errors"),
])
def test_names_no_longer_at_the_root_warn_and_name_their_module(name: str, module: str) -> None:
    with pytest.warns(DeprecationWarning, match=re.escape(module)):
        obj = getattr(cogseg_ml, name)
    assert obj is getattr(importlib.import_module(module), name)
    assert name not in dir(cogseg_ml)


def test_every_name_that_left_the_root_still_resolves_from_its_module() -> None:
    moved: dict[str, str] = cogseg_ml._MOVED  # type: ignore[attr-defined]
    assert not set(moved) & set(cogseg_ml.__all__)
    for name, module in moved.items():
        with pytest.warns(DeprecationWarning, match=re.escape(module)):
            obj = getattr(cogseg_ml, name)
        assert obj is getattr(importlib.import_module(module), name), name


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        cogseg_ml.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_name"):
        cogseg_ml.backends.no_such_name  # type: ignore[attr-defined]  # noqa: B018
