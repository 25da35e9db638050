"""Run benchmarks and print one table: ``python -m benchmarks [name ...]``.

Each benchmark writes ``benchmarks/results/<name>.json``; the table lists every figure beside
its same-run baseline as a ratio, with the machine's description.

``python -m benchmarks table`` writes the tables of the documentation (docs/benchmarks.md, and
one line per benchmark in README.md) from the committed result files, between their marker
comments; ``table --check`` only says whether they are current (exit 1 when not).
"""

from __future__ import annotations

import importlib
import json
import sys

from benchmarks.common import ORDER, RESULTS, ROOT, machine, render_tables, table

ALL = list(ORDER)


def write_tables(argv: list[str]) -> int:
    """``table [--check]``: write (or check) the generated tables of the documentation."""
    check = argv == ["--check"]
    if argv and not check:
        print("usage: python -m benchmarks table [--check]", file=sys.stderr)
        return 2
    stale = []
    for path, text in render_tables().items():
        name = path.relative_to(ROOT)
        if path.read_text(encoding="utf-8") == text:
            print(f"{name}: current")
            continue
        stale.append(name)
        if not check:
            path.write_text(text, encoding="utf-8")
            print(f"{name}: table written")
    if check and stale:
        print(f"stale: {', '.join(map(str, stale))}; run python -m benchmarks table",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["table"]:
        return write_tables(argv[1:])
    names = argv or ALL
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}",
              file=sys.stderr)
        return 2
    reports = []
    for name in names:
        print(f"running {name} ...", flush=True)
        mod = importlib.import_module(f"benchmarks.{name}")
        path = mod.main([]).write()
        reports.append(json.loads(path.read_text()))
    print()
    print("machine:", json.dumps(machine()))
    print(table(reports))
    (RESULTS / "latest_table.txt").write_text(table(reports) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
