"""``label_dataset``: prompt rows in, result rows out, on an actor pool of
:class:`~cogseg_ml.ray.batch_labeler.PromptLabeler`.

Written against Ray Data's current API: the pool is ``compute=ActorPoolStrategy(...)`` and the
actors' resources are ``num_cpus``/``num_gpus`` (no ``concurrency=``, no free-form remote
arguments, both deprecated). Ray restarts an actor that dies and retries its batches, which
then read the answers the actor had stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import ray.data

from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import ValidationError
from cogseg_ml.ray.backend_specs import (
    BackendSpec,
    FallbackSpec,
    LocalModelSpec,
    check_spec,
)
from cogseg_ml.ray.batch_labeler import PromptLabeler, check_options
from cogseg_ml.samples import Category, CategoryTable

__all__ = ["label_dataset"]


def _positive(name: str, value: Any, kinds: tuple[type[int] | type[float], ...] = (int,)
              ) -> None:
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        what = "integer" if kinds == (int,) else "number"
        raise ValidationError(f"{name} must be a positive {what}, got {value!r}")


#: Blocks an actor works on at once. With Ray's default (one), an actor started a block only
#: once every batch of the previous one had finished, so its jobs in flight fell to none at
#: each block's end; with two, the next block's batches start while the other's last ones
#: finish. Not more: two is what Ray queues on an actor by default, so a run's last blocks
#: still spread over the actors.
BLOCKS_PER_ACTOR = 2


def _pool(actors: int | tuple[int, int]) -> ray.data.ActorPoolStrategy:
    """The actor pool; each actor takes :data:`BLOCKS_PER_ACTOR` blocks at once."""
    if isinstance(actors, tuple):
        if len(actors) != 2:
            raise ValidationError(f"actors must be a count or (min, max), got {actors!r}")
        lo, hi = actors
        _positive("actors' min", lo)
        _positive("actors' max", hi)
        if lo > hi:
            raise ValidationError(f"actors (min, max) needs min <= max, got {actors!r}")
        return ray.data.ActorPoolStrategy(
            min_size=lo, max_size=hi, max_concurrent_calls_per_actor=BLOCKS_PER_ACTOR,
            max_tasks_in_flight_per_actor=BLOCKS_PER_ACTOR)
    _positive("actors", actors)
    return ray.data.ActorPoolStrategy(size=actors,
                                      max_concurrent_calls_per_actor=BLOCKS_PER_ACTOR,
                                      max_tasks_in_flight_per_actor=BLOCKS_PER_ACTOR)


def label_dataset(ds: ray.data.Dataset, backend: BackendSpec, *,
                  config: CdfConfig | None = None, cache: str | Path | None = None,
                  categories: Sequence[str | Category | Mapping[str, Any]] | None = None,
                  keep: Literal["best", "all"] = "best", min_score: float = 0.0,
                  min_area: int = 0, actors: int | tuple[int, int] = 1,
                  batch_size: int | None = None, concurrency: int = 32,
                  batches_in_flight: int = 4, num_cpus: float | None = None,
                  num_gpus: float | None = None, download_workers: int = 8,
                  recheck_s: float = 60.0) -> ray.data.Dataset:
    """Label a Ray Dataset of prompt rows; returns the (lazy) Dataset of result rows.

    Args:
        ds: prompt rows (:data:`~cogseg_ml.ray.schema.PROMPT_SCHEMA`, e.g. from
            :func:`~cogseg_ml.ray.prompt_rows.prompts_from_records`, or any dataset
            of such records such as ``ray.data.read_json`` of a prompts file).
        backend: what each actor segments with (see
            :class:`~cogseg_ml.ray.batch_labeler.PromptLabeler`).
        actors: the pool: a fixed size, or ``(min, max)`` for Ray to scale between.
        batch_size: images per batch (default 16 on the API, 8 for a local model). A batch
            is the unit Ray retries, and what a local model encodes together.
        concurrency, batches_in_flight: jobs in flight per batch and batches per actor: an
            actor keeps up to their product of API jobs in flight. An actor works on two
            blocks at once (the next one starts while the last batches of the other finish),
            so with blocks of one batch each at most two batches run at once.
        num_cpus: CPUs reserved per actor (default 0.5 for the API, which waits on the
            network, 1 for a local model).
        num_gpus: GPUs per actor (e.g. 1 for a local model on a GPU node).

    The other arguments are :class:`PromptLabeler`'s. Every bad option is a
    :class:`ValidationError` here, before any actor starts.
    """
    if not isinstance(ds, ray.data.Dataset):
        raise ValidationError(f"ds must be a ray.data.Dataset, got {type(ds).__name__}")
    check_spec(backend)
    check_options(concurrency=concurrency, batches_in_flight=batches_in_flight,
                  recheck_s=recheck_s)
    if keep not in ("best", "all"):
        raise ValidationError(f"keep must be 'best' or 'all', got {keep!r}")
    if not 0.0 <= min_score <= 1.0:
        raise ValidationError(f"min_score must be in [0, 1], got {min_score}")
    if min_area < 0:
        raise ValidationError(f"min_area must be >= 0, got {min_area}")
    if categories is not None:
        CategoryTable.build(categories)
    local = isinstance(backend, (LocalModelSpec, FallbackSpec))
    if isinstance(backend, LocalModelSpec) and config is None:
        raise ValidationError("a LocalModelSpec has no CDF connection: pass "
                              "config=CdfConfig(...) for downloading images")
    if batch_size is None:
        batch_size = 8 if local else 16
    _positive("batch_size", batch_size)
    if num_cpus is None:
        num_cpus = 1.0 if local else 0.5
    _positive("num_cpus", num_cpus, (int, float))
    if num_gpus is not None and (isinstance(num_gpus, bool) or
                                 not isinstance(num_gpus, (int, float)) or num_gpus < 0):
        raise ValidationError(f"num_gpus must be a number >= 0, got {num_gpus!r}")
    kwargs: dict[str, Any] = {
        "config": config, "cache": None if cache is None else str(cache),
        "categories": None if categories is None else list(categories), "keep": keep,
        "min_score": min_score, "min_area": min_area, "concurrency": concurrency,
        "batches_in_flight": batches_in_flight, "download_workers": download_workers,
        "recheck_s": recheck_s}
    return ds.map_batches(PromptLabeler, fn_constructor_args=(backend,),
                          fn_constructor_kwargs=kwargs, batch_format="pyarrow",
                          batch_size=batch_size, compute=_pool(actors), num_cpus=num_cpus,
                          num_gpus=num_gpus)
