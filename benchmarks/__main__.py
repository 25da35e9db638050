"""Run benchmarks and print one table: ``python -m benchmarks [name ...]``.

Each benchmark writes ``benchmarks/results/<name>.json``; the table lists every figure beside
its same-run baseline as a ratio, with the machine's description.
"""

from __future__ import annotations

import importlib
import json
import sys

from benchmarks.common import RESULTS, machine, table

ALL = ["emulator", "client_throughput", "cache", "dataset", "masks_at_size", "labeler", "sam",
       "ray_labeling", "text_labeling"]


def main(argv: list[str]) -> int:
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
