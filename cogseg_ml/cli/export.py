"""``cogseg export``: (being written)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add ``export`` to the subcommands ``sub``."""
