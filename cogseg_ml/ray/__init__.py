"""Labelling beyond one machine, on Ray Data (the ``ray`` extra).

The same read-through store, backends and COCO writer as
:class:`~cogseg_ml.labeler.SegmentationLabeler`, run by an actor pool::

    import ray
    from cogseg_ml.ray import label_dataset, prompts_from_records, write_coco

    ray.init()                                  # a laptop; on a cluster: ray.init("auto")
    prompts = prompts_from_records("prompts.jsonl")
    results = label_dataset(prompts, config, actors=8).materialize()
    results.write_parquet("labels/")            # or feed training
    write_coco(results, "labels.json")

* :func:`label_dataset` (around the callable class :class:`PromptLabeler`) labels a Dataset of
  prompt rows (:data:`PROMPT_SCHEMA`) and returns result rows (:data:`RESULT_SCHEMA`): one per
  segment, with its RLE, score, provenance and image size, or one per failure with its reason.
* Backends: the API (:class:`ApiSpec` or a :class:`~cogseg_ml.config.CdfConfig`: many jobs in
  flight per actor), a local model on GPU actors (:class:`LocalModelSpec` with ``num_gpus``),
  or the fallback of both (:class:`FallbackSpec`).
* Outputs: :func:`write_coco` (the labeler's COCO file) and :func:`import_results` (into a
  mask cache, so the dataset reads the masks without running a job).
* Prompt rows: :func:`prompts_from_records` (JSON Lines), :func:`prompts_from_coco` (COCO
  boxes), :func:`prompts_from_annotations` (CDF annotations), :func:`prompt_dataset` (samples).
"""

from __future__ import annotations

from cogseg_ml.backends.base import require_extra

require_extra("ray.data", "ray", "Ray Data labelling helpers")
require_extra("pyarrow", "ray", "Ray Data labelling helpers")

# The names below need the extra: imported after the check, so a missing extra is one line.

from cogseg_ml.ray.backend_specs import (
    ApiSpec,
    BackendSpec,
    FallbackSpec,
    LocalModelSpec,
)
from cogseg_ml.ray.batch_labeler import PromptLabeler
from cogseg_ml.ray.outputs import Results, import_results, write_coco
from cogseg_ml.ray.pipeline import label_dataset
from cogseg_ml.ray.prompt_rows import (
    prompt_dataset,
    prompt_rows,
    prompts_from_annotations,
    prompts_from_coco,
    prompts_from_records,
)
from cogseg_ml.ray.schema import FAILED, OK, PROMPT_SCHEMA, RESULT_SCHEMA

__all__ = ["FAILED", "OK", "PROMPT_SCHEMA", "RESULT_SCHEMA", "ApiSpec", "BackendSpec",
           "FallbackSpec", "LocalModelSpec", "PromptLabeler", "Results", "import_results",
           "label_dataset", "prompt_dataset", "prompt_rows", "prompts_from_annotations",
           "prompts_from_coco", "prompts_from_records", "write_coco"]
