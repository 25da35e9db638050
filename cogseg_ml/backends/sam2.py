"""SAM 2 / 2.1 and SAM 1 through ``transformers`` (the ``sam2`` extra), from local folders.

A checkpoint in ``transformers``' format is a folder with ``config.json`` (``model_type``
``"sam2"``, ``"sam2_video"`` or ``"sam"``), the weights (``model.safetensors``) and usually the
processor's settings (``processor_config.json`` or ``preprocessor_config.json``). The published
ones (``facebook/sam2.1-hiera-tiny``, ``-small``, ``-base-plus``, ``-large``, and
``facebook/sam-vit-base`` ...) are fetched once with the hub's command line; this module only
reads folders, unless the caller passes a hub id *and* ``allow_download=True``.

:func:`load_pretrained` checks the folder and loads model plus processor;
:class:`TransformersSamAdapter` is what :class:`~cogseg_ml.backends.local_sam.LocalSamBackend`
drives (its pixel preprocessing and its coordinate conventions are the processor's own).
:func:`tiny_config` and :func:`save_random_checkpoint` build small random-weight models of the
real architectures for tests and CPU benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cogseg_ml.backends.base import require_extra
from cogseg_ml.backends.model_folder import check_model_folder
from cogseg_ml.backends.prompt_geometry import ModelFrame, longest_side_frame, square_frame
from cogseg_ml.errors import SamCheckpointError, ValidationError

__all__ = ["MODEL_TYPES", "SamCheckpointError", "TransformersSamAdapter", "load_pretrained",
           "processor_settings", "save_random_checkpoint", "tiny_config"]

# config.json's model_type -> the family we drive ("sam2_video" folders hold the image model's
# weights plus the video memory modules, which the image model ignores).
MODEL_TYPES = {"sam2": "sam2", "sam2_video": "sam2", "sam": "sam"}
DOWNLOAD_HINT = ("fetch one once, e.g. `hf download facebook/sam2.1-hiera-tiny --local-dir DIR`, "
                 "then pass DIR")


def _require() -> Any:
    return require_extra("transformers", "sam2", "SAM 2 and transformers-format SAM checkpoints")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return (len(parts) == 2 and all(parts) and not text.startswith((".", "~"))
            and "\\" not in text)


def _check_folder(path: Path) -> str:
    """The folder's family (``"sam2"`` or ``"sam"``), or a :class:`SamCheckpointError`."""
    def file_hint(p: Path) -> str:
        return (": for Meta's original segment-anything .pth files use "
                "LocalSamBackend(checkpoint=PATH, model_type=...)"
                if p.suffix in (".pth", ".pt") else "")

    def no_config_hint(p: Path) -> str:
        originals = sorted(f.name for f in p.glob("*.pt")) + sorted(f.name for f in p.glob("*.pth"))
        return (f"; it holds {', '.join(originals)}: Meta's original format, not transformers' "
                "(download the repository's config.json and model.safetensors too)"
                if originals else "")

    expected = ("expected a folder in transformers' format: config.json with model_type "
                f"{' or '.join(repr(t) for t in MODEL_TYPES)}, and model.safetensors")
    model_type = check_model_folder(
        path, kind="SAM checkpoint", noun="a SAM model", model_types=MODEL_TYPES,
        expected=expected, download_hint=DOWNLOAD_HINT, error=SamCheckpointError,
        file_hint=file_hint, no_config_hint=no_config_hint)
    return MODEL_TYPES[model_type]


def _default_processor(family: str, model: Any) -> Any:
    """The published preprocessing for a folder that carries no processor settings."""
    tf = _require()
    size = int(model.config.prompt_encoder_config.image_size)
    if family == "sam2":
        return tf.Sam2Processor(image_processor=tf.Sam2ImageProcessor(
            size={"height": size, "width": size}))
    return tf.SamProcessor(image_processor=tf.SamImageProcessor(
        size={"longest_edge": size}, pad_size={"height": size, "width": size}))


def load_pretrained(path_or_id: str | Path, *, allow_download: bool = False,
                    revision: str | None = None) -> tuple[str, Any, Any]:
    """Load ``(family, model, processor)`` from a folder (or, when allowed, a hub id).

    Args:
        path_or_id: a local folder in transformers' format, or a hub id such as
            ``"facebook/sam2.1-hiera-tiny"`` (only with ``allow_download=True``).
        allow_download: fetch a hub id that is not a local folder (off: nothing is downloaded).
        revision: the hub revision (branch, tag or commit) when downloading.

    Raises:
        SamCheckpointError: the folder is missing, is not a SAM checkpoint, or cannot be loaded.
    """
    tf = _require()
    text = str(path_or_id)
    path = Path(text).expanduser()
    remote = allow_download and not path.exists() and _looks_like_hub_id(text)
    if remote:
        try:
            config = tf.AutoConfig.from_pretrained(text, revision=revision)
        except (OSError, ValueError) as exc:
            raise SamCheckpointError(f"SAM checkpoint {text!r} could not be fetched from the "
                                     f"hub ({type(exc).__name__}: {exc})", path=text) from None
        family = MODEL_TYPES.get(getattr(config, "model_type", ""))
        if family is None:
            raise SamCheckpointError(f"{text!r} holds a model of type {config.model_type!r}, "
                                     f"not a SAM model (expected one of {sorted(MODEL_TYPES)})",
                                     path=text)
        source: str | Path = text
        kwargs: dict[str, Any] = {"revision": revision}
    else:
        if not path.exists() and _looks_like_hub_id(text):
            raise SamCheckpointError(
                f"SAM checkpoint folder {text!r} does not exist; if it is a hub id, pass "
                f"allow_download=True to fetch it, or {DOWNLOAD_HINT}", path=text)
        family = _check_folder(path)
        source = path
        kwargs = {"local_files_only": True}
    model_cls = tf.Sam2Model if family == "sam2" else tf.SamModel
    try:
        model = model_cls.from_pretrained(source, **kwargs)
    except Exception as exc:  # corrupt files fail in many ways (safetensors has its own error)
        raise SamCheckpointError(f"SAM checkpoint {text!r} could not be loaded as "
                                 f"{model_cls.__name__} ({type(exc).__name__}: {exc})",
                                 path=text) from None
    try:
        processor = tf.AutoProcessor.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, TypeError):
        processor = _default_processor(family, model)
    wanted = tf.Sam2Processor if family == "sam2" else tf.SamProcessor
    if not isinstance(processor, wanted):
        raise SamCheckpointError(f"SAM checkpoint {text!r} carries a {type(processor).__name__}"
                                 f", expected a {wanted.__name__}", path=text)
    return family, model.eval(), processor


def processor_settings(processor: Any) -> str:
    """A processor's image settings as canonical JSON (part of a model's identity)."""
    data = dict(processor.image_processor.to_dict())
    data.pop("processor_class", None)
    data["target_size"] = getattr(processor, "target_size", None)
    return json.dumps(data, sort_keys=True, default=str)


class TransformersSamAdapter:
    """``transformers``' ``Sam2Model`` or ``SamModel`` with its processor, for the backend.

    Pixel preprocessing is the processor's (on ``device``); prompts arrive in the processor's
    coordinate frame (see :mod:`cogseg_ml.backends.prompt_geometry`); low-resolution masks are
    upscaled as the processor's ``post_process_masks`` does.
    """

    def __init__(self, family: str, model: Any, processor: Any, device: torch.device) -> None:
        if family not in ("sam2", "sam"):
            raise ValidationError(f"family must be 'sam2' or 'sam', got {family!r}")
        self.family = family
        self.device = device
        self._net: Any = model.to(device).eval()
        self.model: torch.nn.Module = self._net
        self.processor = processor
        self.input_size = int(processor.target_size)
        ip = processor.image_processor
        self._pad = (int(ip.pad_size["height"]), int(ip.pad_size["width"])) \
            if family == "sam" else (self.input_size, self.input_size)
        self._encoder: Any = self._net.get_image_embeddings

    def __repr__(self) -> str:
        return f"TransformersSamAdapter({type(self.model).__name__}, input {self.input_size})"

    def frame(self, height: int, width: int) -> ModelFrame:
        """See :class:`~cogseg_ml.backends.sam_adapter.SamAdapter`."""
        if self.family == "sam2":
            return square_frame(height, width, self.input_size)
        return longest_side_frame(height, width, self.input_size)

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        """See :class:`~cogseg_ml.backends.sam_adapter.SamAdapter`."""
        # Writable arrays (torch refuses to wrap read-only ones without a warning), and
        # channels-last stated: a 3-pixel-high image is not channels-first.
        arrays = [px if px.flags.writeable else px.copy() for px in images]
        inputs = self.processor.image_processor(images=arrays, return_tensors="pt",
                                                device=self.device,
                                                input_data_format="channels_last")
        pixels = inputs["pixel_values"].to(self.device)
        out = self._encoder(pixels)
        n = len(images)
        if self.family == "sam2":  # a list of feature maps, high resolution first
            if n == 1:
                return [list(out)]
            return [[level[i:i + 1].clone() for level in out] for i in range(n)]
        return [out] if n == 1 else [out[i:i + 1].clone() for i in range(n)]

    def decode(self, embedding: Any, points: torch.Tensor | None, labels: torch.Tensor | None,
               boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`~cogseg_ml.backends.sam_adapter.SamAdapter`."""
        out = self._net(image_embeddings=embedding,
                         input_points=None if points is None else points[None],
                         input_labels=None if labels is None else labels[None],
                         input_boxes=None if boxes is None else boxes[None],
                         multimask_output=True)
        return out.pred_masks[0], out.iou_scores[0]

    def upscale(self, low_res: torch.Tensor, frame: ModelFrame) -> torch.Tensor:
        """See :class:`~cogseg_ml.backends.sam_adapter.SamAdapter`."""
        x = low_res.float()
        size = (frame.height, frame.width)
        if self.family == "sam":  # to the padded input, drop the padding, to the image
            x = F.interpolate(x, self._pad, mode="bilinear", align_corners=False)
            x = x[..., :frame.resized_height, :frame.resized_width]
        return F.interpolate(x, size, mode="bilinear", align_corners=False)[:, 0]

    def compile_encoder(self) -> None:
        """See :class:`~cogseg_ml.backends.sam_adapter.SamAdapter`."""
        self._encoder = torch.compile(self._net.get_image_embeddings)



# --- small random-weight models of the real architectures --------------------------------------
def tiny_config(family: str = "sam2", image_size: int = 256) -> Any:
    """A tiny config of the real architecture (about 0.1-0.35 M parameters) for CPU tests.

    SAM 2: a four-stage Hiera (widths 16-128) with the FPN neck, prompt encoder and mask decoder
    at width 32; SAM 1: a two-layer ViT at width 32. ``image_size`` must be a multiple of 64.
    """
    tf = _require()
    if image_size % 64:
        raise ValidationError(f"image_size must be a multiple of 64, got {image_size}")
    s = image_size
    prompt = {"hidden_size": 32, "image_size": s, "patch_size": 16, "mask_input_channels": 8}
    decoder = {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2,
               "iou_head_hidden_dim": 32}
    if family == "sam2":
        backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": 16,
                    "image_size": [s, s], "blocks_per_stage": [1, 1, 2, 1],
                    "embed_dim_per_stage": [16, 32, 64, 128],
                    "num_attention_heads_per_stage": [1, 1, 2, 2],
                    "window_size_per_stage": [8, 4, 4, 4], "global_attention_blocks": [3],
                    "window_positional_embedding_background_size": [4, 4]}
        vision = {"model_type": "sam2_vision_model", "backbone_config": backbone,
                  "backbone_channel_list": [128, 64, 32, 16],
                  "backbone_feature_sizes": [[s // 4, s // 4], [s // 8, s // 8],
                                             [s // 16, s // 16]],
                  "fpn_hidden_size": 32}
        return tf.Sam2Config(vision_config=vision, prompt_encoder_config=prompt,
                             mask_decoder_config=decoder)
    if family == "sam":
        vision = {"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "image_size": s, "window_size": 4,
                  "global_attn_indexes": [1], "num_pos_feats": 16, "mlp_dim": 64}
        return tf.SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                            mask_decoder_config=decoder)
    raise ValidationError(f"family must be 'sam2' or 'sam', got {family!r}")


def save_random_checkpoint(folder: str | Path, family: str = "sam2", *, seed: int = 0,
                           config: Any = None) -> Path:
    """Write a random-weight checkpoint (model and processor) in transformers' format.

    Args:
        folder: where to write ``config.json``, ``model.safetensors`` and the processor file.
        family: ``"sam2"`` or ``"sam"``.
        seed: the weights' seed (different seeds give different weights).
        config: a full config instead of :func:`tiny_config` (e.g. ``Sam2Config()``, the
            hiera-tiny layout at 1024 px).
    """
    tf = _require()
    cfg = config if config is not None else tiny_config(family)
    torch.manual_seed(seed)
    model = (tf.Sam2Model if family == "sam2" else tf.SamModel)(cfg).eval()
    out = Path(folder)
    model.save_pretrained(out)
    _default_processor(family, model).save_pretrained(out)
    return out
