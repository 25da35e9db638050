"""CDF's segment API on your own GPU (``cogseg serve``), and the segment routes' rules and
views the emulator shares.

:func:`create_app` builds the ASGI app (see :mod:`cogseg_ml.service.app`); it needs the
``serve`` extra (starlette, uvicorn, prometheus-client) and a local model. Importing this
package imports none of them: the names resolve on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cogseg_ml.service.app import ServiceLimits, create_app

__all__ = ["ServiceLimits", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cogseg_ml.service import app

        return getattr(app, name)
    raise AttributeError(f"module 'cogseg_ml.service' has no attribute {name!r}")
