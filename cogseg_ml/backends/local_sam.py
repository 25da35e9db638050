"""A local Segment-Anything model as a backend: SAM 2 / 2.1 and SAM 1.

Two ways in:

* :meth:`LocalSamBackend.from_pretrained` (the ``sam2`` extra: ``transformers``) loads SAM 2 /
  2.1 (hiera tiny, small, base-plus, large) and SAM 1 checkpoints in ``transformers``' format
  from a local folder (see :mod:`cogseg_ml.backends.sam2`);
* ``LocalSamBackend(checkpoint=..., model_type=...)`` (the ``sam`` extra: ``segment-anything``)
  loads Meta's original SAM 1 files (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``,
  ``sam_vit_h_4b8939.pth``).

Nothing is downloaded unless asked for. Built for throughput, whichever model:

* each image is encoded once; its embedding is kept in a bounded LRU cache keyed by the
  image's content hash, so all prompts on an image reuse it;
* the images of a window of jobs are decoded by a few threads ahead of the encoder, and on CUDA
  several images go through the encoder as one batch;
* all prompts of one image go through the prompt encoder and mask decoder together, in batches
  per prompt shape (same number of points, box or not: padding would change SAM's answer) of
  up to ``decoder_batch_size`` prompts (large on CUDA; small on the CPU, where the decoder's
  per-prompt copies of the image features make big batches memory-bound);
* inference mode always; bf16 autocast on CUDA; optionally ``torch.compile`` of the encoder.

The model's three candidate masks per prompt are resolved by its predicted IoU (the best is
kept, with that IoU as the score; only that one is upscaled); masks go straight to COCO RLE.

Small objects in large images: with ``crop=CropOptions(...)`` a prompt whose surroundings are a
small part of the image is segmented in a window cut out around it, at the model's full
resolution, and its mask pasted back (see :mod:`cogseg_ml.backends.prompt_geometry`).

Coordinates: see :mod:`cogseg_ml.backends.prompt_geometry` (and :func:`to_model_frame`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import pickle
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cogseg_ml.backends.base import (
    BackendJob,
    BackendOutcome,
    MaskResult,
    ScoredMask,
    require_extra,
)
from cogseg_ml.backends.model_digest import weights_digest
from cogseg_ml.backends.prompt_geometry import (
    CropOptions,
    CropWindow,
    ModelFrame,
    crop_window,
    longest_side_frame,
    paste,
    prompt_in_window,
)
from cogseg_ml.backends.prompt_geometry import to_model_frame as _frame_prompt
from cogseg_ml.backends.sam2 import SamCheckpointError
from cogseg_ml.backends.sam_adapter import SamAdapter
from cogseg_ml.errors import CogsegError, FileValidationError, ValidationError
from cogseg_ml.image_decode import decode_array, decode_array_reduced
from cogseg_ml.mask_codec import encode
from cogseg_ml.prompts import Prompt

__all__ = ["CropOptions", "LocalSamBackend", "SamCheckpointError", "build_sam",
           "build_tiny_sam", "to_model_frame", "weights_digest"]

_log = logging.getLogger("cogseg_ml.backends.local_sam")
RUN_WINDOW = 256  # jobs grouped by image at once
MODEL_TYPES = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}  # encoder embedding width
UPSCALE_PIXELS = 1 << 25  # full-size float logits upscaled at once (128 MiB)
CPU_DECODER_BYTES = 32 << 20  # per-prompt feature copies in one CPU decoder call
CPU_DECODER_BATCH_MAX = 64


def _require() -> Any:
    return require_extra("segment_anything", "sam", "Meta's original SAM checkpoints")


def build_sam(model_type: str, checkpoint: str | Path | None) -> torch.nn.Module:
    """The real SAM architecture; with a checkpoint, its weights (loaded safely on the CPU).

    Raises:
        ValidationError: unknown model type; :class:`SamCheckpointError` (a ValidationError)
            for a missing file or weights of another model type.
    """
    sa = _require()
    if model_type not in MODEL_TYPES:
        raise ValidationError(f"model_type must be one of {sorted(MODEL_TYPES)}, got "
                              f"{model_type!r}")
    model = sa.sam_model_registry[model_type](checkpoint=None)
    if checkpoint is None:
        return model  # type: ignore[no-any-return]
    path = Path(checkpoint)
    where = str(path)
    if path.is_dir():
        raise SamCheckpointError(f"SAM checkpoint {where!r} is a folder: for a checkpoint in "
                                 "transformers' format use LocalSamBackend.from_pretrained("
                                 "FOLDER)", path=where)
    if not path.is_file():
        raise SamCheckpointError(f"SAM checkpoint {where!r} does not exist (nothing is "
                                 "downloaded: give the path of a local .pth file)", path=where)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SamCheckpointError(f"SAM checkpoint {where!r} could not be read: "
                                 f"{_load_failure(exc)}", path=where) from None
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
                else "; it does not look like a Segment-Anything v1 checkpoint (SAM 2 "
                     "checkpoints in transformers' format load with "
                     "LocalSamBackend.from_pretrained(FOLDER))")
        raise SamCheckpointError(f"SAM checkpoint {where!r} does not fit model_type="
                                 f"{model_type!r}{hint}", path=where) from None
    return model  # type: ignore[no-any-return]


def _load_failure(exc: BaseException) -> str:
    """Why ``torch.load`` failed, in our words. torch's own message for a file of pickled
    objects advises ``weights_only=False``, which runs whatever code the file holds: that
    advice is never passed on."""
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text or \
            isinstance(exc, pickle.UnpicklingError):
        return ("it holds pickled Python objects besides tensors; loading those can run "
                "arbitrary code, so only plain tensors are loaded. Save the model's state_dict "
                "(torch.save(model.state_dict(), PATH)) and give that file")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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
    """Normalized prompt → SAM 1's input frame: ``(points (P, 2), labels (P,), box (4,) | None)``.

    SAM coordinates are ``x * W - 0.5`` (its encoder adds the 0.5 back), then scaled by
    ``target_length / max(H, W)`` (ResizeLongestSide, rounded sizes as SAM rounds them). For
    any model's frame use :func:`cogseg_ml.backends.prompt_geometry.to_model_frame`.
    """
    return _frame_prompt(prompt, longest_side_frame(height, width, target_length))


class _SegmentAnythingAdapter:
    """Meta's ``segment-anything`` ``Sam`` module behind :class:`SamAdapter`."""

    family = "segment-anything"

    def __init__(self, sam: Any, device: torch.device) -> None:
        sa = _require()
        self.device = device
        self.model: Any = sam.to(device).eval()
        self.input_size = int(sam.image_encoder.img_size)
        self._transform = sa.utils.transforms.ResizeLongestSide(self.input_size)
        self._encoder: Any = sam.image_encoder

    def frame(self, height: int, width: int) -> ModelFrame:
        return longest_side_frame(height, width, self.input_size)

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        batch = []
        for pixels in images:
            resized = self._transform.apply_image(np.ascontiguousarray(pixels))
            x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            batch.append(self.model.preprocess(x.float()))  # normalized and padded to a square
        feats: torch.Tensor = self._encoder(torch.cat(batch))
        if len(images) == 1:
            return [feats]
        return [feats[i:i + 1].clone() for i in range(len(images))]

    def decode(self, embedding: Any, points: torch.Tensor | None, labels: torch.Tensor | None,
               boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.model.prompt_encoder(
            points=(points, labels.float()) if points is not None and labels is not None
            else None, boxes=boxes, masks=None)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=embedding, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=True)
        return low_res, iou

    def upscale(self, low_res: torch.Tensor, frame: ModelFrame) -> torch.Tensor:
        masks: torch.Tensor = self.model.postprocess_masks(
            low_res.float(), (frame.resized_height, frame.resized_width),
            (frame.height, frame.width))
        return masks[:, 0]

    def compile_encoder(self) -> None:
        self._encoder = torch.compile(self.model.image_encoder)


@dataclass
class _Unit:
    """One encoder input (an image, or a window of it) and the prompts segmented on it."""

    key: str  # the embedding cache key
    image_key: str
    height: int  # the full image's size (masks come back at it)
    width: int
    window: CropWindow | None
    tags: list[Any] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)  # in the unit's own frame

    def pixels(self, image: np.ndarray) -> np.ndarray:
        w = self.window
        return image if w is None else np.ascontiguousarray(image[w.y0:w.y1, w.x0:w.x1])


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class LocalSamBackend:
    """Segment-Anything on this machine, behind the same interface as the API backend.

    Use :meth:`from_pretrained` for SAM 2 / 2.1 and transformers-format SAM 1 folders; the
    constructor takes Meta's original SAM 1 ``.pth`` files (or a ready model or adapter).

    Args:
        checkpoint: path of an official SAM 1 checkpoint (``None``: random weights, for tests).
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"`` (must match the checkpoint).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        dtype: autocast dtype on CUDA (default bf16); ``torch.float32`` turns autocast off.
        model: a ready ``segment-anything`` model instead (e.g. :func:`build_tiny_sam`).
        embedding_cache_size: image embeddings kept (LRU).
        compile_encoder: ``torch.compile`` the image encoder (fixed input size on CUDA).
        mask_threshold: logit threshold for the binary mask.
        adapter: a ready :class:`~cogseg_ml.backends.sam_adapter.SamAdapter` instead (what
            :meth:`from_pretrained` passes).
        model_version: the weights' identity (default: a digest of the weights).
        encoder_batch_size: images per encoder call (default 8 on CUDA, 1 on the CPU).
        decoder_batch_size: prompts per decoder call (default 64 on CUDA; on the CPU as many
            as keep the decoder's per-prompt copies of the image features under 32 MiB: 2 for
            the published SAM 2.1 sizes, 8 for SAM 1, up to 64 for tiny test models).
        crop: segment small prompts in a window around them (off by default).
        autocast: force autocast on or off (default: on CUDA unless ``dtype`` is float32).
        decode_workers: threads decoding images ahead of the encoder.
    """

    name = "local-sam"

    def __init__(self, checkpoint: str | Path | None = None, *, model_type: str = "vit_b",
                 device: str | torch.device = "auto", dtype: torch.dtype | None = None,
                 model: torch.nn.Module | None = None, embedding_cache_size: int = 16,
                 compile_encoder: bool = False, mask_threshold: float = 0.0,
                 adapter: SamAdapter | None = None, model_version: str | None = None,
                 encoder_batch_size: int | None = None, decoder_batch_size: int | None = None,
                 crop: CropOptions | None = None, autocast: bool | None = None,
                 decode_workers: int = 4) -> None:
        self.device = _resolve_device(device)
        cuda = self.device.type == "cuda"
        for label, value in (("embedding_cache_size", embedding_cache_size),
                             ("encoder_batch_size", encoder_batch_size),
                             ("decoder_batch_size", decoder_batch_size),
                             ("decode_workers", decode_workers)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValidationError(f"{label} must be a positive integer, got {value!r}")
        if crop is not None and not isinstance(crop, CropOptions):
            raise ValidationError(f"crop must be CropOptions or None, got {type(crop).__name__}")
        if model is not None and not hasattr(model, "image_encoder"):
            raise ValidationError(
                f"model must be a segment-anything Sam module, got {type(model).__name__}; for "
                "transformers' SamModel or Sam2Model, save it with save_pretrained(FOLDER) and "
                "use LocalSamBackend.from_pretrained(FOLDER)")
        if adapter is None:
            sam: Any = model if model is not None else build_sam(model_type, checkpoint)
            adapter = _SegmentAnythingAdapter(sam, self.device)
            if model_version is None and checkpoint is not None:
                h = hashlib.sha256()
                with open(checkpoint, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                model_version = f"{model_type}:{h.hexdigest()[:16]}"
            elif model_version is None:  # the weights themselves are the identity
                model_version = (f"{model_type if model is None else 'custom'}:"
                                 f"{weights_digest(adapter.model)}")
        elif model_version is None:
            model_version = f"{adapter.family}:{weights_digest(adapter.model)}"
        self.adapter: SamAdapter = adapter
        self.model: Any = adapter.model
        self.model_version: str = model_version
        self.dtype = dtype if dtype is not None else (torch.bfloat16 if cuda else torch.float32)
        self.autocast = (cuda and self.dtype != torch.float32) if autocast is None else autocast
        self.target_length = adapter.input_size
        self.embedding_cache_size = embedding_cache_size
        self.encoder_batch_size = encoder_batch_size or (8 if cuda else 1)
        # On the CPU, large decoder batches are slower: the decoder copies the image features
        # for every prompt, and the copies are bound by memory traffic (None: sized by them).
        self.decoder_batch_size = decoder_batch_size or (64 if cuda else None)
        self.crop = crop
        self.mask_threshold = mask_threshold
        self.decode_workers = decode_workers
        self.encoder_calls = 0  # images encoded
        self.encoder_batches = 0  # encoder forward calls
        self.decoder_calls = 0  # decoder forward calls
        self._embeddings: OrderedDict[str, Any] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.RLock()  # segment_image from several threads (the emulator)
        if compile_encoder:
            adapter.compile_encoder()

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: str | torch.device = "auto",
                        dtype: torch.dtype | None = None, *, allow_download: bool = False,
                        revision: str | None = None, embedding_cache_size: int = 16,
                        encoder_batch_size: int | None = None,
                        decoder_batch_size: int | None = None, crop: CropOptions | None = None,
                        mask_threshold: float = 0.0, compile_encoder: bool = False,
                        autocast: bool | None = None, decode_workers: int = 4
                        ) -> LocalSamBackend:
        """A backend on a SAM 2 / 2.1 or SAM 1 checkpoint in ``transformers``' format.

        Args:
            path_or_id: a local folder (``config.json``, ``model.safetensors``, processor
                settings), e.g. from ``hf download facebook/sam2.1-hiera-tiny --local-dir DIR``;
                or a hub id, fetched only with ``allow_download=True``.
            device, dtype: as for the constructor (autocast dtype on CUDA, default bf16).
            allow_download: fetch a hub id that is not a local folder (off: nothing is
                downloaded, the folder is read with ``local_files_only``).
            revision: the hub revision when downloading.

        The other arguments are the constructor's. The model version is ``"sam2:<digest>"``
        (or ``"sam:<digest>"``), the digest covering the weights and the preprocessing.

        Raises:
            SamCheckpointError: (a ValidationError) the folder is missing, is not a SAM
                checkpoint (no ``config.json``, another ``model_type``, no weights), or does not
                load.
        """
        from cogseg_ml.backends.sam2 import (
            TransformersSamAdapter,
            load_pretrained,
            processor_settings,
        )

        family, model, processor = load_pretrained(path_or_id, allow_download=allow_download,
                                                   revision=revision)
        dev = _resolve_device(device)
        # Hashed on the CPU, before the model moves: the identity of weights and preprocessing.
        version = f"{family}:{weights_digest(model, processor_settings(processor))}"
        adapter = TransformersSamAdapter(family, model, processor, dev)
        return cls(adapter=adapter, model_version=version, device=dev, dtype=dtype,
                   embedding_cache_size=embedding_cache_size,
                   encoder_batch_size=encoder_batch_size,
                   decoder_batch_size=decoder_batch_size, crop=crop,
                   mask_threshold=mask_threshold, compile_encoder=compile_encoder,
                   autocast=autocast, decode_workers=decode_workers)

    def __repr__(self) -> str:
        return (f"LocalSamBackend(model_version={self.model_version!r}, "
                f"device={str(self.device)!r})")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_embeddings=OrderedDict(), _pool=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def identities(self) -> list[tuple[str, str]]:
        """See :class:`~cogseg_ml.backends.base.SegmentationBackend`."""
        return [(self.name, self.model_version)]

    def close(self) -> None:
        """Stop the image-decoding threads and drop cached embeddings."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._embeddings.clear()

    def _autocast(self) -> Any:
        if self.autocast:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    # --- embeddings -----------------------------------------------------------------------------
    def _cached(self, key: str) -> Any:
        hit = self._embeddings.get(key)
        if hit is not None:
            self._embeddings.move_to_end(key)
        return hit

    def _encode(self, keys: Sequence[str], images: Sequence[np.ndarray]) -> list[Any]:
        """Encode images as one batch, cache their embeddings, return them."""
        with torch.inference_mode(), self._autocast():
            embs = self.adapter.encode(images)
        self.encoder_calls += len(images)
        self.encoder_batches += 1
        for key, emb in zip(keys, embs, strict=True):
            self._embeddings[key] = emb
            self._embeddings.move_to_end(key)
        while len(self._embeddings) > self.embedding_cache_size:
            self._embeddings.popitem(last=False)
        return embs

    def embed(self, pixels: np.ndarray, key: str | None = None) -> Any:
        """The embedding of an ``(H, W, 3)`` uint8 RGB image (cached under ``key``).

        A ``(1, C, h, w)`` tensor for SAM 1, a list of feature maps (high resolution first)
        for SAM 2.
        """
        _check_pixels(pixels)
        if key is None:
            key = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        hit = self._cached(key)
        return hit if hit is not None else self._encode([key], [pixels])[0]

    def embed_many(self, images: Sequence[np.ndarray], keys: Sequence[str] | None = None
                   ) -> list[Any]:
        """Embeddings of several images, ``encoder_batch_size`` per encoder call (cached).

        ``keys`` name the images in the cache (default: hashes of their pixels).
        """
        for px in images:
            _check_pixels(px)
        names = list(keys) if keys is not None else [
            hashlib.sha256(np.ascontiguousarray(px).tobytes()).hexdigest() for px in images]
        if len(names) != len(images):
            raise ValidationError(f"embed_many got {len(images)} images but {len(names)} keys")
        out: list[Any] = [self._cached(k) for k in names]
        todo = [i for i, e in enumerate(out) if e is None]
        step = self.encoder_batch_size
        for start in range(0, len(todo), step):
            part = todo[start:start + step]
            for i, emb in zip(part, self._encode([names[i] for i in part],
                                                 [images[i] for i in part]), strict=True):
                out[i] = emb
        return out

    # --- planning: which prompts go on which encoder input -------------------------------------
    def _plan(self, image_key: str, height: int, width: int,
              items: Iterable[tuple[Any, Prompt]]) -> list[_Unit]:
        whole = _Unit(image_key, image_key, height, width, None)
        crops: dict[CropWindow, _Unit] = {}
        for tag, prompt in items:
            window = (crop_window(prompt, height, width, self.crop)
                      if self.crop is not None else None)
            if window is None:
                unit = whole
                local = prompt
            else:
                unit = crops.get(window) or crops.setdefault(window, _Unit(
                    f"{image_key}@{window.tag()}", image_key, height, width, window))
                local = prompt_in_window(prompt, window, height, width)
            unit.tags.append(tag)
            unit.prompts.append(local)
        return ([whole] if whole.tags else []) + list(crops.values())

    # --- decoding prompts on one embedding ------------------------------------------------------
    def _decode_unit(self, unit: _Unit, emb: Any) -> list[MaskResult]:
        """One result per prompt of the unit, in order."""
        w = unit.window
        frame = self.adapter.frame(unit.height if w is None else w.height,
                                   unit.width if w is None else w.width)
        out: list[MaskResult | None] = [None] * len(unit.prompts)
        # One batch per prompt shape (number of points, box or not): SAM takes boxes for all
        # prompts of a batch or none, and padding points would change the answer (its
        # "not a point" embedding is attended to), so prompts are never padded.
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(unit.prompts):
            groups.setdefault((len(p.points), p.box is not None), []).append(i)
        step = self.decoder_batch_size or _cpu_decoder_batch(emb)
        for idx in groups.values():
            for start in range(0, len(idx), step):
                part = idx[start:start + step]
                results = self._decode(emb, [unit.prompts[i] for i in part], frame, unit)
                for i, res in zip(part, results, strict=True):
                    out[i] = res
        return [r for r in out if r is not None]

    def _decode(self, emb: Any, prompts: Sequence[Prompt], frame: ModelFrame, unit: _Unit
                ) -> list[MaskResult]:
        frames = [_frame_prompt(p, frame) for p in prompts]
        dev = self.device
        points = labels = boxes = None
        if len(frames[0][0]):
            points = torch.from_numpy(np.stack([f[0] for f in frames])).to(dev)
            labels = torch.from_numpy(np.stack([f[1] for f in frames]).astype(np.int64)).to(dev)
        if frames[0][2] is not None:
            boxes = torch.from_numpy(np.stack([f[2] for f in frames])).to(dev)  # type: ignore[misc]
        with torch.inference_mode(), self._autocast():
            low_res, iou = self.adapter.decode(emb, points, labels, boxes)
            self.decoder_calls += 1
            iou = iou.float()
            best = iou.argmax(dim=1)
            rows = torch.arange(len(frames), device=iou.device)
            chosen = low_res[rows, best][:, None]
            scores = iou[rows, best].clamp(0, 1).cpu().tolist()
            # Upscaled a few at a time: full-size float logits of many prompts on a large
            # image would not fit in memory at once.
            per_call = max(1, UPSCALE_PIXELS // max(1, frame.height * frame.width))
            rles = []
            for i in range(0, len(frames), per_call):
                logits = self.adapter.upscale(chosen[i:i + per_call], frame)
                masks = (logits > self.mask_threshold).cpu().numpy()
                if unit.window is not None:
                    masks = paste(masks, unit.window, unit.height, unit.width)
                rles += encode(masks)
        return [MaskResult(segments=(ScoredMask(float(s), r),), height=unit.height,
                           width=unit.width, backend=self.name, model_version=self.model_version)
                for s, r in zip(scores, rles, strict=True)]

    # --- one image, directly ------------------------------------------------------------------
    def segment_image(self, pixels: np.ndarray, prompts: Sequence[Prompt],
                      key: str | None = None) -> list[MaskResult]:
        """All prompts on one image (decoder batches as in :meth:`run`); results in order.

        Safe to call from several threads (calls take turns).
        """
        _check_pixels(pixels)
        h, w = int(pixels.shape[0]), int(pixels.shape[1])
        if key is None:
            key = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        out: list[MaskResult | None] = [None] * len(prompts)
        with self._lock:
            for unit in self._plan(key, h, w, enumerate(prompts)):
                emb = self._cached(unit.key)
                if emb is None:
                    emb = self._encode([unit.key], [unit.pixels(pixels)])[0]
                for i, res in zip(unit.tags, self._decode_unit(unit, emb), strict=True):
                    out[i] = res
        return [r for r in out if r is not None]

    # --- the backend interface -----------------------------------------------------------------
    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        """See :class:`~cogseg_ml.backends.base.SegmentationBackend`.

        Jobs are read in windows of ``RUN_WINDOW`` and grouped by image within each, so all
        prompts of an image that arrive together share one embedding and decoder batches.
        """
        it = iter(jobs)
        while window := list(itertools.islice(it, RUN_WINDOW)):
            yield from self._run_window(window)

    def _decoder_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.decode_workers,
                                            thread_name_prefix="cogseg-sam-decode")
        return self._pool

    def _run_window(self, jobs: Sequence[BackendJob]) -> Iterator[BackendOutcome]:
        by_image: OrderedDict[str, list[BackendJob]] = OrderedDict()
        for job in jobs:
            by_image.setdefault(job.image_key, []).append(job)
        units: list[_Unit] = []
        for key, group in by_image.items():
            units += self._plan(key, group[0].height, group[0].width,
                                ((j, j.request.prompt) for j in group))
        left = Counter(u.image_key for u in units)  # units still to do, per image
        first_job = {key: group[0] for key, group in by_image.items()}
        cropped = {u.image_key for u in units if u.window is not None}
        loading: dict[str, Future[np.ndarray]] = {}

        def load(unit: _Unit) -> Future[np.ndarray]:
            fut = loading.get(unit.image_key)
            if fut is None:
                job = first_job[unit.image_key]
                # The encoder sees the image at its input size: an image read only whole is
                # decoded no larger than needed for that (crops need the full resolution).
                frame = self.adapter.frame(job.height, job.width)
                reduce_to = None if unit.image_key in cropped else (
                    frame.resized_height, frame.resized_width)
                fut = loading[unit.image_key] = self._decoder_pool().submit(
                    _load_pixels, job, reduce_to)
            return fut

        step = self.encoder_batch_size
        batches = [units[i:i + step] for i in range(0, len(units), step)]
        for k, batch in enumerate(batches):
            for ahead in batches[k:k + 2]:  # this batch's images and the next one's, decoding
                for u in ahead:
                    if u.key not in self._embeddings:
                        load(u)
            ready: list[tuple[_Unit, Any]] = []
            todo: list[tuple[_Unit, np.ndarray]] = []
            for u in batch:
                emb = self._cached(u.key)
                if emb is not None:
                    ready.append((u, emb))
                    continue
                try:
                    todo.append((u, u.pixels(load(u).result())))
                except CogsegError as exc:
                    for job in u.tags:
                        yield BackendOutcome(job, error=exc)
            if todo:
                embs = self._encode([u.key for u, _ in todo], [px for _, px in todo])
                ready += [(u, e) for (u, _), e in zip(todo, embs, strict=True)]
            for u, emb in ready:
                for job, res in zip(u.tags, self._decode_unit(u, emb), strict=True):
                    yield BackendOutcome(job, result=res)
            for u in batch:
                left[u.image_key] -= 1
                if not left[u.image_key]:
                    loading.pop(u.image_key, None)


def _cpu_decoder_batch(embedding: Any) -> int:
    """Prompts per decoder call on the CPU: their copies of the image features <= 32 MiB."""
    tensors = embedding if isinstance(embedding, (list, tuple)) else [embedding]
    per_prompt = int(sum(t.numel() * t.element_size() for t in tensors))
    return max(1, min(CPU_DECODER_BATCH_MAX, CPU_DECODER_BYTES // max(1, per_prompt)))


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValidationError(f"pixels must be (H, W, 3) uint8 RGB, got {pixels.shape} "
                              f"{pixels.dtype}")


def _load_pixels(job: BackendJob, reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    """The job's image as ``(H, W, 3)`` uint8 RGB, decoded as the dataset and labeler do.

    With ``reduce_to`` (the model input's ``(h, w)`` for this image), a large JPEG is decoded
    reduced, no smaller than that (:func:`~cogseg_ml.image_decode.decode_array_reduced`): the
    encoder resizes to its input anyway, and masks come back at the full size regardless.
    """
    data = job.load_image()
    if reduce_to is None:
        pixels = decode_array(data, job.request.file)
        size = (int(pixels.shape[0]), int(pixels.shape[1]))
    else:
        pixels, size = decode_array_reduced(data, *reduce_to, job.request.file)
    if size != (job.height, job.width):
        raise FileValidationError(f"file {job.request.file.describe()} decodes to "
                                  f"{size[1]}x{size[0]} pixels, but its size was "
                                  f"given as {job.width}x{job.height}")
    return pixels
