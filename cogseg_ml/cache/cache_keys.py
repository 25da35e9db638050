"""Canonical fingerprints of a segmentation request (pure).

A cached result answers only for exactly the same question: the same project, the same file
(and the same version of it), the same prompt and the same backend with the same model version.
So an API result never answers for a local-model result, and a re-uploaded file misses.

Canonical form: points are sorted (the API takes them as a set; their order does not change
the answer), coordinates are rounded to 6 decimals (a millionth of the image side: sub-pixel
for any image under 10^6 pixels across), and everything is serialized as compact, sorted JSON
before hashing with SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import FileRef, Prompt

__all__ = ["CacheKey", "canonical_file", "canonical_prompt"]

KEY_FORMAT_VERSION = 1
DECIMALS = 6


def _r(v: float) -> float:
    out = round(float(v), DECIMALS)
    return 0.0 if out == 0 else out  # no "-0.0"


def canonical_file(ref: FileRef) -> dict[str, Any]:
    """``{"id": n}`` | ``{"externalId": s}`` | ``{"instanceId": [space, externalId]}``."""
    if ref.id is not None:
        return {"id": ref.id}
    if ref.external_id is not None:
        return {"externalId": ref.external_id}
    assert ref.instance_id is not None
    return {"instanceId": [ref.instance_id.space, ref.instance_id.external_id]}


def canonical_prompt(prompt: Prompt) -> dict[str, Any]:
    """Sorted, rounded points and the rounded box."""
    points = sorted((_r(p.x), _r(p.y), p.label) for p in prompt.points)
    box = None
    if prompt.box is not None:
        b = prompt.box
        box = [_r(b.x_min), _r(b.y_min), _r(b.x_max), _r(b.y_max)]
    return {"points": [list(p) for p in points], "box": box}


@dataclass(frozen=True)
class CacheKey:
    """What a cached result answers for.

    Args:
        project: the CDF project (or any namespace for local files).
        file: the file reference.
        file_version: a marker that changes when the file does (e.g. its lastUpdatedTime);
            ``None`` when unknown (then a changed file is not noticed).
        prompt: the prompt set.
        backend: ``"cdf-api"``, ``"local-sam"``, ...
        model_version: the backend's model identity (checkpoint hash, API version).
    """

    project: str
    file: FileRef
    prompt: Prompt
    backend: str
    file_version: str | int | None = None
    model_version: str = ""

    def __post_init__(self) -> None:
        if not self.project:
            raise ValidationError("CacheKey.project must not be empty")
        if not self.backend:
            raise ValidationError("CacheKey.backend must not be empty")
        if not isinstance(self.file, FileRef) or not isinstance(self.prompt, Prompt):
            raise ValidationError("CacheKey needs a FileRef and a Prompt")

    def canonical(self) -> dict[str, Any]:
        """The JSON-ready canonical form that is hashed."""
        return {"v": KEY_FORMAT_VERSION, "project": self.project,
                "file": canonical_file(self.file),
                "fileVersion": None if self.file_version is None else str(self.file_version),
                "prompt": canonical_prompt(self.prompt), "backend": self.backend,
                "model": self.model_version}

    @property
    def file_key(self) -> str:
        """A stable string for the file alone (project, identity, version)."""
        return json.dumps([self.project, canonical_file(self.file),
                           None if self.file_version is None else str(self.file_version)],
                          separators=(",", ":"), ensure_ascii=False)

    def fingerprint(self) -> str:
        """SHA-256 hex of the canonical JSON: the cache's primary key (computed once)."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
