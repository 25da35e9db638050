"""Imported at start-up by a ``cogseg`` process that the tests run with this folder on
``PYTHONPATH`` (see ``tests/exports/outputs.py``): when ``COGSEG_TEST_GATE_AT`` is set, the
image fetch of that number (1 = the first) writes ``gate`` to stderr and waits on stdin, which
the test never writes to: it signals the process there instead."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

_AT = int(os.environ.get("COGSEG_TEST_GATE_AT") or 0)

if _AT:
    from cogseg_ml.store.image_fetcher import ImageFetcher

    _real = ImageFetcher.get
    _calls = [0]

    def _gated(self: ImageFetcher, record: Mapping[str, Any]) -> tuple[bytes, str | None]:
        _calls[0] += 1
        if _calls[0] == _AT:
            sys.stderr.write("gate\n")
            sys.stderr.flush()
            sys.stdin.buffer.read(1)  # blocks until the test's signal stops the process
        return _real(self, record)

    ImageFetcher.get = _gated  # type: ignore[method-assign]
