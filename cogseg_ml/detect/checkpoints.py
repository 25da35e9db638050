"""Detector folders in ``transformers``' format: checked, then loaded from local files only.

A folder holds ``config.json`` (``model_type`` ``"grounding-dino"``, ``"mm-grounding-dino"``
(MM-Grounding-DINO and LLMDet checkpoints) or ``"owlv2"``), the weights
(``model.safetensors``) and the processor with its tokenizer (``processor_config.json``,
``tokenizer.json``, ...). The published ones (``IDEA-Research/grounding-dino-tiny``,
``openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg``, ``google/owlv2-base-patch16``, ...)
are fetched once, e.g. ``hf download IDEA-Research/grounding-dino-tiny --local-dir DIR``;
nothing here downloads. A folder whose ``model_type`` is ``"cogseg-ground-truth"`` holds the
ground-truth double for synthetic images (:mod:`cogseg_ml.detect.ground_truth`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cogseg_ml.backends.base import require_extra
from cogseg_ml.backends.model_digest import weights_digest
from cogseg_ml.backends.model_folder import check_model_folder
from cogseg_ml.detect.ground_truth import GROUND_TRUTH_TYPE
from cogseg_ml.errors import DetectorCheckpointError, ValidationError

__all__ = ["DETECTOR_TYPES", "DOWNLOAD_HINT", "GROUND_TRUTH_TYPE", "DetectorCheckpointError",
           "check_folder", "load_adapter", "make_adapter", "quiet_transformers",
           "require_transformers", "weights_digest"]

#: config.json's model_type -> the family we drive.
DETECTOR_TYPES = {"grounding-dino": "grounding-dino", "mm-grounding-dino": "mm-grounding-dino",
                  "owlv2": "owlv2"}
DOWNLOAD_HINT = ("fetch one once, e.g. `hf download IDEA-Research/grounding-dino-tiny "
                 "--local-dir DIR` (or google/owlv2-base-patch16), then pass DIR")


def require_transformers() -> Any:
    """``transformers``, or an ImportError naming the extra that brings it."""
    return require_extra("transformers", "detect", "Text-prompted detectors")


def check_folder(path: str | Path) -> str:
    """The folder's ``model_type`` (one of :data:`DETECTOR_TYPES` or the ground-truth type).

    Raises:
        DetectorCheckpointError: naming the folder and what is wrong.
    """
    kinds = " or ".join(repr(t) for t in DETECTOR_TYPES)
    expected = (f"expected a folder in transformers' format: config.json with model_type "
                f"{kinds}, model.safetensors and the processor's files")

    def type_hint(model_type: object) -> str:
        return (": that is a segmentation model (--model), not a detector"
                if model_type in ("sam2", "sam2_video", "sam") else "")

    return check_model_folder(
        path, kind="detector", noun="a text-prompted detector",
        model_types=(*DETECTOR_TYPES, GROUND_TRUTH_TYPE), expected=expected,
        download_hint=DOWNLOAD_HINT, error=DetectorCheckpointError, type_hint=type_hint,
        without_weights=(GROUND_TRUTH_TYPE,))


@contextmanager
def quiet_transformers(tf: Any) -> Iterator[None]:
    """No download or weight-loading progress bars while a local folder is read."""
    hf_logging = tf.utils.logging
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _tokenizer_digest(processor: Any) -> str:
    """The processor's image settings and the tokenizer's vocabulary (ids matter to a model)."""
    data = dict(processor.image_processor.to_dict())
    data.pop("processor_class", None)
    vocab = processor.tokenizer.get_vocab()
    text = json.dumps({"image": data, "vocab": sorted(vocab.items(), key=lambda kv: kv[1])},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_adapter(path: str | Path, device: torch.device, *, template: str | None = None) -> Any:
    """The model adapter of a detector folder (weights loaded from local files only).

    Raises:
        DetectorCheckpointError: the folder cannot be used (see :func:`check_folder`), or its
            model or processor do not load.
    """
    kind = check_folder(path)
    where = str(path)
    folder = Path(path).expanduser()
    if kind == GROUND_TRUTH_TYPE:
        from cogseg_ml.detect.ground_truth import load_ground_truth

        return load_ground_truth(folder)
    tf = require_transformers()
    with quiet_transformers(tf):
        try:
            model = tf.AutoModelForZeroShotObjectDetection.from_pretrained(
                folder, local_files_only=True, use_kernels=False)
        except Exception as exc:  # corrupt files fail in many ways (safetensors has its own)
            raise DetectorCheckpointError(f"detector {where!r} could not be loaded "
                                          f"({type(exc).__name__}: {exc})", path=where) from None
        try:
            processor = tf.AutoProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise DetectorCheckpointError(
                f"detector folder {where!r} has no usable processor or tokenizer (it needs the "
                f"processor's files beside the weights: processor_config.json or "
                f"preprocessor_config.json, and the tokenizer's; {type(exc).__name__}: {exc})",
                path=where) from None
    family = DETECTOR_TYPES[kind]
    wanted = tf.Owlv2Processor if family == "owlv2" else tf.GroundingDinoProcessor
    if not isinstance(processor, wanted):
        raise DetectorCheckpointError(f"detector {where!r} carries a {type(processor).__name__}"
                                      f", expected a {wanted.__name__}", path=where)
    return make_adapter(family, model, processor, device, template=template)


def make_adapter(family: str, model: Any, processor: Any, device: torch.device, *,
                 template: str | None = None) -> Any:
    """The adapter of a loaded ``(model, processor)`` of ``family`` (its version a digest of
    the weights, the image settings and the vocabulary; computed before the model moves)."""
    if family not in DETECTOR_TYPES.values():
        raise ValidationError(f"family must be one of {sorted(DETECTOR_TYPES.values())}, got "
                              f"{family!r}")
    version = f"{family}:{weights_digest(model, _tokenizer_digest(processor))}"
    model.eval()
    if family == "owlv2":
        from cogseg_ml.detect.owlv2 import DEFAULT_TEMPLATE, Owlv2Adapter

        return Owlv2Adapter(model, processor, device, version, template or DEFAULT_TEMPLATE)
    if template is not None:
        raise ValidationError("template= is for OWLv2 queries; Grounding DINO reads the class "
                              "phrases themselves")
    from cogseg_ml.detect.grounding_dino import GroundingDinoAdapter

    return GroundingDinoAdapter(family, model, processor, device, version)
