"""One identity for a model's weights: the digest that goes into ``model_version``.

Used by the local segmenter and the text-to-box detector alike, so that two folders holding
the same weights get the same version (and share cached results), and any changed tensor
gives a new one.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["weights_digest"]


def weights_digest(model: torch.nn.Module, extra: str = "") -> str:
    """SHA-256 (16 hex digits) over a model's tensor names, shapes, dtypes and values.

    ``extra`` (e.g. the preprocessing settings or a tokenizer digest) is hashed too. Scalars
    (a 0-d logit scale, as OWLv2 has) count like any tensor.
    """
    h = hashlib.sha256(extra.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
                 .tobytes())
    return h.hexdigest()[:16]
