"""The package's import arrows point one way (see the floors in the package's design notes):
each rule reads every module's imports with ``ast`` and names the offending line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cogseg_ml"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, module)`` of every import of the package in the file, lazy ones included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "cogseg_ml":
                yield node.lineno, "cogseg_ml"
            elif node.module.startswith("cogseg_ml."):
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cogseg_ml"):
                    yield node.lineno, alias.name


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _offences(sources: tuple[str, ...], allowed: tuple[str, ...]) -> list[str]:
    bad = []
    for name, path in MODULES.items():
        if not _under(name, *sources):
            continue
        for line, target in _imports(path):
            if not _under(target, *allowed) and not _under(target, name):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    return bad


FLOOR_1 = ("cogseg_ml.errors", "cogseg_ml.version", "cogseg_ml.progress",
           "cogseg_ml.strict_json")
FLOOR_2 = FLOOR_1 + ("cogseg_ml.prompts", "cogseg_ml.config", "cogseg_ml.mask_codec")
#: Each product, as the modules that make it.
PRODUCT_GROUPS = (("cogseg_ml.dataset",), ("cogseg_ml.labeler",), ("cogseg_ml.ray",),
                  ("cogseg_ml.service",))
PRODUCTS = tuple(m for group in PRODUCT_GROUPS for m in group)

#: The parts of the segment service the emulator runs on too (one implementation of the spec).
SERVICE_SHARED = ("cogseg_ml.service.problems", "cogseg_ml.service.segment_wire",
                  "cogseg_ml.service.segment_routes", "cogseg_ml.service.job_engine",
                  "cogseg_ml.service.job_store")

RULES = {
    "the first floor imports only itself": (FLOOR_1, FLOOR_1),
    "pure values import only the floors below": (FLOOR_2, FLOOR_2),
    "the emulator shares only the wire schema, value types, codec, local model and the "
    "segment service's routes, job engine and rules":
        (("cogseg_ml.emulator",), FLOOR_2 + ("cogseg_ml.emulator", "cogseg_ml.api.wire_schema",
                                             "cogseg_ml.backends.local_sam",
                                             *SERVICE_SHARED)),
    "the service's shared parts import only the wire schema, the cache's database and the "
    "floors below":
        (SERVICE_SHARED, FLOOR_2 + ("cogseg_ml.api.wire_schema", "cogseg_ml.cache.database",
                                    *SERVICE_SHARED)),
    "the service stands on the floors below the products":
        (("cogseg_ml.service",), FLOOR_2 + ("cogseg_ml.api", "cogseg_ml.cache", "cogseg_ml.store",
                                            "cogseg_ml.backends", "cogseg_ml.image_decode",
                                            "cogseg_ml.service")),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_floors(rule: str) -> None:
    sources, allowed = RULES[rule]
    assert _offences(sources, allowed) == [], rule


def test_only_the_package_root_imports_the_package_root() -> None:
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}"
           for name, path in MODULES.items() if name != "cogseg_ml"
           for line, target in _imports(path) if target == "cogseg_ml"]
    assert bad == []


#: The one arrow between products: Ray labelling runs the labeller through its public API
#: (the private-name rule below keeps it to that).
PRODUCT_ARROWS = {("cogseg_ml.ray", "cogseg_ml.labeler")}


def test_no_product_imports_another() -> None:
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
           for group in PRODUCT_GROUPS
           for name, path in MODULES.items() if _under(name, *group)
           for line, target in _imports(path)
           if _under(target, *(p for p in PRODUCTS if p not in group))
           and not any(_under(name, a) and _under(target, b) for a, b in PRODUCT_ARROWS)]
    assert bad == []


def test_nothing_below_the_command_line_imports_it() -> None:
    users = ("cogseg_ml.cli", "cogseg_ml.demo", "cogseg_ml")
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
           for name, path in MODULES.items() if not _under(name, "cogseg_ml.cli")
           for line, target in _imports(path)
           if _under(target, "cogseg_ml.cli") and name not in users]
    assert bad == []


def test_backends_do_not_reach_up_to_products_or_the_store() -> None:
    above = PRODUCTS + ("cogseg_ml.store", "cogseg_ml.samples", "cogseg_ml.cli",
                        "cogseg_ml.demo")
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
           for name, path in MODULES.items() if _under(name, "cogseg_ml.backends")
           for line, target in _imports(path) if _under(target, *above)]
    assert bad == []


def test_the_rules_see_the_imports() -> None:
    """The reader finds lazy imports inside functions too (so the rules are not vacuous)."""
    found = dict(_imports(MODULES["cogseg_ml.cli.demo"]))
    assert "cogseg_ml.demo" in found.values()
    assert len(MODULES) > 40


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (lazy ones included), resolved to modules
    that exist (``from cogseg_ml.api import client`` names ``cogseg_ml.api.client``)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    node.module.startswith("cogseg_ml"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in MODULES else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("cogseg_ml."))
        graph[name] = {t for t in targets if t in MODULES and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on:
                low[node] = min(low[node], index[child])
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    """Function-level imports count: a cycle is a knot in the design even when it loads."""
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a knot with them
    for name in graph:
        if MODULES[name].name == "__init__.py":
            graph[name] = {t for t in graph[name] if not _under(t, name)}
    assert _cycles(graph) == []


def test_no_module_imports_another_modules_private_names() -> None:
    """``from cogseg_ml.x import _helper`` reaches into another module: make the name public
    (documented) or move it below both."""
    bad = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    node.module.startswith("cogseg_ml") and node.module != name:
                bad += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports "
                        f"{node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []


def test_the_product_rule_sees_the_ray_labeller() -> None:
    """The rule names the real modules: the Ray labeller is a product, and it is found."""
    assert sum(_under(name, "cogseg_ml.ray") for name in MODULES) > 3


def test_at_most_14_modules_directly_in_the_package() -> None:
    """Folders carry the architecture; the top level keeps the floors and the two products."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 14, top


def test_the_cache_files_have_one_owner() -> None:
    """Every SQLite file of the cache (masks with their image index, detections) is opened and
    written through one owner, :class:`~cogseg_ml.cache.database.CacheDatabase`: nothing else
    in the package connects to SQLite, and nothing reaches into the owner's private plumbing."""
    owner = PACKAGE / "cache" / "database.py"
    # Ray labelling's spool is a scratch file in a temporary folder, not a cache file
    scratch = {PACKAGE / "ray" / "outputs.py"}
    connects: dict[Path, int] = {}
    private = {"_conn", "_retry", "_write", "_touch", "_storage_error", "_transaction", "_open",
               "_local", "_touches"}
    bad = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in private and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Attribute) and node.attr == "connect" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sqlite3" and \
                    path != owner and path not in scratch:
                connects[path] = connects.get(path, 0) + 1
    assert bad == []
    assert connects == {}, "only the owner connects to a cache's SQLite file"
    detections = (PACKAGE / "detect" / "detection_cache.py").read_text(encoding="utf-8")
    assert "CacheDatabase(" in detections
