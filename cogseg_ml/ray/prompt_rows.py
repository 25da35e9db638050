"""Prompt rows from the sources the labeler reads: samples, JSON Lines records, COCO boxes and
CDF annotations, as plain rows or as a Ray Dataset (one image per row, see
:mod:`cogseg_ml.ray.schema`).

Image ids are drawn as the labeler draws them (:func:`~cogseg_ml.samples.image_ids`: a COCO
input's own, else numbered in input order), so a Ray run's COCO file matches the labeler's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa  # type: ignore[import-untyped]
import ray.data

from cogseg_ml.errors import ValidationError
from cogseg_ml.ray.schema import PROMPT_SCHEMA, file_row
from cogseg_ml.samples import (
    BadPromptPolicy,
    Instance,
    Sample,
    image_ids,
    load_records,
    samples_from_annotations,
    samples_from_coco,
    samples_from_records,
)

if TYPE_CHECKING:
    from cogseg_ml.api.client import SegmentationClient

__all__ = ["prompt_dataset", "prompt_rows", "prompts_from_annotations", "prompts_from_coco",
           "prompts_from_records"]

ROWS_PER_BLOCK = 64


def _instance_row(inst: Instance) -> dict[str, Any]:
    p, box = inst.prompt, inst.prompt.box
    return {"points": [[pt.x, pt.y, float(pt.label)] for pt in p.points] or None,
            "box": None if box is None else [box.x_min, box.y_min, box.x_max, box.y_max],
            "category": inst.category, "category_id": inst.category_id}


def prompt_rows(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """One prompt row per sample, with its image id (and, from COCO, its declared size).

    Raises:
        ValidationError: something other than a :class:`~cogseg_ml.samples.Sample`.
    """
    def checked() -> Iterable[Sample]:
        for i, s in enumerate(samples):
            if not isinstance(s, Sample):
                raise ValidationError(f"samples[{i}] is a {type(s).__name__}, not a Sample")
            yield s

    rows = []
    for s, image_id in image_ids(checked()):
        meta = s.meta if isinstance(s.meta, Mapping) else {}
        rows.append({"file": file_row(s.file),
                     "instances": [_instance_row(inst) for inst in s.instances],
                     "image_id": image_id, "height": meta.get("height"),
                     "width": meta.get("width")})
    return rows


def prompt_dataset(samples: Iterable[Sample], *, rows_per_block: int = ROWS_PER_BLOCK
                   ) -> ray.data.Dataset:
    """A Ray Dataset of prompt rows (:data:`~cogseg_ml.ray.schema.PROMPT_SCHEMA`),
    ``rows_per_block`` images per block (blocks are what actors are handed).

    Raises:
        ValidationError: ``rows_per_block`` is not a positive integer, or a sample is not one.
    """
    if isinstance(rows_per_block, bool) or not isinstance(rows_per_block, int) \
            or rows_per_block < 1:
        raise ValidationError(f"rows_per_block must be a positive integer, got "
                              f"{rows_per_block!r}")
    table = pa.Table.from_pylist(prompt_rows(samples), schema=PROMPT_SCHEMA)
    blocks = [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)]
    return ray.data.from_arrow(blocks or [table])


def prompts_from_records(records: str | Path | Sequence[Mapping[str, Any]], *,
                         on_bad_prompt: BadPromptPolicy = "fail",
                         rows_per_block: int = ROWS_PER_BLOCK) -> ray.data.Dataset:
    """Prompt rows from a JSON Lines (or JSON list) prompts file, or from its records.

    The records are read as the labeler reads them (:func:`~cogseg_ml.samples.load_records`,
    :func:`~cogseg_ml.samples.samples_from_records`: one row per file, its records' instances
    in input order); ``on_bad_prompt`` as there.
    """
    recs = load_records(records) if isinstance(records, (str, Path)) else records
    return prompt_dataset(samples_from_records(recs, on_bad_prompt=on_bad_prompt),
                          rows_per_block=rows_per_block)


def prompts_from_coco(path: str | Path, *, file_key: str = "file_name",
                      on_bad_prompt: BadPromptPolicy = "fail",
                      rows_per_block: int = ROWS_PER_BLOCK) -> ray.data.Dataset:
    """Prompt rows from a COCO detection file's boxes (its image and category ids kept), as
    :func:`~cogseg_ml.samples.samples_from_coco` reads them."""
    return prompt_dataset(samples_from_coco(path, file_key=file_key,
                                            on_bad_prompt=on_bad_prompt),
                          rows_per_block=rows_per_block)


def prompts_from_annotations(client: SegmentationClient, file_ids: Iterable[int], *,
                             status: str | None = "approved", creating_app: str | None = None,
                             on_bad_prompt: BadPromptPolicy = "fail",
                             rows_per_block: int = ROWS_PER_BLOCK) -> ray.data.Dataset:
    """Prompt rows from CDF ``images.ObjectDetection`` boxes, as
    :func:`~cogseg_ml.samples.samples_from_annotations` reads them."""
    return prompt_dataset(samples_from_annotations(client, file_ids, status=status,
                                                   creating_app=creating_app,
                                                   on_bad_prompt=on_bad_prompt),
                          rows_per_block=rows_per_block)
