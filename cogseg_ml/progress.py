"""Progress bars: one tqdm wrapper with a global off switch.

Bars are off when ``COGSEG_PROGRESS=0`` is set, after :func:`disable_progress_bars`, or when a
caller passes ``progress=False``. Callers may pass their own ``tqdm_class`` (e.g.
``tqdm.notebook.tqdm``).

A bar shows ``done/total``, the rate and the time left (ETA) once it knows its total: pass
``total`` when it is known up front, or grow it with :func:`add_total` as work is discovered
(e.g. chunk by chunk); with no total it shows the count and the rate only.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm

__all__ = ["add_total", "disable_progress_bars", "enable_progress_bars", "progress_bar"]

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
    """A tqdm bar (disabled when switched off); use as a context manager.

    Args:
        total: how many steps the work has, when known (the bar then shows ``n/total`` and
            the ETA); ``None`` when it is not, or grows (see :func:`add_total`).
        desc: the bar's label.
        progress: ``False`` turns this bar off.
        tqdm_class: another tqdm class (e.g. ``tqdm.notebook.tqdm``).
        kw: passed on to tqdm (``unit``, ``file``, ``mininterval``...).
    """
    cls = tqdm_class or tqdm
    return cls(total=total, desc=desc, disable=not (progress and _enabled), dynamic_ncols=True,
               **kw)


def add_total(bar: Any, n: int) -> None:
    """Grow a bar's total by ``n`` steps just discovered (a bar without a total gets one)."""
    bar.total = (bar.total or 0) + int(n)
    if not getattr(bar, "disable", False):
        bar.refresh()
