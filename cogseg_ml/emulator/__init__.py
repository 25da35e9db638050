"""A local emulator of the CDF endpoints cogseg_ml uses, serving real HTTP on loopback.

``from cogseg_ml.emulator import Emulator`` loads the server (Starlette, uvicorn) on first use
only, so importing a light submodule such as :mod:`cogseg_ml.emulator.synthetic_images` stays
light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cogseg_ml.emulator.server import Emulator

__all__ = ["Emulator"]


def __getattr__(name: str) -> Any:
    if name == "Emulator":
        from cogseg_ml.emulator.server import Emulator

        return Emulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
