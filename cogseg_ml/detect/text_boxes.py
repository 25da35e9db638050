"""Text-prompted boxes: class names in, boxes named by those classes out.

:class:`TextBoxDetector` runs an open-vocabulary detector on images and a class list:
Grounding DINO (MM-Grounding-DINO and LLMDet checkpoints too) or OWLv2 from a local folder in
``transformers``' format (:meth:`TextBoxDetector.from_pretrained`), or any
:class:`DetectorModel` (the ground-truth double of :mod:`cogseg_ml.detect.ground_truth`).
Every model goes through the same post-processing (:mod:`cogseg_ml.detect.suppression`):
box and text thresholds, class-aware NMS, cross-class duplicate suppression (one object keeps
one class) and a maximum per image. Each box carries the caller's whole class phrase, never a
word piece.

Throughput: several images per forward call (8 by default on CUDA, 4 on the CPU, where the
tiny test model runs twice as fast batched by 4 as one by one), images of one size
together for Grounding DINO (no padding, so a batch gives what each image gives alone), bf16
autocast on CUDA, inference mode; all classes of a call go into one prompt (or as few as fit
the model's text length), not one call per class.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from cogseg_ml.detect.class_prompts import check_classes
from cogseg_ml.detect.detections import Detection, RawDetections
from cogseg_ml.detect.suppression import DetectionSettings, select
from cogseg_ml.errors import ValidationError

__all__ = ["DetectorModel", "TextBoxDetector"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@runtime_checkable
class DetectorModel(Protocol):
    """What :class:`TextBoxDetector` drives: a model that proposes scored boxes.

    Attributes:
        family: ``"grounding-dino"``, ``"mm-grounding-dino"``, ``"owlv2"``, ``"ground-truth"``.
        model_version: the weights' identity (a digest).
        device: where it runs.
        same_size_batches: only images of one size may share a call.
    """

    family: str
    model_version: str
    device: torch.device
    same_size_batches: bool

    def raw(self, images: Sequence[np.ndarray], classes: Sequence[str]) -> list[RawDetections]:
        """Every candidate box of each image, scored against every class (in order)."""
        ...

    def prompt_texts(self, classes: Sequence[str]) -> list[str]:
        """The text(s) the model is given for ``classes``."""
        ...


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValidationError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got "
                              f"{device!r}") from None


class TextBoxDetector:
    """Boxes for class names in images, from an open-vocabulary detector.

    Use :meth:`from_pretrained` for a model folder; the constructor takes a ready
    :class:`DetectorModel`.

    Args:
        model: the detector model (an adapter).
        box_threshold, text_threshold, nms_iou, cross_class_iou, max_per_image: see
            :class:`~cogseg_ml.detect.suppression.DetectionSettings` (``cross_class_iou=None``
            keeps an object boxed under two classes twice).
        dtype: autocast dtype on CUDA (default bf16; ``torch.float32`` turns autocast off).
        batch_size: images per forward call (default 8 on CUDA, 4 on the CPU).

    Attributes:
        dropped: boxes dropped so far, by reason (see :data:`~cogseg_ml.detect.suppression.
            DROP_REASONS`).
        forward_calls: model calls made so far.
    """

    def __init__(self, model: DetectorModel, *, box_threshold: float = 0.3,
                 text_threshold: float = 0.25, nms_iou: float = 0.5,
                 cross_class_iou: float | None = 0.7, max_per_image: int = 100,
                 dtype: torch.dtype | None = None, batch_size: int | None = None) -> None:
        if not isinstance(model, DetectorModel):
            raise ValidationError(f"model must be a DetectorModel (an adapter with raw(), "
                                  f"family and model_version), got {type(model).__name__}")
        self.model = model
        self.settings = DetectionSettings(box_threshold, text_threshold, nms_iou,
                                          cross_class_iou, max_per_image)
        cuda = model.device.type == "cuda"
        if dtype is not None and dtype not in _DTYPES:
            raise ValidationError(f"dtype must be one of {', '.join(map(str, _DTYPES))} or None, "
                                  f"got {dtype!r}")
        self.dtype = dtype if dtype is not None else (torch.bfloat16 if cuda else torch.float32)
        self.autocast = cuda and self.dtype != torch.float32
        if batch_size is not None and (isinstance(batch_size, bool) or
                                       not isinstance(batch_size, int) or batch_size < 1):
            raise ValidationError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size or (8 if cuda else 4)
        self.dropped: Counter[str] = Counter()
        self.forward_calls = 0

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto",
                        dtype: torch.dtype | None = None, *, box_threshold: float = 0.3,
                        text_threshold: float = 0.25, nms_iou: float = 0.5,
                        cross_class_iou: float | None = 0.7, max_per_image: int = 100,
                        batch_size: int | None = None, template: str | None = None
                        ) -> TextBoxDetector:
        """A detector on a local folder in ``transformers``' format (nothing is downloaded).

        Args:
            path: a Grounding DINO, MM-Grounding-DINO / LLMDet or OWLv2 folder
                (``config.json``, ``model.safetensors``, the processor and tokenizer files),
                e.g. from ``hf download IDEA-Research/grounding-dino-tiny --local-dir DIR``.
            device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            dtype: autocast dtype on CUDA (default bf16); ``torch.float32`` turns it off.
            template: OWLv2's query for a class (default ``"a photo of a {}"``).

        The other arguments are the constructor's.

        Raises:
            DetectorCheckpointError: (a ValidationError) the folder is missing, is not a
                detector (no ``config.json``, another ``model_type``, no weights, no
                processor), or does not load; the message names it.
        """
        from cogseg_ml.detect.checkpoints import load_adapter

        dev = _resolve_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValidationError(f"device {device!r}: no CUDA device is available here; use "
                                  "'cpu' (or 'auto')")
        adapter = load_adapter(path, dev, template=template)
        return cls(adapter, box_threshold=box_threshold, text_threshold=text_threshold,
                   nms_iou=nms_iou, cross_class_iou=cross_class_iou,
                   max_per_image=max_per_image, dtype=dtype, batch_size=batch_size)

    def __repr__(self) -> str:
        return (f"TextBoxDetector({self.model.family}, model_version="
                f"{self.model.model_version!r}, device={str(self.model.device)!r})")

    @property
    def name(self) -> str:
        """The model family (``"grounding-dino"``, ``"owlv2"``, ...)."""
        return self.model.family

    @property
    def model_version(self) -> str:
        """The weights' identity."""
        return self.model.model_version

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.model.device

    @property
    def identity(self) -> str:
        """Weights and settings together: what a cached detection is keyed by."""
        extra = getattr(self.model, "template", None)
        tail = f":{extra}" if extra else ""
        return f"{self.model.model_version}:{self.settings.key()}{tail}"

    def prompt_texts(self, classes: Sequence[str]) -> list[str]:
        """The text(s) the model is given for ``classes`` (checked as :meth:`detect` does)."""
        return self.model.prompt_texts(check_classes(classes))

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast:
            return torch.autocast(device_type=self.model.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def _batches(self, images: Sequence[np.ndarray]) -> Iterator[list[int]]:
        """Indices of the images of each forward call, in input order within a size."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, px in enumerate(images):
            key = tuple(px.shape) if self.model.same_size_batches else ()
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            for k in range(0, len(members), self.batch_size):
                yield members[k:k + self.batch_size]

    def detect(self, images: Sequence[np.ndarray], classes: Sequence[str]
               ) -> list[list[Detection]]:
        """Detections for each image, best first.

        Args:
            images: ``(H, W, 3)`` uint8 RGB arrays.
            classes: the class phrases (each detection's ``label`` is one of them, as given
                after stripping).

        Raises:
            ValidationError: an empty class list, a repeated or blank name, a name holding
                ``"."``, a phrase too long for the model, or an image that is not
                ``(H, W, 3)`` uint8.
        """
        names = check_classes(classes)
        for k, px in enumerate(images):
            if not isinstance(px, np.ndarray) or px.ndim != 3 or px.shape[2] != 3 or \
                    px.dtype != np.uint8 or px.shape[0] < 1 or px.shape[1] < 1:
                raise ValidationError(f"images[{k}] must be an (H, W, 3) uint8 RGB array, got "
                                      f"{getattr(px, 'shape', type(px).__name__)} "
                                      f"{getattr(px, 'dtype', '')}")
        out: list[list[Detection]] = [[] for _ in images]
        for batch in self._batches(images):
            with torch.inference_mode(), self._autocast():
                raws = self.model.raw([images[i] for i in batch], names)
            self.forward_calls += 1
            for i, raw in zip(batch, raws, strict=True):
                h, w = images[i].shape[:2]
                out[i], dropped = select(raw, names, w, h, self.settings)
                self.dropped.update(dropped)
        return out

    def detect_one(self, image: np.ndarray, classes: Sequence[str]) -> list[Detection]:
        """:meth:`detect` for one image."""
        return self.detect([image], classes)[0]
