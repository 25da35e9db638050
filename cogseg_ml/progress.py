"""Progress bars: one tqdm wrapper with a global off switch.

Bars are off when ``COGSEG_PROGRESS=0`` is set, after :func:`disable_progress_bars`, or when a
caller passes ``progress=False``. Callers may pass their own ``tqdm_class`` (e.g.
``tqdm.notebook.tqdm``).
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm

__all__ = ["disable_progress_bars", "enable_progress_bars", "progress_bar"]

_enabled = os.environ.get("COGSEG_PROGRESS", "1") not in ("0", "false", "no")


def disable_progress_bars() -> None:
    """Turn every cogseg progress bar off."""
    global _enabled
    _enabled = False


def enable_progress_bars() -> None:
    """Turn progress bars back on."""
    global _enabled
    _enabled = True


def progress_bar(total: int | None, desc: str, *, progress: bool = True,
                 tqdm_class: Any = None, **kw: Any) -> Any:
    """A tqdm bar (disabled when switched off); use as a context manager."""
    cls = tqdm_class or tqdm
    return cls(total=total, desc=desc, disable=not (progress and _enabled), dynamic_ncols=True,
               **kw)
