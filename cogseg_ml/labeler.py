"""Bootstrap training labels at scale: samples in, a COCO instance-segmentation file out.

:class:`SegmentationLabeler` runs every (image, prompt) through the API with many jobs in
flight, stores each result in the mask cache, and keeps a small manifest on disk (one JSON line
per image, in input order) from which :meth:`~SegmentationLabeler.to_coco` streams the COCO
file. Memory stays flat as the number of images grows; a second run skips what the cache holds,
so a crash or Ctrl-C loses at most the jobs in flight; per-item failures are recorded in the
report, never fatal.

Sharding: ``shard=(i, n)`` keeps the samples whose file key hashes to ``i`` modulo ``n``
(independent of input order), so any distributed engine can run shards; ``cogseg cache merge``
combines their caches, and a run over the merged cache gives the unsharded result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.wire_schema import Annotation
from cogseg_ml.backends.base import SegmentationBackend
from cogseg_ml.backends.resolve import resolve_backend
from cogseg_ml.cache.cache_keys import file_identity
from cogseg_ml.cache.mask_cache import CachedResult, MaskCache
from cogseg_ml.coco_io import LABELS_DESCRIPTION, CocoWriter, file_json
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import (
    CogsegError,
    RunInterrupted,
    ValidationError,
    ends_the_run,
    failure_reason,
)
from cogseg_ml.image_decode import check_declared_size
from cogseg_ml.mask_codec import area, decode, mask_to_polygons
from cogseg_ml.progress import add_total, progress_bar
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Category, CategoryTable, CocoSamples, Sample, image_ids
from cogseg_ml.store import ImageRecord, SegmentStore
from cogseg_ml.version import __version__

__all__ = ["LabelingReport", "SegmentationLabeler", "WriteBackReport", "shard_of"]

CHUNK = 256  # samples per step: images fetched together, manifest written in order
MAX_FAILURES_KEPT = 1000


_log = logging.getLogger("cogseg_ml.labeler")


def shard_of(file_key: str, n: int) -> int:
    """The shard (0..n-1) a file belongs to: stable across runs, machines and input order."""
    return int(hashlib.sha256(file_key.encode("utf-8")).hexdigest()[:12], 16) % n


@dataclass
class LabelingReport:
    """What a labeling run did; ``summary()`` for people, ``as_dict()`` for programs.

    ``samples`` and ``instances`` count what was read; ``from_cache`` the prompts whose
    result was already cached, ``jobs_run`` those answered (and stored) in this run, ``failed``
    those that could not be labelled. ``interrupted`` is the signal's name when the run was
    stopped (``None`` otherwise); :attr:`stored` is then what a re-run will not redo.
    """

    samples: int = 0
    instances: int = 0
    labelled: int = 0
    from_cache: int = 0
    jobs_run: int = 0
    failed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    failure_reasons: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    annotations: int = 0
    missing_at_export: int = 0
    seconds: float = 0.0
    shard: tuple[int, int] | None = None
    interrupted: str | None = None
    not_stored: int = 0  # answers of an interrupted run whose cache write failed

    @property
    def stored(self) -> int:
        """Prompts whose result is in the cache: found there or answered (and stored) now."""
        return self.from_cache + self.jobs_run - self.not_stored

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"samples": self.samples, "instances": self.instances,
                "labelled": self.labelled, "from_cache": self.from_cache,
                "jobs_run": self.jobs_run, "stored": self.stored, "failed": self.failed,
                "dropped": dict(self.dropped), "failure_reasons": dict(self.failure_reasons),
                "failures": self.failures, "annotations": self.annotations,
                "missing_at_export": self.missing_at_export,
                "seconds": round(self.seconds, 3), "shard": self.shard,
                "interrupted": self.interrupted}

    def summary(self) -> str:
        """A few lines a person can read.

        A run stopped by a signal (:attr:`interrupted`) starts with what is finished and
        stored, e.g. ``stopped by SIGINT: 20 finished and stored; run the same command
        again to resume``, then what was read, finished and failed so far.
        """
        if self.interrupted is not None:
            lines = [f"stopped by {self.interrupted}: {self.stored} finished and stored; run "
                     "the same command again to resume",
                     f"{self.samples} images, {self.instances} prompts read: {self.stored} "
                     f"finished ({self.from_cache} from cache, {self.jobs_run - self.not_stored}"
                     f" jobs run), {self.failed} failed, in {self.seconds:.1f} s"]
            if self.not_stored:
                lines.append(f"  {self.not_stored} answers could not be stored (cache write "
                             "failed): they are segmented again on resume")
            return "\n".join(lines + self._failure_lines())
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        lines = [f"{self.samples} images, {self.instances} prompts: {self.labelled} labelled "
                 f"({self.from_cache} from cache, {self.jobs_run} jobs run), "
                 f"{self.failed} failed, in {self.seconds:.1f} s",
                 f"segments kept: {self.annotations}; dropped: {drops}"]
        if self.missing_at_export:
            lines.append(f"  {self.missing_at_export} results left the cache before the COCO "
                         "file was written (evicted?): re-run label() to segment them again")
        return "\n".join(lines + self._failure_lines())

    def _failure_lines(self) -> list[str]:
        return [f"  failed x{n}: {reason}" for reason, n in self.failure_reasons.most_common(5)]


@dataclass
class WriteBackReport:
    """What :meth:`SegmentationLabeler.write_back` did."""

    created: int = 0
    already_present: int = 0
    skipped: int = 0


class SegmentationLabeler:
    """Label samples through the CDF API into the cache, then write COCO.

    Args:
        backend: a :class:`CdfConfig` or :class:`SegmentationClient` (the API), or any
            :class:`~cogseg_ml.backends.base.SegmentationBackend` (a local model, a fallback).
        config: the CDF connection for images and write-back, when ``backend`` has none.
        cache: a :class:`MaskCache` or a path for one (default location when ``None``).
        categories: the classes: names (ids 1, 2, ... in that order), :class:`Category`
            objects or COCO ``{"id", "name"}`` dicts; by default the samples' own (a COCO
            input's ids are kept). Instances without a category get the ``"object"`` class;
            a sample naming a category not listed is a :class:`ValidationError` (raised when
            the sample is read, before its jobs run). See
            :class:`~cogseg_ml.samples.CategoryTable`.
        min_score: drop segments scoring below this.
        min_area: drop segments with fewer pixels than this.
        keep: ``"best"`` keeps the highest-scoring segment of each prompt, ``"all"`` every one.
        concurrency: jobs in flight.
        shard: ``(i, n)``: label only shard ``i`` of ``n``.
        workdir: where the manifest goes (default: a temporary folder).
        progress: show a progress bar (done, failed, rate, ETA).
    """

    def __init__(self, backend: CdfConfig | SegmentationClient | SegmentationBackend, *,
                 cache: MaskCache | str | Path | None = None,
                 categories: Sequence[str | Category | Mapping[str, Any]] | None = None,
                 min_score: float = 0.0,
                 min_area: int = 0, keep: Literal["best", "all"] = "best",
                 concurrency: int = 32, shard: tuple[int, int] | None = None,
                 workdir: str | Path | None = None, progress: bool = True,
                 download_workers: int = 8, config: CdfConfig | None = None) -> None:
        if keep not in ("best", "all"):
            raise ValidationError(f"keep must be 'best' or 'all', got {keep!r}")
        if shard is not None:
            i, n = shard
            if not (isinstance(n, int) and n >= 1 and isinstance(i, int) and 0 <= i < n):
                raise ValidationError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
        if not 0.0 <= min_score <= 1.0:
            raise ValidationError(f"min_score must be in [0, 1], got {min_score}")
        if min_area < 0:
            raise ValidationError(f"min_area must be >= 0, got {min_area}")
        self.backend, self.config = resolve_backend(backend, config, concurrency)
        self.cache = cache if isinstance(cache, MaskCache) else MaskCache(cache)
        self.store = SegmentStore(self.config, self.cache, self.backend,
                                  download_workers=download_workers)
        self.categories = list(categories) if categories is not None else None
        self._given = None if categories is None else CategoryTable.build(self.categories)
        self.category_table: CategoryTable | None = None
        self.min_score = min_score
        self.min_area = min_area
        self.keep = keep
        self.concurrency = concurrency
        self.shard = shard
        self.progress = progress
        self.download_workers = download_workers
        if workdir is None:  # removed when the labeler is garbage-collected or at exit
            workdir = tempfile.mkdtemp(prefix="cogseg-labeler-")
            weakref.finalize(self, shutil.rmtree, workdir, ignore_errors=True)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.manifest = self.workdir / "manifest.jsonl"
        self.report = LabelingReport(shard=shard)
        self.chunk_size = CHUNK

    def __repr__(self) -> str:
        return (f"SegmentationLabeler(project={self.config.project!r}, keep={self.keep!r}, "
                f"min_score={self.min_score}, min_area={self.min_area}, shard={self.shard})")

    def close(self) -> None:
        """Release what the labeller opened: the download threads, its session, and this
        thread's connection to the cache (its pending LRU touches written first). The labeller
        can still be used afterwards: they open again on first use."""
        self.store.close()
        self.cache.close()

    def __enter__(self) -> SegmentationLabeler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- labeling ----------------------------------------------------------------------------
    def _file_key(self, sample: Sample) -> str:
        """The file's identity (cluster, project, reference): what shards are drawn from."""
        return file_identity(self.store.origin, self.config.project, sample.file)

    def _mine(self, samples: Iterable[Sample]) -> Iterator[tuple[Sample, int]]:
        """This shard's samples with their image ids (ids and classes drawn over all shards)."""
        def checked() -> Iterator[Sample]:
            for s in samples:
                if not isinstance(s, Sample):
                    raise ValidationError(f"label() takes Samples, got {type(s).__name__}")
                for inst in s.instances:
                    if self._given is not None and inst.category is not None:
                        self._given.id_of(inst.category, f"sample {s.file.describe()}")
                    self._category_examples.setdefault((inst.category, inst.category_id), s)
                yield s

        for s, image_id in image_ids(checked()):
            if self._in_shard(s):
                yield s, image_id

    def _in_shard(self, sample: Sample) -> bool:
        return self.shard is None or \
            shard_of(self._file_key(sample), self.shard[1]) == self.shard[0]

    def label(self, samples: Iterable[Sample]) -> LabelingReport:
        """Label every sample (of this shard); returns the report (also ``self.report``).

        Samples are read in chunks; each chunk's images are fetched together (one metadata
        call, downloads on one shared thread pool), and its jobs join one stream that keeps
        ``concurrency`` jobs in flight across chunk boundaries. The manifest is written in
        input order as chunks finish.

        Every call asks CDF for the files' current versions (never a version resolved earlier
        in this process), so a file replaced in CDF moments ago is downloaded and segmented
        as it is now.

        Samples read from a COCO file (:class:`~cogseg_ml.samples.CocoSamples`) bring every
        category of that file, used or not: when the labeler was given no ``categories``,
        those are the labels file's, so splits of one source agree on class ids.
        """
        t0 = time.perf_counter()
        rep = self.report = LabelingReport(shard=self.shard)
        run_categories = self.categories
        if run_categories is None and isinstance(samples, CocoSamples):
            run_categories = list(samples.categories)
        self._category_examples: dict[tuple[str | None, int | None], Sample] = {}
        flow = _Flow()
        # A list's size is known up front (ETA from the start); a stream's grows chunk by chunk.
        known = isinstance(samples, Sequence)
        total = sum(len(s.instances) for s in samples
                    if isinstance(s, Sample) and self._in_shard(s)) if known else None
        with open(self.manifest, "w", encoding="utf-8") as manifest, \
                progress_bar(total, "labelling", progress=self.progress, unit="prompt") as bar:

            def write_ready() -> None:
                chunks = flow.ready()
                if chunks:
                    self.store.flush()  # their results must be readable before lines name them
                for chunk in chunks:
                    for line in self._manifest_lines(chunk):
                        manifest.write(json.dumps(line, separators=(",", ":")) + "\n")
                    manifest.flush()

            stream = self.store.segment(self._jobs(self._mine(samples), flow, bar,
                                                          grow=not known))
            try:
                for (cn, j, k), _, result, error in stream:
                    if ends_the_run(error):  # CDF unreachable or the credentials refused
                        stream.close()  # stores every answer that arrived
                        assert error is not None
                        raise error
                    bar.update(1)
                    if result is None:
                        flow.done(cn, (j, k), failure_reason(error or CogsegError("no result")))
                    else:
                        rep.jobs_run += 1
                        flow.done(cn, (j, k), None)
                    bar.set_postfix(done=rep.from_cache + rep.jobs_run, failed=flow.failed,
                                    refresh=False)
                    write_ready()
            except KeyboardInterrupt as exc:  # SIGINT (and SIGTERM where the caller maps it)
                stream.close()  # stores every answer that arrived
                rep.seconds = time.perf_counter() - t0
                sig = exc.args[0] if exc.args and exc.args[0] in ("SIGINT", "SIGTERM") \
                    else "SIGINT"
                self._stopped(flow, sig)
                raise RunInterrupted(
                    f"labelling stopped by {sig}: {rep.stored} finished and stored "
                    f"({rep.jobs_run - rep.not_stored} jobs finished, {rep.from_cache} from the "
                    "cache), the jobs in flight were dropped; run it again to resume (the "
                    "cache keeps what finished)", summary=rep.summary(),
                    signal_name=sig) from None
            finally:
                stream.close()  # on every way out (a failed write too), not at GC
            write_ready()
        self.category_table = CategoryTable.build(run_categories,
                                                  self._category_examples.values())
        rep.seconds = time.perf_counter() - t0
        return rep

    def _stopped(self, flow: _Flow, sig: str) -> None:
        """Complete the report of a run stopped by ``sig`` (its stream already closed).

        Failures of chunks not written to the manifest yet (failed jobs, unreadable images)
        are counted, and answers whose cache write failed are not counted as stored.
        """
        rep = self.report
        rep.interrupted = sig
        with self.store._lock:
            rep.not_stored = min(len(self.store._unsaved), rep.jobs_run)
        with flow.lock:
            unwritten = list(flow.chunks.values())
        for chunk in unwritten:
            for j, ((s, _), rec) in enumerate(zip(chunk.samples, chunk.records, strict=True)):
                if isinstance(rec, CogsegError):
                    for k in range(len(s.instances)):
                        self._fail(s, k, failure_reason(rec))
                    continue
                for k in range(len(s.instances)):
                    if (j, k) in chunk.errors:
                        self._fail(s, k, chunk.errors[(j, k)])

    def _jobs(self, samples: Iterator[tuple[Sample, int]], flow: _Flow, bar: Any,
              grow: bool = False) -> Iterator[tuple[ImageRecord, Prompt, tuple[int, int, int]]]:
        """The jobs of every chunk not already cached (runs on the backend's feeding side)."""
        rep = self.report
        for cn in range(1 << 62):
            chunk = [s for _, s in zip(range(self.chunk_size), samples, strict=False)]
            if not chunk:
                break
            recs = self.store.records([s.file for s, _ in chunk], fresh=True)
            todo: list[tuple[ImageRecord, Prompt, tuple[int, int, int]]] = []
            cached = 0
            for j, ((s, _), rec) in enumerate(zip(chunk, recs, strict=True)):
                if ends_the_run(rec):  # no image can be had: stop at once, not per item
                    assert isinstance(rec, CogsegError)
                    raise rec
                if isinstance(rec, CogsegError):
                    continue
                if "height" in s.meta and "width" in s.meta:  # e.g. read from a COCO file
                    check_declared_size(s.file, (s.meta["height"], s.meta["width"]),
                                        (rec.height, rec.width))
                prompts = [inst.prompt for inst in s.instances]
                for k, hit in enumerate(self.store.present(rec, prompts,
                                                           preferred_only=True)):
                    if hit:
                        cached += 1
                    else:
                        todo.append((rec, prompts[k], (cn, j, k)))
            with flow.lock:
                rep.samples += len(chunk)
                rep.instances += sum(len(s.instances) for s, _ in chunk)
                rep.from_cache += cached
            if grow:
                add_total(bar, sum(len(s.instances) for s, _ in chunk))
            bar.update(cached)
            flow.add(cn, _Chunk(chunk, recs), len(todo))
            yield from todo

    def _manifest_lines(self, chunk: _Chunk) -> list[dict[str, Any]]:
        lines = []
        for j, ((s, image_id), rec) in enumerate(zip(chunk.samples, chunk.records, strict=True)):
            if isinstance(rec, CogsegError):
                for k in range(len(s.instances)):
                    self._fail(s, k, failure_reason(rec))
                continue
            prompts = [inst.prompt for inst in s.instances]
            results = self.store.lookup(rec, prompts)
            insts = []
            for k, (inst, res) in enumerate(zip(s.instances, results, strict=True)):
                if (j, k) in chunk.errors:
                    self._fail(s, k, chunk.errors[(j, k)])
                elif res is None:  # evicted between put and now: report, never guess
                    self._fail(s, k, "result missing from the cache (evicted?)")
                else:
                    self.report.labelled += 1
                    key = self.store._answer_key(rec, inst.prompt, res)
                    insts.append({"k": k, "key": key.fingerprint(), "category": inst.category,
                                  "backend": res.backend, "keep": self.select(res)})
            lines.append({"file_key": rec.file_key, "image_id": image_id,
                          "file": file_json(s.file),
                          "file_name": rec.file_name, "digest": rec.digest,
                          "height": rec.height, "width": rec.width, "instances": insts})
        return lines

    def select(self, res: CachedResult) -> list[int]:
        """Indices of the segments of ``res`` the quality controls keep (``keep``,
        ``min_score``, ``min_area``); the rest are counted in :attr:`report`."""
        rep = self.report
        if not res.segments:
            rep.dropped["no segment"] += 1
            return []
        candidates = list(range(len(res.segments))) if self.keep == "all" else [0]
        if self.keep == "best":
            rep.dropped["not best"] += len(res.segments) - 1
        areas = area([res.segments[i].rle for i in candidates])
        kept = []
        for i, a in zip(candidates, areas, strict=True):
            if a == 0:
                rep.dropped["empty mask"] += 1
            elif res.segments[i].score < self.min_score:
                rep.dropped["below min_score"] += 1
            elif a < self.min_area:
                rep.dropped["below min_area"] += 1
            else:
                kept.append(i)
        rep.annotations += len(kept)
        return kept

    def _fail(self, sample: Sample, k: int, reason: str) -> None:
        rep = self.report
        rep.failed += 1
        # Group by the reason's shape: ids and counts vary, the cause does not.
        shape = re.sub(r"request id [0-9a-zA-Z-]+", "request id ...", reason)
        # HTTP statuses ("503 Service Unavailable") are the cause too: they stay.
        rep.failure_reasons[re.sub(r"\b\d+\b(?! [A-Z][a-z])", "N", shape)[:160]] += 1
        if len(rep.failures) < MAX_FAILURES_KEPT:
            rep.failures.append({"file": sample.file.describe(), "instance": k,
                                 "reason": reason})

    # --- output ------------------------------------------------------------------------------
    def image_lines(self) -> Iterator[dict[str, Any]]:
        """The labelled images, one dict per image in labelling order (read lazily).

        Each line holds ``file`` (the reference as JSON), ``file_key``, ``file_name``,
        ``height``, ``width``, ``image_id``, ``digest`` (the image's SHA-256) and
        ``instances`` (each with the cache ``key``, ``category``, prompt index ``k``, the
        indices it ``keep``s and the ``backend`` that made it). A writer of another format
        reads these plus :meth:`iter_annotations`, as :meth:`to_coco` does.

        Raises:
            ValidationError: at once, when nothing was labelled yet.
        """
        if not self.manifest.exists() or self.category_table is None:
            raise ValidationError("nothing labelled yet: call label(samples) first")

        def read() -> Iterator[dict[str, Any]]:
            with open(self.manifest, encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)
        return read()

    def iter_annotations(self) -> Iterator[tuple[dict[str, Any], dict[str, Any], Any]]:
        """``(image line, instance, CachedSegment)`` for every kept segment, in order.

        Results that left the cache since labelling are counted in
        ``report.missing_at_export`` (and logged), never silently dropped.
        """
        self.report.missing_at_export = 0
        for line in self.image_lines():
            fps = [inst["key"] for inst in line["instances"]]
            results = self.cache.get_by_fingerprints(fps)
            for inst, res in zip(line["instances"], results, strict=True):
                if res is None:
                    self.report.missing_at_export += 1
                    continue
                for i in inst["keep"]:
                    yield line, inst, res.segments[i]
        if self.report.missing_at_export:
            _log.warning("%d labelled results left the cache before export (evicted?); "
                         "re-run label() to segment them again", self.report.missing_at_export)

    def to_coco(self, path: str | Path, segmentation: Literal["rle", "polygon"] = "rle", *,
                samples: Sequence[Sample] | None = None) -> int:
        """Write a COCO instance-segmentation file (streamed); returns the annotation count.

        One image per file (``file_name`` the CDF file name, ``cdf_file`` the reference),
        listed whether or not it kept a segment. ``segmentation="rle"`` writes compressed RLE
        (exact); ``"polygon"`` one ring per part along pixel corners, each hole joined to its
        part by a zero-width cut (:func:`~cogseg_ml.mask_codec.mask_to_rings`): exact too,
        holes included. Written atomically (see :class:`~cogseg_ml.coco_io.CocoWriter`).

        Each annotation names its ``source`` (the backend that answered). Given the
        ``samples`` of a run from class names
        (:func:`~cogseg_ml.samples.from_text.samples_from_text`), each also names its
        ``segmenter`` (``"name:model_version"``), ``detector`` (weights and settings),
        ``detector_score``, ``class_score`` and ``detector_bbox`` (the detector's own
        ``[x, y, w, h]``, kept for audits; ``bbox`` is always recomputed from the mask).

        Only a file cogseg wrote is replaced (an earlier ``to_coco``, a cache export).

        Raises:
            ForeignOutputError: (a ``ValidationError``) ``path`` holds something cogseg did not
                write: a user's file, another tool's COCO file, an empty file, a folder, a
                link. It is left as it was; the results are kept, so call again with another
                path.
        """
        lines = self.image_lines()  # raises when nothing was labelled yet
        table = self.category_table
        assert table is not None
        by_file = {s.file: s.meta for s in samples} if samples is not None else {}
        versions = dict(self.backend.identities())
        description = ("cogseg_ml labels from class names" if samples is not None
                       else LABELS_DESCRIPTION)
        with CocoWriter(path, table.as_coco(), segmentation=segmentation,
                        description=description) as out:
            for line in lines:
                out.add_image(line["file_key"], file_name=line["file_name"],
                              height=line["height"], width=line["width"],
                              image_id=line["image_id"], cdf_file=line["file"],
                              sha256=line["digest"])
            for line, inst, seg in self.iter_annotations():
                extra: dict[str, Any] = {"prompt_index": inst["k"],
                                         "source": inst.get("backend")}
                if samples is not None:
                    backend = str(inst.get("backend"))
                    extra["segmenter"] = f"{backend}:{versions.get(backend, '')}"
                meta = by_file.get(FileRef.parse(line["file"]), {}) if by_file else {}
                dets = meta.get("detections") or ()
                if inst["k"] < len(dets):
                    d = dets[inst["k"]]
                    extra.update(detector=meta.get("detector"), detector_score=round(d.score, 6),
                                 class_score=round(d.class_score, 6),
                                 detector_bbox=[round(v, 2) for v in d.xywh()])
                out.add_annotation(line["file_key"], table.id_of(inst["category"]), seg.rle,
                                   seg.score, **extra)
        return out.annotations

    def write_back(self, *, creating_app: str = "cogseg-ml",
                   status: Literal["suggested", "approved", "rejected"] = "suggested"
                   ) -> WriteBackReport:
        """Create ``images.ObjectDetection`` annotations with a polygon for every kept segment.

        Idempotent: existing annotations of ``creating_app`` on the same files with the same
        label and polygon are found first (``/annotations/list``) and not created again, so a
        re-run, or a run after a create whose answer was lost, makes no duplicates. The polygon
        is the mask's largest outline (the annotation type takes exactly one), normalized.
        """
        wb = WriteBackReport()
        with SegmentationClient(self.config) as client:
            # annotatedResourceId takes internal ids: resolve the other references once.
            others = {line["file_key"]: line["file"] for line in self.image_lines()
                      if "id" not in line["file"]}
            ids: dict[str, int] = {}
            if others:
                by_ref = client.metadata_map([FileRef.parse(f) for f in others.values()])
                for key, f in others.items():
                    meta = by_ref.get(FileRef.parse(f))
                    if meta is not None:
                        ids[key] = meta.id
            batch: list[tuple[dict[str, Any], Annotation]] = []
            for line, inst, seg in self.iter_annotations():
                file_id = line["file"].get("id", ids.get(line["file_key"]))
                ann = self._annotation(line, inst, seg, creating_app, status, file_id)
                if ann is None:
                    wb.skipped += 1
                    continue
                batch.append((line, ann))
                if len(batch) >= 1000:
                    self._create_missing(client, batch, creating_app, wb)
                    batch = []
            if batch:
                self._create_missing(client, batch, creating_app, wb)
        return wb

    def _annotation(self, line: dict[str, Any], inst: dict[str, Any], seg: Any,
                    creating_app: str, status: str, file_id: int | None
                    ) -> Annotation | None:
        if file_id is None:
            return None  # the file is unknown to CDF now: nothing to annotate
        polys = mask_to_polygons(decode([seg.rle])[0], outline="filled")
        if not polys:
            return None
        h, w = line["height"], line["width"]
        biggest = max(polys, key=lambda p: abs(_shoelace(p)))
        vertices = [{"x": round(x / w, 6), "y": round(y / h, 6)} for x, y in biggest]
        return Annotation(
            annotated_resource_type="file", annotated_resource_id=int(file_id),
            annotation_type="images.ObjectDetection", creating_app=creating_app,
            creating_app_version=__version__, creating_user=None,
            status=status,  # type: ignore[arg-type]
            data={"label": inst["category"] or "object",
                  "confidence": round(min(1.0, max(0.0, seg.score)), 6),
                  "polygon": {"vertices": vertices}})

    @staticmethod
    def _identity(file_id: int, data: dict[str, Any]) -> str:
        verts = [(round(v["x"], 6), round(v["y"], 6)) for v in data["polygon"]["vertices"]]
        return json.dumps([file_id, data.get("label"), verts])

    def _create_missing(self, client: SegmentationClient,
                        batch: list[tuple[dict[str, Any], Annotation]], creating_app: str,
                        wb: WriteBackReport) -> None:
        file_ids = sorted({a.annotated_resource_id for _, a in batch})
        existing = {self._identity(a.annotated_resource_id, a.data)
                    for a in client.list_annotations(
                        file_ids, annotation_type="images.ObjectDetection", status=None,
                        creating_app=creating_app)
                    if isinstance(a.data.get("polygon"), dict)}
        new = []
        for _, ann in batch:
            ident = self._identity(ann.annotated_resource_id, ann.data)
            if ident in existing:
                wb.already_present += 1
            else:
                existing.add(ident)
                new.append(ann)
        if new:
            wb.created += len(client.create_annotations(new))


@dataclass
class _Chunk:
    """One chunk of samples on its way through: images, and errors of its jobs."""

    samples: list[tuple[Sample, int]]  # with its image id
    records: list[ImageRecord | CogsegError]
    errors: dict[tuple[int, int], str] = field(default_factory=dict)
    outstanding: int = 0


class _Flow:
    """Chunks whose jobs are in flight, released in input order once all their jobs ended.

    Chunks are added from the backend's feeding side (possibly another thread), outcomes
    arrive on the caller's; one lock guards both.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.chunks: dict[int, _Chunk] = {}
        self.next = 0
        self.failed = 0

    def add(self, cn: int, chunk: _Chunk, jobs: int) -> None:
        with self.lock:
            chunk.outstanding = jobs
            self.chunks[cn] = chunk

    def done(self, cn: int, jk: tuple[int, int], error: str | None) -> None:
        with self.lock:
            chunk = self.chunks[cn]
            chunk.outstanding -= 1
            if error is not None:
                chunk.errors[jk] = error
                self.failed += 1

    def ready(self) -> list[_Chunk]:
        out = []
        with self.lock:
            while (c := self.chunks.get(self.next)) is not None and c.outstanding == 0:
                out.append(self.chunks.pop(self.next))
                self.next += 1
        return out


def _shoelace(poly: Sequence[tuple[int, int]]) -> float:
    a = np.asarray(poly, dtype=np.float64)
    return float((a[:, 0] * np.roll(a[:, 1], -1) - np.roll(a[:, 0], -1) * a[:, 1]).sum() / 2)
