"""Canonical fingerprints of a segmentation request (pure).

A cached result answers only for exactly the same question: the same CDF cluster (``origin``,
scheme and host of the base URL), the same project, the same file (and the same version of it),
the same prompt and the same backend with the same model version. So an API result never
answers for a local-model result, the same project name on two clusters (or an emulator) never
shares an entry, and a re-uploaded file misses.

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
from urllib.parse import urlsplit

from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import FileRef, Prompt

__all__ = ["CacheKey", "canonical_file", "canonical_prompt", "file_identity", "file_key",
           "origin_of"]

KEY_FORMAT_VERSION = 2  # 2: the cluster's origin is part of every key
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


def origin_of(base_url: str) -> str:
    """``scheme://host[:port]`` of a base URL, lower-cased: the cluster's identity."""
    parts = urlsplit(base_url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def file_identity(origin: str, project: str, ref: FileRef) -> str:
    """A stable string naming one file of one project on one cluster (no version)."""
    return json.dumps([origin, project, canonical_file(ref)], separators=(",", ":"),
                      ensure_ascii=False)


def file_key(origin: str, project: str, ref: FileRef, version: str | int | None) -> str:
    """The identity plus ``@version`` (``@`` alone when the version is unknown)."""
    return f"{file_identity(origin, project, ref)}@{'' if version is None else version}"


@dataclass(frozen=True)
class CacheKey:
    """What a cached result answers for.

    Args:
        project: the CDF project (or any namespace for local files).
        origin: the cluster, ``scheme://host[:port]`` of the base URL (see :func:`origin_of`);
            empty for local files.
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
    origin: str = ""

    def __post_init__(self) -> None:
        if not self.project:
            raise ValidationError("CacheKey.project must not be empty")
        if not self.backend:
            raise ValidationError("CacheKey.backend must not be empty")
        if not isinstance(self.file, FileRef) or not isinstance(self.prompt, Prompt):
            raise ValidationError("CacheKey needs a FileRef and a Prompt")

    def canonical(self) -> dict[str, Any]:
        """The JSON-ready canonical form that is hashed."""
        return {"v": KEY_FORMAT_VERSION, "origin": self.origin, "project": self.project,
                "file": canonical_file(self.file),
                "fileVersion": None if self.file_version is None else str(self.file_version),
                "prompt": canonical_prompt(self.prompt), "backend": self.backend,
                "model": self.model_version}

    @property
    def file_key(self) -> str:
        """A stable string for the file alone (cluster, project, identity, version)."""
        return file_key(self.origin, self.project, self.file, self.file_version)

    def fingerprint(self) -> str:
        """SHA-256 hex of the canonical JSON: the cache's primary key (computed once)."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
