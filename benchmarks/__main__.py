"""Run benchmarks and print one table: ``python -m benchmarks [name [arg ...] ...]``.

Without names it runs every benchmark of :data:`~benchmarks.common.ORDER`; a name may also be
any other benchmark module (``service``, ``soak``, ...), and the arguments after a name, up to
the next name, go to that benchmark (``python -m benchmarks service --ray``). Each benchmark
writes ``benchmarks/results/<name>.json``; the table lists every figure beside its same-run
baseline as a ratio, with the machine's description.

``python -m benchmarks table`` writes the tables of the documentation (docs/benchmarks.md, and
one line per benchmark in README.md) from the committed result files, between their marker
comments; ``table --check`` only says whether they are current (exit 1 when not).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from benchmarks.common import ORDER, RESULTS, ROOT, machine, render_tables, table

ALL = list(ORDER)
#: Every benchmark module ``python -m benchmarks NAME`` runs: those of :data:`ALL` and the
#: others of this folder.
RUNNABLE = ALL + sorted(p.stem for p in Path(__file__).resolve().parent.glob("*.py")
                        if p.stem not in ALL and p.stem not in ("__init__", "__main__", "common"))


def split_args(argv: list[str]) -> list[tuple[str, list[str]]]:
    """``[name, arg, ..., name, ...]`` as ``[(name, [arg, ...]), ...]``: a word is a name when
    it is one of :data:`RUNNABLE`, else an argument of the name before it.

    Raises:
        ValueError: ``argv`` does not start with a benchmark's name.
    """
    out: list[tuple[str, list[str]]] = []
    for word in argv:
        if word in RUNNABLE:
            out.append((word, []))
        elif out:
            out[-1][1].append(word)
        else:
            raise ValueError(f"unknown benchmark {word!r}; choose from {', '.join(RUNNABLE)}")
    return out


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
    try:
        runs = split_args(argv) if argv else [(name, []) for name in ALL]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    reports = []
    for name, args in runs:
        print(f"running {name} {' '.join(args)}".rstrip() + " ...", flush=True)
        mod = importlib.import_module(f"benchmarks.{name}")
        rep = mod.main(args)
        if rep is None:  # it had nothing to measure here (it said why)
            continue
        path = rep.write()
        reports.append(json.loads(path.read_text()))
    print()
    print("machine:", json.dumps(machine()))
    print(table(reports))
    (RESULTS / "latest_table.txt").write_text(table(reports) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
