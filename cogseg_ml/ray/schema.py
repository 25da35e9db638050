"""The Arrow schemas of prompt rows (what goes in) and result rows (what comes out).

Prompt rows are the records the labeler reads (:func:`~cogseg_ml.samples.samples_from_records`),
one image per row: ``file`` (an internal id, an external id or a mapping with ``id``,
``externalId`` or ``instanceId``), ``instances`` (each with ``points`` ``[[x, y, label], ...]``,
``box`` ``[x_min, y_min, x_max, y_max]``, normalized, ``category`` and, from COCO,
``category_id``), an optional ``image_id`` (the COCO image id) and optional declared
``height``/``width``. A row may also hold one instance at the top level (``points``, ``box``,
``category`` beside ``file``), as a JSON Lines record does.

Result rows hold one segment each: every segment of every answer, with ``kept`` saying whether
the quality controls kept it (``keep``, ``min_score``, ``min_area``); an answer without any
segment is one row with ``segment`` null. A prompt or image that could not be labelled is one
row with ``status`` ``"failed"`` and the ``reason``. ``rle`` is the COCO compressed RLE
``counts`` of a mask of ``height`` x ``width`` (``{"size": [height, width], "counts": rle}``);
``backend``, ``model_version`` and ``job_id`` are its provenance; ``from_cache`` says the
answer was in the actor's cache (no job ran for it in this run); ``file_key`` (the file's
version), ``file_name`` and ``digest`` (the SHA-256 of the image bytes) identify the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from cogseg_ml.prompts import FileRef

__all__ = ["FAILED", "OK", "PROMPT_SCHEMA", "RESULT_SCHEMA", "file_row"]

OK = "ok"
FAILED = "failed"

FILE_TYPE = pa.struct([
    ("id", pa.int64()),
    ("externalId", pa.string()),
    ("instanceId", pa.struct([("space", pa.string()), ("externalId", pa.string())])),
])
INSTANCE_TYPE = pa.struct([
    ("points", pa.list_(pa.list_(pa.float64()))),
    ("box", pa.list_(pa.float64())),
    ("category", pa.string()),
    ("category_id", pa.int64()),
])

PROMPT_SCHEMA = pa.schema([
    ("file", FILE_TYPE),
    ("instances", pa.list_(INSTANCE_TYPE)),
    ("image_id", pa.int64()),
    ("height", pa.int64()),
    ("width", pa.int64()),
])
"""One image per row: the file, its prompts, and (from COCO) its image id and declared size."""

RESULT_SCHEMA = pa.schema([
    ("file", FILE_TYPE),
    ("image_id", pa.int64()),
    ("instance", pa.int32()),
    ("segment", pa.int32()),
    ("status", pa.string()),
    ("kept", pa.bool_()),
    ("reason", pa.string()),
    ("category", pa.string()),
    ("category_id", pa.int64()),
    ("prompt", pa.string()),
    ("rle", pa.string()),
    ("score", pa.float64()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("backend", pa.string()),
    ("model_version", pa.string()),
    ("job_id", pa.int64()),
    ("from_cache", pa.bool_()),
    ("file_key", pa.string()),
    ("file_name", pa.string()),
    ("digest", pa.string()),
])
"""One segment (or one failure) per row; see the module docstring."""


def file_row(ref: FileRef) -> dict[str, Any]:
    """A file reference as the ``file`` struct of both schemas (the unused keys null)."""
    inst = None
    if ref.instance_id is not None:
        inst = {"space": ref.instance_id.space, "externalId": ref.instance_id.external_id}
    return {"id": ref.id, "externalId": ref.external_id, "instanceId": inst}


def file_of_row(value: Any) -> FileRef:
    """The file reference of a row's ``file`` value: an id, an external id or a mapping
    (the null keys of an Arrow struct are ignored).

    Raises:
        ValidationError: not a usable reference.
    """
    if isinstance(value, Mapping):
        value = {k: v for k, v in value.items() if v is not None}
    return FileRef.parse(value)
