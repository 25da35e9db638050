"""Which backend each actor builds: the API, a local model, or the fallback of both.

Specs are small and picklable: they travel to the actors, and each actor builds its backend
once (a local model's weights are read on the actor's node, never shipped through the object
store). A ready :class:`~cogseg_ml.backends.base.SegmentationBackend` object may be given
instead; it is pickled to every actor.

Inside an actor several batches run at once (an async ``__call__``). The API backend is made
for that (one session, many jobs in flight); any other backend (a local model) runs one batch
at a time, so a GPU never holds two batches' activations (:class:`OneAtATime`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.backends.base import BackendJob, BackendOutcome, SegmentationBackend
from cogseg_ml.backends.fallback import FallbackBackend
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import ValidationError

if TYPE_CHECKING:
    import torch

__all__ = ["ApiSpec", "BackendSpec", "FallbackSpec", "LocalModelSpec", "OneAtATime",
           "build_backend"]


@dataclass(frozen=True)
class ApiSpec:
    """The CDF Vision API, through each actor's own segmentation session."""

    config: CdfConfig

    def __post_init__(self) -> None:
        if not isinstance(self.config, CdfConfig):
            raise ValidationError(f"ApiSpec takes a CdfConfig, got {type(self.config).__name__}")

    def build(self, concurrency: int) -> ApiBackend:
        """The backend (``concurrency`` jobs in flight per batch)."""
        return ApiBackend(self.config, concurrency=concurrency)


@dataclass(frozen=True)
class LocalModelSpec:
    """A local SAM 2.1 / SAM 1 checkpoint in transformers' format, loaded by each actor.

    Args:
        model: the checkpoint folder; it must exist on every node that runs an actor (a
            shared file system, or baked into the image).
        device: ``"auto"`` (CUDA when the actor has a GPU: give ``num_gpus``), ``"cpu"``, ...
        encoder_batch_size: images per encoder call (default 8 on CUDA, 1 on the CPU).
        decoder_batch_size: prompts per decoder call (see
            :class:`~cogseg_ml.backends.local_sam.LocalSamBackend`).
        dtype: autocast dtype on CUDA (default bf16).
        compile_encoder: ``torch.compile`` the image encoder.
    """

    model: str | Path
    device: str = "auto"
    encoder_batch_size: int | None = None
    decoder_batch_size: int | None = None
    dtype: torch.dtype | None = None
    compile_encoder: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, (str, Path)) or not str(self.model):
            raise ValidationError(f"LocalModelSpec.model must be a checkpoint folder, got "
                                  f"{self.model!r}")
        for name in ("encoder_batch_size", "decoder_batch_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValidationError(f"LocalModelSpec.{name} must be a positive integer, "
                                      f"got {v!r}")

    def build(self) -> SegmentationBackend:
        """The loaded model (on this process's device)."""
        from cogseg_ml.backends.local_sam import LocalSamBackend

        return LocalSamBackend.from_pretrained(
            self.model, device=self.device, dtype=self.dtype,
            encoder_batch_size=self.encoder_batch_size,
            decoder_batch_size=self.decoder_batch_size, compile_encoder=self.compile_encoder)


@dataclass(frozen=True)
class FallbackSpec:
    """The API first and the local model when it is unavailable (or the reverse), as
    :class:`~cogseg_ml.backends.fallback.FallbackBackend` does it, per actor."""

    api: ApiSpec
    local: LocalModelSpec
    mode: Literal["prefer-api", "prefer-local"] = "prefer-api"
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.api, ApiSpec) or not isinstance(self.local, LocalModelSpec):
            raise ValidationError("FallbackSpec takes an ApiSpec and a LocalModelSpec")
        if self.mode not in ("prefer-api", "prefer-local"):
            raise ValidationError(f"mode must be 'prefer-api' or 'prefer-local', got "
                                  f"{self.mode!r}")

    def build(self, concurrency: int) -> FallbackBackend:
        """The fallback backend of both."""
        return FallbackBackend(self.api.build(concurrency), self.local.build(),
                               mode=self.mode, cooldown_s=self.cooldown_s)


BackendSpec = ApiSpec | LocalModelSpec | FallbackSpec | CdfConfig | SegmentationBackend
"""What ``backend=`` takes: a spec, a :class:`CdfConfig` (the API), or a ready backend."""


class OneAtATime:
    """A backend whose :meth:`run` serves one caller at a time (the others wait)."""

    def __init__(self, backend: SegmentationBackend) -> None:
        self.inner = backend
        self.name = backend.name
        self.model_version = backend.model_version
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OneAtATime({self.inner!r})"

    def identities(self) -> list[tuple[str, str]]:
        """The wrapped backend's."""
        return self.inner.identities()

    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        """The wrapped backend's, holding the lock until its last outcome (or a close)."""
        with self._lock:
            yield from self.inner.run(jobs)


def _one_at_a_time(backend: SegmentationBackend) -> SegmentationBackend:
    if isinstance(backend, (ApiBackend, OneAtATime)):
        return backend
    if isinstance(backend, FallbackBackend):  # its API side stays concurrent
        backend.primary = _one_at_a_time(backend.primary)
        if backend.fallback is not None:
            backend.fallback = _one_at_a_time(backend.fallback)
        return backend
    return OneAtATime(backend)


def check_spec(spec: object) -> None:
    """Refuse what is not a backend spec, in the driver, before any actor starts.

    Raises:
        ValidationError: naming what ``backend=`` takes.
    """
    if not isinstance(spec, (ApiSpec, LocalModelSpec, FallbackSpec, CdfConfig,
                             SegmentationBackend)):
        raise ValidationError(
            "backend must be an ApiSpec, a LocalModelSpec, a FallbackSpec, a CdfConfig (the "
            f"API) or a SegmentationBackend, got {type(spec).__name__}")


def build_backend(spec: BackendSpec, concurrency: int) -> SegmentationBackend:
    """The actor's backend from its spec, safe for batches running at once."""
    check_spec(spec)
    built: SegmentationBackend
    if isinstance(spec, CdfConfig):
        built = ApiSpec(spec).build(concurrency)
    elif isinstance(spec, (ApiSpec, FallbackSpec)):
        built = spec.build(concurrency)
    elif isinstance(spec, LocalModelSpec):
        built = spec.build()
    else:
        built = spec
    return _one_at_a_time(built)
