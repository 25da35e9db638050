"""CDF's segment API on your own GPU (``cogseg serve``), and the segment routes' rules and
views the emulator shares.

``create_app`` builds the ASGI app; it needs the ``serve`` extra (starlette, uvicorn,
prometheus-client) and a local model.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The segment service's ASGI app (see :func:`cogseg_ml.service.app.create_app`)."""
    from cogseg_ml.service.app import create_app as build

    return build(*args, **kwargs)
