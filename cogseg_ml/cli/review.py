"""``cogseg review``: (being written)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add ``review`` to the subcommands ``sub``."""
