"""Ultralytics itself (``make test-ultralytics``; not in the default run): AGPL-3.0, so never a
dependency of the package; it lives in a venv of its own (build/ultralytics-venv).

Offline: ``YOLO_OFFLINE`` stops its online checks, its settings go to a folder of the run's own,
and the model is built from ``yolo11n-seg.yaml`` (the ``.pt`` name would download weights).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-config-"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test here runs Ultralytics; without a ``-m`` expression they are deselected,
    ``-m ultralytics`` (``make test-ultralytics``) selects them."""
    here = Path(__file__).parent
    mine = [item for item in items if item.path.is_relative_to(here)]
    for item in mine:
        item.add_marker(pytest.mark.ultralytics)
    if mine and not config.option.markexpr:
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if not item.path.is_relative_to(here)]
