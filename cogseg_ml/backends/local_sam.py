"""A local Segment-Anything model as a backend (the ``sam`` extra: ``segment-anything``).

Loads Meta's official checkpoints (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``,
``sam_vit_h_4b8939.pth``) from a local path; nothing is downloaded. Built for throughput:

* each image is encoded once; its embedding is kept in a bounded LRU cache keyed by the
  image's content hash, so all prompts on an image reuse it;
* all prompts of one image go through the prompt encoder and mask decoder in one batch per
  prompt shape (same number of points, box or not: padding would change SAM's answer);
* on CUDA: bf16 autocast and inference mode; optionally ``torch.compile`` of the encoder.

The model's three candidate masks per prompt are resolved by its predicted IoU (the best is
kept, with that IoU as the score); masks go straight to COCO RLE.

Coordinates: our normalized ``x`` is the continuous pixel position ``x * W`` (pixel ``i`` spans
``[i, i+1)``). SAM's prompt encoder adds 0.5 to every coordinate ("the centre of the pixel"),
so SAM's frame is ours minus 0.5, then scaled by the longest-side resize; see
:func:`to_model_frame`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cogseg_ml.backends.base import BackendJob, BackendOutcome, MaskResult, ScoredMask
from cogseg_ml.errors import CogsegError, FileValidationError, ValidationError
from cogseg_ml.mask_codec import encode
from cogseg_ml.prompts import Prompt

__all__ = ["LocalSamBackend", "build_sam", "build_tiny_sam", "to_model_frame"]

_log = logging.getLogger("cogseg_ml.backends.local_sam")
RUN_WINDOW = 256  # jobs grouped by image at once
MODEL_TYPES = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}  # encoder embedding width


def _require() -> Any:
    try:
        import segment_anything
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("the local SAM backend needs the 'sam' extra: "
                          "pip install 'cogseg-ml[sam]'") from None
    return segment_anything


def build_sam(model_type: str, checkpoint: str | Path | None) -> torch.nn.Module:
    """The real SAM architecture; with a checkpoint, its weights (loaded safely on the CPU).

    Raises:
        ValidationError: unknown model type, missing file, or weights of another model type.
    """
    sa = _require()
    if model_type not in MODEL_TYPES:
        raise ValidationError(f"model_type must be one of {sorted(MODEL_TYPES)}, got "
                              f"{model_type!r}")
    model = sa.sam_model_registry[model_type](checkpoint=None)
    if checkpoint is None:
        return model  # type: ignore[no-any-return]
    path = Path(checkpoint)
    if not path.is_file():
        raise ValidationError(f"SAM checkpoint {str(path)!r} does not exist (nothing is "
                              "downloaded: give the path of a local .pth file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValidationError(f"SAM checkpoint {str(path)!r} could not be read: "
                              f"{type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # SAM 2.x style wrapper
    width = None
    pos = state.get("image_encoder.pos_embed") if isinstance(state, dict) else None
    if isinstance(pos, torch.Tensor):
        width = int(pos.shape[-1])
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        guess = next((t for t, w in MODEL_TYPES.items() if w == width), None)
        hint = (f"; its encoder width {width} matches model_type={guess!r}" if guess
                else "; it does not look like a Segment-Anything v1 checkpoint")
        raise ValidationError(f"SAM checkpoint {str(path)!r} does not fit model_type="
                              f"{model_type!r}{hint}") from None
    return model  # type: ignore[no-any-return]


def build_tiny_sam(seed: int = 0, image_size: int = 256) -> torch.nn.Module:
    """A tiny random-weight SAM of the real architecture (depth 2, width 64) for CPU tests."""
    _require()
    from functools import partial

    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(seed)
    dim, patch = 64, 16
    emb = image_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=image_size, patch_size=patch, embed_dim=dim,
                                      depth=2, num_heads=2, out_chans=dim, use_rel_pos=True,
                                      window_size=4, global_attn_indexes=(1,),
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(emb, emb),
                                     input_image_size=(image_size, image_size),
                                     mask_in_chans=8),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=dim,
                                                               mlp_dim=128, num_heads=2),
                                 iou_head_depth=2, iou_head_hidden_dim=dim),
    )
    tiny: torch.nn.Module = sam.eval()
    return tiny


def to_model_frame(prompt: Prompt, height: int, width: int, target_length: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Normalized prompt → SAM's input frame: ``(points (P, 2), labels (P,), box (4,) | None)``.

    SAM coordinates are ``x * W - 0.5`` (its encoder adds the 0.5 back), then scaled by
    ``target_length / max(H, W)`` (ResizeLongestSide, rounded sizes as SAM rounds them).
    """
    scale = target_length / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    sx, sy = new_w / width, new_h / height
    pts = np.asarray([[p.x * width - 0.5, p.y * height - 0.5] for p in prompt.points],
                     dtype=np.float32).reshape(-1, 2)
    pts[:, 0] *= sx
    pts[:, 1] *= sy
    labels = np.asarray([p.label for p in prompt.points], dtype=np.float32)
    box = None
    if prompt.box is not None:
        b = prompt.box
        box = np.asarray([b.x_min * width - 0.5, b.y_min * height - 0.5,
                          b.x_max * width - 0.5, b.y_max * height - 0.5], dtype=np.float32)
        box[[0, 2]] *= sx
        box[[1, 3]] *= sy
    return pts, labels, box


class LocalSamBackend:
    """Segment-Anything on this machine, behind the same interface as the API backend.

    Args:
        checkpoint: path of an official SAM checkpoint (``None``: random weights, for tests).
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"`` (must match the checkpoint).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        dtype: autocast dtype on CUDA (default bf16); ``torch.float32`` turns autocast off.
        model: a ready model instead (e.g. :func:`build_tiny_sam`).
        embedding_cache_size: image embeddings kept (LRU).
        compile_encoder: ``torch.compile`` the image encoder (fixed 1024x1024 input on CUDA).
        mask_threshold: logit threshold for the binary mask.
    """

    name = "local-sam"

    def __init__(self, checkpoint: str | Path | None = None, *, model_type: str = "vit_b",
                 device: str = "auto", dtype: torch.dtype | None = None,
                 model: torch.nn.Module | None = None, embedding_cache_size: int = 16,
                 compile_encoder: bool = False, mask_threshold: float = 0.0) -> None:
        sa = _require()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        sam: Any = model if model is not None else build_sam(model_type, checkpoint)
        self.model = sam
        self.model.to(self.device).eval()
        self.dtype = dtype if dtype is not None else (
            torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if checkpoint is not None:
            h = hashlib.sha256()
            with open(checkpoint, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self.model_version = f"{model_type}:{h.hexdigest()[:16]}"
        else:  # no file: the weights themselves are the identity (two models never share)
            self.model_version = (f"{model_type if model is None else 'custom'}:"
                                  f"{weights_digest(self.model)}")
        self.target_length = int(self.model.image_encoder.img_size)
        self._transform = sa.utils.transforms.ResizeLongestSide(self.target_length)
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.embedding_cache_size = embedding_cache_size
        self.mask_threshold = mask_threshold
        self.encoder_calls = 0
        self._encoder = self.model.image_encoder
        if compile_encoder:
            self._encoder = torch.compile(self.model.image_encoder)

    def __repr__(self) -> str:
        return (f"LocalSamBackend(model_version={self.model_version!r}, "
                f"device={str(self.device)!r})")

    def identities(self) -> list[tuple[str, str]]:
        """See :class:`~cogseg_ml.backends.base.SegmentationBackend`."""
        return [(self.name, self.model_version)]

    def _autocast(self) -> Any:
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        import contextlib

        return contextlib.nullcontext()

    # --- the model -------------------------------------------------------------------------------
    def embed(self, pixels: np.ndarray, key: str | None = None) -> torch.Tensor:
        """The image embedding ``(1, C, h, w)`` of an ``(H, W, 3)`` uint8 RGB image (cached)."""
        if key is None:
            key = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        hit = self._embeddings.get(key)
        if hit is not None:
            self._embeddings.move_to_end(key)
            return hit
        resized = self._transform.apply_image(pixels)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        with torch.inference_mode(), self._autocast():
            feats: torch.Tensor = self._encoder(self.model.preprocess(x.float()))
        self.encoder_calls += 1
        self._embeddings[key] = feats
        while len(self._embeddings) > self.embedding_cache_size:
            self._embeddings.popitem(last=False)
        return feats

    def segment_image(self, pixels: np.ndarray, prompts: Sequence[Prompt],
                      key: str | None = None) -> list[MaskResult]:
        """All prompts on one image in one decoder batch; one result per prompt, in order."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValidationError(f"pixels must be (H, W, 3) uint8 RGB, got {pixels.shape} "
                                  f"{pixels.dtype}")
        h, w = int(pixels.shape[0]), int(pixels.shape[1])
        feats = self.embed(pixels, key)
        out: list[MaskResult | None] = [None] * len(prompts)
        # One batch per prompt shape (number of points, box or not): SAM takes boxes for all
        # prompts of a batch or none, and padding points would change the answer (its
        # "not a point" embedding is attended to), so prompts are never padded.
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault((len(p.points), p.box is not None), []).append(i)
        for idx in groups.values():
            if not idx:
                continue
            for i, res in zip(idx, self._decode(feats, [prompts[i] for i in idx], h, w),
                              strict=True):
                out[i] = res
        return [r for r in out if r is not None]

    def _decode(self, feats: torch.Tensor, prompts: Sequence[Prompt], h: int, w: int
                ) -> list[MaskResult]:
        frames = [to_model_frame(p, h, w, self.target_length) for p in prompts]
        n_pts = max(len(f[0]) for f in frames)
        dev = self.device
        coords = labels = boxes = None
        if n_pts:
            c = np.stack([f[0] for f in frames])
            lab = np.stack([f[1] for f in frames])
            coords, labels = torch.from_numpy(c).to(dev), torch.from_numpy(lab).to(dev)
        if frames[0][2] is not None:
            boxes = torch.from_numpy(np.stack([f[2] for f in frames])).to(dev)  # type: ignore[misc]
        with torch.inference_mode(), self._autocast():
            sparse, dense = self.model.prompt_encoder(
                points=(coords, labels) if coords is not None else None, boxes=boxes,
                masks=None)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=feats, image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                multimask_output=True)
            best = iou.float().argmax(dim=1)
            rows = torch.arange(len(frames), device=dev)
            chosen = low_res[rows, best][:, None].float()
            scale = self.target_length / max(h, w)
            input_size = (int(h * scale + 0.5), int(w * scale + 0.5))
            masks = self.model.postprocess_masks(chosen, input_size, (h, w))
            binary = (masks[:, 0] > self.mask_threshold).cpu()
        scores = iou.float()[rows, best].clamp(0, 1).cpu().tolist()
        rles = encode(binary)
        return [MaskResult(segments=(ScoredMask(float(s), r),), height=h, width=w,
                           backend=self.name, model_version=self.model_version)
                for s, r in zip(scores, rles, strict=True)]

    # --- the backend interface -----------------------------------------------------------------
    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        """See :class:`~cogseg_ml.backends.base.SegmentationBackend`.

        Jobs are read in windows of ``RUN_WINDOW`` and grouped by image within each, so all
        prompts of an image that arrive together share one decoder batch.
        """
        it = iter(jobs)
        while window := list(itertools.islice(it, RUN_WINDOW)):
            yield from self._run_window(window)

    def _run_window(self, jobs: Sequence[BackendJob]) -> Iterator[BackendOutcome]:
        by_image: OrderedDict[str, list[BackendJob]] = OrderedDict()
        for job in jobs:
            by_image.setdefault(job.image_key, []).append(job)
        for key, group in by_image.items():
            try:
                pixels = _pixels(group[0].load_image(), group[0])
                results = self.segment_image(pixels, [j.request.prompt for j in group], key)
            except CogsegError as exc:
                for job in group:
                    yield BackendOutcome(job, error=exc)
                continue
            for job, res in zip(group, results, strict=True):
                yield BackendOutcome(job, result=res)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) over a model's parameter and buffer names, shapes and values."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _pixels(data: bytes, job: BackendJob) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise FileValidationError(f"file {job.request.file.describe()} is not a readable "
                                  f"image ({exc})") from None
