"""The callable class Ray Data runs as an actor pool: prompt rows in, result rows out.

Each actor holds one :class:`~cogseg_ml.labeler.SegmentationLabeler`'s parts: its read-through
store (one segmentation session per process, the mask cache and image store on the actor's
local disk), its quality controls and its backend. A batch's images are fetched together, the
prompts whose answers the cache holds (under the preferred backend, the labeler's rule) are not
segmented again, the rest go to the backend, and every answer is stored before the batch's rows
are returned: an actor that dies loses at most the jobs in flight, and Ray's retry of its
batches reads the stored answers back.

``__call__`` is a coroutine, so Ray runs several batches in one actor at once
(``batches_in_flight`` of them, each with ``concurrency`` jobs in flight on the API); a local
model serves one batch at a time (see :mod:`cogseg_ml.ray.backend_specs`).

Nothing a row holds can stop the pipeline: a bad file reference, a bad prompt, an unknown
category, a missing file, a failed job each come back as a row with ``status="failed"`` and the
reason. When CDF cannot be reached, the credentials are refused, or the Vision API is retired
(and no local model stands behind it), the actor notices once and fails the rows that follow at
once with that reason, without asking again, for ``recheck_s`` (for good when retired).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import numbers
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa  # type: ignore[import-untyped]

from cogseg_ml.cache.cache_keys import canonical_prompt
from cogseg_ml.cache.mask_cache import CachedResult, MaskCache
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import (
    ApiRetiredError,
    CogsegError,
    ValidationError,
    ends_the_run,
    failure_reason,
)
from cogseg_ml.image_decode import check_declared_size
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.ray.backend_specs import BackendSpec, build_backend
from cogseg_ml.ray.schema import FAILED, OK, RESULT_SCHEMA, file_of_row, file_row
from cogseg_ml.samples import Category, CategoryTable
from cogseg_ml.store import ImageRecord

__all__ = ["PromptLabeler"]

_log = logging.getLogger("cogseg_ml.ray")
_INSTANCE_KEYS = ("points", "box", "boundingBox", "category", "category_id")


@dataclass
class _Item:
    """One instance of a row: its prompt (or why it has none) and, once run, its answer."""

    k: int | None
    prompt: Prompt | None = None
    category: str | None = None
    category_id: int | None = None
    error: str | None = None
    result: CachedResult | None = None
    from_cache: bool = False


@dataclass
class _Row:
    ref: FileRef | None
    image_id: int | None
    declared: tuple[int, int] | None
    items: list[_Item] = field(default_factory=list)
    record: ImageRecord | None = None


def _int_or_none(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not float(value).is_integer():
        raise ValidationError(f"{what} must be an integer, got {value!r}")
    return int(float(value))


class PromptLabeler:
    """Label batches of prompt rows: the callable class for ``Dataset.map_batches``.

    Use it with ``batch_format="pyarrow"`` and ``compute=ray.data.ActorPoolStrategy(...)``;
    :func:`~cogseg_ml.ray.pipeline.label_dataset` does that for you.

    Args:
        backend: an :class:`~cogseg_ml.ray.backend_specs.ApiSpec`,
            :class:`~cogseg_ml.ray.backend_specs.LocalModelSpec` or
            :class:`~cogseg_ml.ray.backend_specs.FallbackSpec`, a
            :class:`CdfConfig` (the API), or a ready backend (pickled to each actor).
        config: the CDF connection images are downloaded from, when the backend has none
            (a local model).
        cache: the actor's mask cache folder on its node's local disk (default: the user
            cache folder, or ``COGSEG_CACHE_DIR``); actors of one node share it.
        categories: the classes (as the labeler takes them); a row naming another one fails.
            ``None``: any category is taken.
        keep, min_score, min_area: the labeler's quality controls; they set ``kept``.
        concurrency: jobs in flight per batch on the API.
        batches_in_flight: batches one actor works on at once.
        download_workers: threads downloading images per actor.
        recheck_s: after CDF was found unreachable (or the credentials refused), how long
            the actor fails rows at once before asking again.
    """

    def __init__(self, backend: BackendSpec, *, config: CdfConfig | None = None,
                 cache: str | Path | None = None,
                 categories: Sequence[str | Category | Mapping[str, Any]] | None = None,
                 keep: Literal["best", "all"] = "best", min_score: float = 0.0,
                 min_area: int = 0, concurrency: int = 32, batches_in_flight: int = 4,
                 download_workers: int = 8, recheck_s: float = 60.0) -> None:
        check_options(concurrency=concurrency, batches_in_flight=batches_in_flight,
                      recheck_s=recheck_s)
        self.table = None if categories is None else CategoryTable.build(categories)
        self.labeler = SegmentationLabeler(
            build_backend(backend, concurrency), config=config, cache=MaskCache(cache),
            categories=categories, keep=keep, min_score=min_score, min_area=min_area,
            concurrency=concurrency, progress=False, download_workers=download_workers)
        self.store = self.labeler.store
        self.recheck_s = recheck_s
        self._gate = asyncio.Semaphore(batches_in_flight)
        self._fatal: tuple[float, CogsegError] | None = None
        self._fatal_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PromptLabeler(backend={self.labeler.backend!r}, cache={self.store.cache!r})"

    async def __call__(self, batch: pa.Table) -> pa.Table:
        """Label one batch (a ``pyarrow.Table`` of prompt rows) off the event loop."""
        async with self._gate:
            return await asyncio.to_thread(self.label_table, batch)

    def label_table(self, batch: pa.Table) -> pa.Table:
        """:meth:`label_rows` on a ``pyarrow.Table``, as a table of
        :data:`~cogseg_ml.ray.schema.RESULT_SCHEMA`."""
        return pa.Table.from_pylist(self.label_rows(batch.to_pylist()), schema=RESULT_SCHEMA)

    def label_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Result rows for prompt rows (one per segment or failure; see the schema)."""
        parsed = [self._parse(r) for r in rows]
        live = [p for p in parsed if p.ref is not None and any(it.prompt for it in p.items)]
        try:
            self._segment(live)
        except CogsegError as exc:  # e.g. the cache's disk is full: this batch, not the run
            _log.warning("a batch of %d rows failed: %s", len(rows), exc)
            self._fail_open(live, failure_reason(exc))
        except Exception as exc:  # never a crashed pipeline: the rows say what happened
            _log.exception("a batch of %d rows failed unexpectedly", len(rows))
            self._fail_open(live, failure_reason(exc))
        out: list[dict[str, Any]] = []
        for p in parsed:
            for it in p.items:
                out.extend(self._result_rows(p, it))
        return out

    # --- reading rows ------------------------------------------------------------------------
    def _parse(self, row: Mapping[str, Any]) -> _Row:
        try:
            ref = file_of_row(row.get("file"))
        except (CogsegError, TypeError, ValueError) as exc:
            bad = _Row(None, None, None)
            bad.items.append(_Item(None, error=f"the row's file: {failure_reason(exc)}"))
            return bad
        p = _Row(ref, None, None)
        try:
            p.image_id = _int_or_none(row.get("image_id"), "image_id")
            h = _int_or_none(row.get("height"), "height")
            w = _int_or_none(row.get("width"), "width")
            p.declared = (h, w) if h is not None and w is not None else None
        except ValidationError as exc:
            p.items.append(_Item(None, error=failure_reason(exc)))
            return p
        raws = row.get("instances")
        if raws is None:
            top = {k: row.get(k) for k in _INSTANCE_KEYS}
            raws = [top] if any(top[k] is not None for k in ("points", "box", "boundingBox")) \
                else []
        if isinstance(raws, (str, bytes, Mapping)) or not isinstance(raws, Sequence) or \
                not raws:
            p.items.append(_Item(None, error=f"ValidationError: the row of {ref.describe()} "
                                 "has no instances (points and/or a box) to segment"))
            return p
        for k, raw in enumerate(raws):
            p.items.append(self._instance(k, raw))
        return p

    def _instance(self, k: int, raw: Any) -> _Item:
        item = _Item(k)
        try:
            if not isinstance(raw, Mapping):
                raise ValidationError(f"instance {k} is not an object with points and/or a "
                                      f"box: {raw!r}")
            cat = raw.get("category")
            item.category = None if cat is None else str(cat)
            item.category_id = _int_or_none(raw.get("category_id"), f"instance {k} category_id")
            if raw.get("box") is not None and raw.get("boundingBox") is not None:
                raise ValidationError(f"instance {k} has both 'box' and 'boundingBox'")
            box = raw.get("box") if raw.get("box") is not None else raw.get("boundingBox")
            item.prompt = Prompt.of(raw.get("points"), box)
            if self.table is not None:
                self.table.id_of(item.category, f"instance {k}")
        except (CogsegError, TypeError, ValueError) as exc:
            item.prompt, item.error = None, failure_reason(exc)
        return item

    # --- segmenting --------------------------------------------------------------------------
    def _fatal_now(self) -> CogsegError | None:
        with self._fatal_lock:
            if self._fatal is not None and time.monotonic() >= self._fatal[0]:
                self._fatal = None  # time to ask again
            return None if self._fatal is None else self._fatal[1]

    def _remember(self, error: CogsegError) -> None:
        """A run-ending error: rows fail at once with it (for good when the API is retired)."""
        until = math.inf if isinstance(error, ApiRetiredError) else \
            time.monotonic() + self.recheck_s
        with self._fatal_lock:
            first = self._fatal is None
            self._fatal = (until, error)
        if first:
            when = "from now on" if until == math.inf else f"for {self.recheck_s:.0f} s"
            _log.warning("%s; this actor fails its rows at once %s (re-run to resume: stored "
                         "answers are not segmented again)", error, when)

    def _segment(self, rows: list[_Row]) -> None:
        fatal = self._fatal_now()
        if fatal is not None:
            self._fail_open(rows, failure_reason(fatal))
            return
        refs = [p.ref for p in rows if p.ref is not None]
        recs = dict(zip(refs, self.store.records(refs, fresh=True), strict=True))
        todo: list[tuple[ImageRecord, Prompt, _Item]] = []
        cached: list[tuple[ImageRecord, list[_Item]]] = []
        for p in rows:
            assert p.ref is not None
            rec = recs[p.ref]
            if isinstance(rec, CogsegError):
                if ends_the_run(rec):
                    self._remember(rec)
                self._fail_open([p], failure_reason(rec))
                continue
            p.record = rec
            if p.declared is not None:  # e.g. read from a COCO file
                check_declared_size(p.ref, p.declared, (rec.height, rec.width))
            items = [it for it in p.items if it.prompt is not None and it.error is None]
            prompts = [it.prompt for it in items if it.prompt is not None]
            hits = self.store.present(rec, prompts, preferred_only=True)
            for it, hit in zip(items, hits, strict=True):
                if hit:
                    it.from_cache = True
                else:
                    assert it.prompt is not None
                    todo.append((rec, it.prompt, it))
            if any(hits):
                cached.append((rec, [it for it, hit in zip(items, hits, strict=True) if hit]))
        if todo:
            self._run(todo)
        for rec, items in cached:
            found = self.store.lookup(rec, [it.prompt for it in items if it.prompt is not None])
            for it, res in zip(items, found, strict=True):
                if res is None:  # evicted between the check and now: report, never guess
                    it.error = "result missing from the cache (evicted?)"
                else:
                    it.result = res

    def _run(self, todo: list[tuple[ImageRecord, Prompt, _Item]]) -> None:
        stream = self.store.segment(todo)
        ended: CogsegError | None = None
        try:
            for it, _, res, error in stream:
                if res is not None:
                    it.result = res
                    continue
                it.error = failure_reason(error or CogsegError("the backend gave no result"))
                if error is not None and ends_the_run(error):
                    ended = error
                    break
        finally:
            stream.close()  # stores every answer that arrived
        if ended is not None:
            self._remember(ended)
            for _, _, it in todo:
                if it.result is None and it.error is None:
                    it.error = failure_reason(ended)

    @staticmethod
    def _fail_open(rows: list[_Row], reason: str) -> None:
        for p in rows:
            for it in p.items:
                if it.error is None and it.result is None:
                    it.error = reason

    # --- writing rows ------------------------------------------------------------------------
    def _result_rows(self, p: _Row, it: _Item) -> list[dict[str, Any]]:
        rec = p.record
        base: dict[str, Any] = dict.fromkeys(RESULT_SCHEMA.names)
        base.update(
            file=None if p.ref is None else file_row(p.ref), image_id=p.image_id,
            instance=it.k, category=it.category, category_id=it.category_id,
            prompt=None if it.prompt is None else json.dumps(canonical_prompt(it.prompt),
                                                             separators=(",", ":")))
        if rec is not None:
            base.update(height=rec.height, width=rec.width, file_key=rec.file_key,
                        file_name=rec.file_name, digest=rec.digest)
        res = it.result
        if res is None:
            base.update(status=FAILED, kept=False, reason=it.error or "no result")
            return [base]
        base.update(status=OK, height=res.height, width=res.width, backend=res.backend,
                    model_version=res.model_version, job_id=res.job_id,
                    from_cache=it.from_cache, kept=False)
        if not res.segments:
            self.labeler.select(res)  # counted as the labeler counts it
            return [base]
        kept = set(self.labeler.select(res))
        return [{**base, "segment": i, "kept": i in kept, "rle": seg.rle["counts"],
                 "score": float(seg.score)} for i, seg in enumerate(res.segments)]


def check_options(*, concurrency: int, batches_in_flight: int, recheck_s: float) -> None:
    """Refuse bad actor options with a :class:`ValidationError` naming them."""
    for name, v in (("concurrency", concurrency), ("batches_in_flight", batches_in_flight)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValidationError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(recheck_s, bool) or not isinstance(recheck_s, (int, float)) or \
            not recheck_s >= 0:
        raise ValidationError(f"recheck_s must be a number of seconds >= 0, got {recheck_s!r}")
