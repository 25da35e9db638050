"""OWLv2 through ``transformers``, behind :class:`~cogseg_ml.detect.text_boxes.TextBoxDetector`.

OWLv2 reads one short text query per class (``"a photo of a {class}"`` by default, as in the
published examples; at most the text model's 16 tokens) and scores every box (one per image
patch) against every query: the class score is that probability, and a box's score its best
class score. So for OWLv2 ``box_threshold`` and ``text_threshold`` both apply to the one score
(the higher threshold wins). Images are padded to a square and resized by the processor, so
images of any size batch together; boxes come back in the padded square's frame and are scaled
by the image's longer side, as the processor does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cogseg_ml.detect.detections import RawDetections
from cogseg_ml.errors import ValidationError

__all__ = ["DEFAULT_TEMPLATE", "Owlv2Adapter"]

DEFAULT_TEMPLATE = "a photo of a {}"


class Owlv2Adapter:
    """An ``Owlv2ForObjectDetection`` and its ``Owlv2Processor``."""

    same_size_batches = False

    def __init__(self, model: Any, processor: Any, device: torch.device, model_version: str,
                 template: str = DEFAULT_TEMPLATE) -> None:
        if "{}" not in template:
            raise ValidationError(f"the OWLv2 query template needs a '{{}}' for the class name, "
                                  f"got {template!r}")
        self.family = "owlv2"
        self.device = device
        self.model: Any = model.to(device).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_version = model_version
        self.template = template
        self.max_tokens = int(model.config.text_config.max_position_embeddings)
        self._queries: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"Owlv2Adapter({self.model_version!r}, template={self.template!r})"

    def prompt_texts(self, classes: Sequence[str]) -> list[str]:
        """The text queries sent for ``classes``, one per class."""
        return [self.template.format(c.lower()) for c in classes]

    def _tokens(self, classes: Sequence[str]) -> dict[str, torch.Tensor]:
        key = tuple(classes)
        found = self._queries.get(key)
        if found is not None:
            return found
        texts = self.prompt_texts(classes)
        for name, text in zip(classes, texts, strict=True):
            n = len(self.tokenizer(text)["input_ids"])
            if n > self.max_tokens:
                raise ValidationError(f"class {name!r}: OWLv2 reads queries of at most "
                                      f"{self.max_tokens} tokens, {text!r} has {n}; shorten it")
        enc = self.tokenizer(texts, padding="max_length", max_length=self.max_tokens,
                             return_tensors="pt")
        out = {"input_ids": enc["input_ids"].to(self.device),
               "attention_mask": enc["attention_mask"].to(self.device)}
        if len(self._queries) > 64:
            self._queries.clear()
        self._queries[key] = out
        return out

    def raw(self, images: Sequence[np.ndarray], classes: Sequence[str]) -> list[RawDetections]:
        """Candidate boxes for each image (``(H, W, 3)`` uint8 RGB) and every class."""
        q = self._tokens(classes)
        n = len(images)
        arrays = [px if px.flags.writeable else px.copy() for px in images]
        pix = self.processor.image_processor(images=arrays, return_tensors="pt",
                                             input_data_format="channels_last")
        out = self.model(pixel_values=pix["pixel_values"].to(self.device),
                         input_ids=q["input_ids"].repeat(n, 1),
                         attention_mask=q["attention_mask"].repeat(n, 1))
        probs = out.logits.float().sigmoid()  # (n, Q, C)
        boxes = out.pred_boxes.float()
        result = []
        for i, px in enumerate(images):
            h, w = px.shape[:2]
            side = float(max(h, w))  # boxes are fractions of the padded square
            cx, cy, bw, bh = boxes[i].unbind(-1)
            corners = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2],
                                  dim=-1) * side
            result.append(RawDetections(corners, probs[i].max(dim=-1).values, probs[i]))
        return result
