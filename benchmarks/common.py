"""Shared benchmark plumbing: the emulator in its own process, results as JSON plus a table.

Every figure is reported beside a baseline measured in the same run, as a ratio, so that a
noisy shared machine changes both sides alike.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cogseg_ml.config import CdfConfig, ClientCredentials

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One measured figure beside its same-run baseline."""

    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    higher_is_better: bool = True
    goal: str = ""
    notes: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]


@dataclass
class Report:
    """A benchmark's result file."""

    benchmark: str
    figures: list[Figure] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def add(self, *figs: Figure) -> None:
        self.figures.extend(figs)

    def write(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.benchmark}.json"
        data = {"benchmark": self.benchmark, "machine": machine(), "params": self.params,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "figures": [{**asdict(f), "ratio": f.ratio} for f in self.figures]}
        path.write_text(json.dumps(data, indent=2))
        return path


def machine() -> dict[str, Any]:
    """A short description of where the numbers come from."""
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def table(reports: Sequence[dict[str, Any]]) -> str:
    """One plain-text table of every figure of the given result files."""
    rows = [("benchmark", "figure", "value", "baseline", "ratio", "goal")]
    for rep in reports:
        for f in rep["figures"]:
            base = "" if f["baseline"] is None else f"{_fmt(f['baseline'])} ({f['baseline_name']})"
            ratio = "" if f["ratio"] is None else f"{f['ratio']:.2f}x"
            rows.append((rep["benchmark"], f["name"], f"{_fmt(f['value'])} {f['unit']}", base,
                         ratio, f["goal"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4g}"


@contextmanager
def emulator_process(*, processing_time: float, concurrency: int, synthetic: int = 20,
                     faults: list[dict[str, Any]] | None = None, seed: int = 0
                     ) -> Iterator[tuple[CdfConfig, subprocess.Popen[str]]]:
    """Run ``cogseg emulator`` in its own process (so client and server do not share a GIL)."""
    args = [sys.executable, "-m", "cogseg_ml.cli", "emulator", "--port", "0",
            "--synthetic", str(synthetic), "--processing-time", str(processing_time),
            "--concurrency", str(concurrency), "--seed", str(seed), "--print-secret"]
    with tempfile.TemporaryDirectory() as tmp:
        if faults:
            fpath = Path(tmp) / "faults.json"
            fpath.write_text(json.dumps(faults))
            args += ["--faults", str(fpath)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            creds = ClientCredentials(info["token_url"], info["client_id"],
                                      info["client_secret"])
            yield CdfConfig(project=info["project"], base_url=info["base_url"],
                            credentials=creds), proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()


def admin_get(cfg: CdfConfig, path: str) -> Any:
    """GET an emulator admin route."""
    import httpx

    return httpx.get(f"{cfg.base_url}/_emulator/{path}", timeout=30).json()


def run_as_script(main: Any, argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.NAME``: run, write the JSON, print the table."""
    rep = main(list(argv) if argv is not None else sys.argv[1:])
    print(table([json.loads(rep.write().read_text())]))
