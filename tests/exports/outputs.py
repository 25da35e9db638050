"""What the output-folder tests share: a folder's exact content, the one-line error of a
refused command, and a real ``cogseg`` process stopped by a signal at a known point.

The stop point needs no sleeps: the process starts with ``tests/exports/gate`` on its
``PYTHONPATH``, whose ``sitecustomize`` makes the image fetch numbered ``COGSEG_TEST_GATE_AT``
say ``gate`` on stderr and wait on stdin; the test reads that line, then sends the signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cogseg_ml.emulator.server import Emulator

GATE = Path(__file__).parent / "gate"
COGSEG = Path(sys.executable).parent / "cogseg"
MANIFEST = "cogseg-output.json"


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` by relative path: a file's bytes, ``None`` for a folder."""
    found: dict[str, bytes | None] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        found[rel] = None if path.is_dir() and not path.is_symlink() else path.read_bytes()
    return found


def one_line(err: str) -> str:
    """The one ``cogseg: ...`` line a refused or stopped command writes (asserted so)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cogseg: "), err
    return lines[0]


def siblings(folder: Path) -> list[str]:
    """Names in ``folder`` (what a run left beside its output, temporary folders included)."""
    return sorted(p.name for p in folder.iterdir())


def stopped_at_image(args: list[str], at: int, signum: int = signal.SIGINT,
                     cwd: Path | None = None) -> tuple[int, str]:
    """Run ``cogseg ARGS``, send ``signum`` while it fetches image number ``at``; its exit
    code and stderr after the gate line."""
    env = {**os.environ, "COGSEG_TEST_GATE_AT": str(at),
           "PYTHONPATH": os.pathsep.join([str(GATE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([str(COGSEG), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=cwd)

    def at_the_gate() -> None:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if line != "gate\n":  # it ended (or failed) before reaching the image
            _, rest = proc.communicate(timeout=120)
            raise AssertionError(f"never reached image {at}: {line}{rest}")

    return signalled_when(proc, at_the_gate, signum)


def signalled_when(proc: subprocess.Popen[str], ready: Callable[[], None],
                   signum: int) -> tuple[int, str]:
    """Wait for ``ready()`` (it raises when the process cannot get there), send ``signum``,
    and return the exit code and the rest of stderr; the process never outlives the call."""
    try:
        ready()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def more_jobs_than(emulator: Emulator, jobs: int, proc: subprocess.Popen[str]
                   ) -> Callable[[], None]:
    """A ``ready`` for :func:`signalled_when`: the emulator holds more than ``jobs`` jobs (a
    condition polled against a deadline, not a guessed pause; the process must not end
    first)."""
    def ready() -> None:
        deadline = time.monotonic() + 90
        while len(emulator.jobs.jobs) <= jobs:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no job was created"
            time.sleep(0.02)

    return ready
