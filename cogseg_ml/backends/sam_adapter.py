"""What :class:`~cogseg_ml.backends.local_sam.LocalSamBackend` needs from a SAM implementation.

An adapter wraps one implementation (Meta's ``segment-anything``, or ``transformers``' SAM 1
and SAM 2) behind four steps: the model's frame for an image size, the image encoder for a batch
of images, the prompt encoder plus mask decoder for a batch of prompts on one image embedding,
and the upscaling of low-resolution mask logits to the image's size. The backend owns
everything around them: the embedding cache, batching, autocast, crops and RLE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from cogseg_ml.backends.prompt_geometry import ModelFrame

__all__ = ["SamAdapter"]


class SamAdapter(Protocol):
    """One SAM implementation; called by the backend under inference mode (and autocast).

    Attributes:
        family: ``"segment-anything"``, ``"sam"`` (transformers' SAM 1) or ``"sam2"``.
        model: the ``torch.nn.Module`` (moved to ``device`` by the adapter).
        device: where the model runs.
        input_size: the side of the model's square input.
    """

    family: str
    model: torch.nn.Module
    device: torch.device
    input_size: int

    def frame(self, height: int, width: int) -> ModelFrame:
        """Where an image of this size sits in the model's input."""
        ...

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        """Image embeddings of ``(H, W, 3)`` uint8 RGB images, one per image (batch of one)."""
        ...

    def decode(self, embedding: Any, points: torch.Tensor | None, labels: torch.Tensor | None,
               boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Three candidate masks per prompt: ``(logits (N, 3, h, w), predicted IoU (N, 3))``.

        ``points`` is ``(N, P, 2)`` float in the model frame, ``labels`` ``(N, P)`` int64,
        ``boxes`` ``(N, 4)``; every prompt of a call has the same shape.
        """
        ...

    def upscale(self, low_res: torch.Tensor, frame: ModelFrame) -> torch.Tensor:
        """Low-resolution logits ``(N, 1, h, w)`` as ``(N, H, W)`` logits at the image's size."""
        ...

    def compile_encoder(self) -> None:
        """Replace the image encoder by its ``torch.compile`` d version."""
        ...
