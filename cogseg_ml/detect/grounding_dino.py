"""Grounding DINO (and MM-Grounding-DINO / LLMDet) through ``transformers``, behind
:class:`~cogseg_ml.detect.text_boxes.TextBoxDetector`.

The model scores each of its queries (boxes) against every token of one text prompt
(``"valve. pressure gauge. flange."``, see :mod:`cogseg_ml.detect.class_prompts`).
``transformers``' own post-processing names a box by the tokens above ``text_threshold``,
which yields word pieces (``"##ange"``), parts of a phrase (``"gauge"``) or two phrases merged.
Here every class is scored as a whole, from the tokens of its own phrase:

* a box's **class score** for a class is the mean token probability over that phrase's
  tokens (every word of ``"pressure gauge"`` counts, so ``"level gauge"`` and ``"pressure
  gauge"`` are told apart by the word that differs);
* a box's **box score** is its highest token probability over the class phrases (the
  ``"."`` delimiters and special tokens left out), transformers' box score restricted to the
  phrases.

Many classes: the prompt may hold at most the model's ``max_text_len`` tokens (256 for the
published checkpoints); longer class lists are split into several prompts, each run on the
same images, their queries pooled before suppression.

Pure PyTorch: transformers' multi-scale deformable attention runs as ``grid_sample``; no CUDA
extension is built or fetched (``use_kernels`` stays off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cogseg_ml.detect.class_prompts import grounding_prompt, token_spans
from cogseg_ml.detect.detections import RawDetections
from cogseg_ml.errors import ValidationError

__all__ = ["GroundingDinoAdapter", "TextChunk", "class_scores_from_tokens"]


@dataclass(frozen=True)
class TextChunk:
    """One prompt: which classes (indices into the caller's list), its text and tokens."""

    classes: tuple[int, ...]
    text: str
    input_ids: torch.Tensor  # (1, L)
    spans: tuple[tuple[int, ...], ...]  # token positions of each of its classes


def class_scores_from_tokens(token_probs: torch.Tensor, spans: Sequence[Sequence[int]]
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(box_scores (..., Q), class_scores (..., Q, C))`` from token probabilities
    ``(..., Q, L)`` and the token positions of each class phrase (see the module docstring)."""
    cols = [token_probs[..., list(span)].mean(dim=-1) for span in spans]
    class_scores = torch.stack(cols, dim=-1)
    every = sorted({t for span in spans for t in span})
    box_scores = token_probs[..., every].max(dim=-1).values
    return box_scores, class_scores


def _corners(cxcywh: torch.Tensor, width: int, height: int) -> torch.Tensor:
    cx, cy, w, h = cxcywh.unbind(-1)
    scale = torch.tensor([width, height, width, height], dtype=cxcywh.dtype,
                         device=cxcywh.device)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * scale


class GroundingDinoAdapter:
    """A ``GroundingDinoForObjectDetection`` (or ``MMGroundingDinoForObjectDetection``) and its
    ``GroundingDinoProcessor``.

    Images of one call are batched as they are; the detector sends images of one size
    together (:attr:`same_size_batches`), so no image is padded and a batch gives what each
    image gives alone.
    """

    same_size_batches = True

    def __init__(self, family: str, model: Any, processor: Any, device: torch.device,
                 model_version: str) -> None:
        self.family = family
        self.device = device
        self.model: Any = model.to(device).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_version = model_version
        cfg = model.config
        self.max_text_len = int(cfg.max_text_len)
        text_cfg = getattr(cfg, "text_config", None)
        limit = getattr(text_cfg, "max_position_embeddings", None)
        if isinstance(limit, int):
            self.max_text_len = min(self.max_text_len, limit)
        self._chunks: dict[tuple[str, ...], list[TextChunk]] = {}

    def __repr__(self) -> str:
        return f"GroundingDinoAdapter({type(self.model).__name__}, {self.model_version!r})"

    def prompt_texts(self, classes: Sequence[str]) -> list[str]:
        """The text prompt(s) sent for ``classes`` (one unless the list is long)."""
        return [c.text for c in self.chunks(classes)]

    def chunks(self, classes: Sequence[str]) -> list[TextChunk]:
        """The prompts for ``classes``: as few as fit ``max_text_len`` tokens each.

        Raises:
            ValidationError: one class phrase alone is longer than the model reads.
        """
        key = tuple(classes)
        found = self._chunks.get(key)
        if found is not None:
            return found
        out: list[TextChunk] = []
        group: list[int] = []
        for k in range(len(classes)):
            trial = self._chunk(classes, group + [k])
            if trial is not None:
                group.append(k)
                continue
            if not group:
                raise ValidationError(f"class {classes[k]!r} is longer than the "
                                      f"{self.max_text_len} tokens the detector reads")
            done = self._chunk(classes, group)
            assert done is not None
            out.append(done)
            group = [k]
            if self._chunk(classes, group) is None:
                raise ValidationError(f"class {classes[k]!r} is longer than the "
                                      f"{self.max_text_len} tokens the detector reads")
        if group:
            done = self._chunk(classes, group)
            assert done is not None
            out.append(done)
        if len(self._chunks) > 64:
            self._chunks.clear()
        self._chunks[key] = out
        return out

    def _chunk(self, classes: Sequence[str], group: Sequence[int]) -> TextChunk | None:
        names = [classes[k] for k in group]
        prompt = grounding_prompt(names)
        enc = self.tokenizer(prompt.text, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        if len(ids) > self.max_text_len:
            return None
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        spans = token_spans(offsets, prompt.spans, names)
        return TextChunk(tuple(group), prompt.text, torch.tensor([ids], dtype=torch.long),
                         tuple(tuple(s) for s in spans))

    def raw(self, images: Sequence[np.ndarray], classes: Sequence[str]) -> list[RawDetections]:
        """Candidate boxes for each image (``(H, W, 3)`` uint8 RGB) and every class."""
        arrays = [px if px.flags.writeable else px.copy() for px in images]
        pix = self.processor.image_processor(images=arrays, return_tensors="pt",
                                             input_data_format="channels_last")
        pixel_values = pix["pixel_values"].to(self.device)
        pixel_mask = pix["pixel_mask"].to(self.device) if "pixel_mask" in pix else None
        n = len(images)
        per_image: list[list[RawDetections]] = [[] for _ in range(n)]
        for chunk in self.chunks(classes):
            ids = chunk.input_ids.to(self.device).expand(n, -1)
            out = self.model(pixel_values=pixel_values, input_ids=ids,
                             attention_mask=torch.ones_like(ids),
                             token_type_ids=torch.zeros_like(ids), pixel_mask=pixel_mask)
            probs = out.logits.float().sigmoid()  # (n, Q, max_text_len); padding is -inf -> 0
            box_scores, scores = class_scores_from_tokens(probs, chunk.spans)
            full = torch.zeros((*scores.shape[:2], len(classes)), device=scores.device)
            full[..., list(chunk.classes)] = scores
            boxes = out.pred_boxes.float()
            for i, px in enumerate(images):
                h, w = px.shape[:2]
                per_image[i].append(RawDetections(_corners(boxes[i], w, h), box_scores[i],
                                                  full[i]))
        return [RawDetections(torch.cat([r.boxes for r in rs]),
                              torch.cat([r.box_scores for r in rs]),
                              torch.cat([r.class_scores for r in rs])) for rs in per_image]
