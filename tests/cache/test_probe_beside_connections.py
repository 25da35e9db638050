"""Opening a cache file this process already has open must not disturb its connections.

SQLite's locks on a file are POSIX locks, held per process: closing any descriptor of the
file (a header read, a probe) drops all of them. A process that lost its locks looks closed to
the others: the next one to close checkpoints and deletes the ``-wal`` file under it, and
everything it writes after that is lost."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from cogseg_ml.cache.mask_cache import MaskCache
from tests.cache.test_mask_cache import key, result


def _other_process(path: Path, code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from cogseg_ml.cache.mask_cache import MaskCache; "
         f"c = MaskCache(sys.argv[1]); {code}; c.close()", str(path)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_second_open_in_the_process_keeps_the_first_ones_writes(tmp_path: Path) -> None:
    path = tmp_path / "masks.sqlite"
    first = MaskCache(path)
    first.put(key(0), result(0))
    # The same file opened again in this process, from another thread (a new connection).
    second = MaskCache(path)
    opened = threading.Thread(target=lambda: second.stats())
    opened.start()
    opened.join()
    # Another process opens and closes the cache: it must see this process still holding it.
    assert _other_process(path, "print(c.stats().entries)") == "1"
    first.put(key(1), result(1))
    assert _other_process(path, "print(c.stats().entries)") == "2"
    second.close()
    first.close()
    assert _other_process(path, "print(c.stats().entries)") == "2"
