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

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cogseg_ml import __version__
from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.api.wire_schema import Annotation
from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.backends.base import BackendJob, SegmentationBackend
from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import CachedResult, MaskCache
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import CogsegError, ValidationError
from cogseg_ml.mask_codec import area, bbox_of, decode, mask_to_polygons
from cogseg_ml.progress import progress_bar
from cogseg_ml.prompts import FileRef
from cogseg_ml.samples import Sample
from cogseg_ml.segment_results import API_BACKEND, image_size

__all__ = ["LabelingReport", "SegmentationLabeler", "WriteBackReport", "shard_of"]

CHUNK = 256  # samples per step: images fetched together, manifest written in order
MAX_FAILURES_KEPT = 1000


def resolve_backend(backend: CdfConfig | SegmentationClient | SegmentationBackend,
                    config: CdfConfig | None, concurrency: int
                    ) -> tuple[SegmentationBackend, CdfConfig]:
    """The backend to run and the CDF connection for images (from the backend if it has one)."""
    if isinstance(backend, (CdfConfig, SegmentationClient)):
        api = ApiBackend(backend, concurrency=concurrency)
        return api, config or api.config
    if not isinstance(backend, SegmentationBackend):
        raise ValidationError("backend must be a CdfConfig, a SegmentationClient or a "
                              f"SegmentationBackend, got {type(backend).__name__}")
    found = config
    for b in (backend, getattr(backend, "primary", None), getattr(backend, "fallback", None)):
        if found is None and isinstance(b, ApiBackend):
            found = b.config
    if found is None:
        raise ValidationError("this backend has no CDF connection: pass config=CdfConfig(...) "
                              "for downloading images")
    return backend, found


def shard_of(file_key: str, n: int) -> int:
    """The shard (0..n-1) a file belongs to: stable across runs, machines and input order."""
    return int(hashlib.sha256(file_key.encode("utf-8")).hexdigest()[:12], 16) % n


@dataclass
class LabelingReport:
    """What a labeling run did; ``summary()`` for people, ``as_dict()`` for programs."""

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
    seconds: float = 0.0
    shard: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"samples": self.samples, "instances": self.instances,
                "labelled": self.labelled, "from_cache": self.from_cache,
                "jobs_run": self.jobs_run, "failed": self.failed,
                "dropped": dict(self.dropped), "failure_reasons": dict(self.failure_reasons),
                "failures": self.failures, "annotations": self.annotations,
                "seconds": round(self.seconds, 3), "shard": self.shard}

    def summary(self) -> str:
        """A few lines a person can read."""
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        lines = [f"{self.samples} images, {self.instances} prompts: {self.labelled} labelled "
                 f"({self.from_cache} from cache, {self.jobs_run} jobs run), "
                 f"{self.failed} failed, in {self.seconds:.1f} s",
                 f"segments kept: {self.annotations}; dropped: {drops}"]
        for reason, n in self.failure_reasons.most_common(5):
            lines.append(f"  failed x{n}: {reason}")
        return "\n".join(lines)


@dataclass
class WriteBackReport:
    """What :meth:`SegmentationLabeler.write_back` did."""

    created: int = 0
    already_present: int = 0
    skipped: int = 0


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}"


class SegmentationLabeler:
    """Label samples through the CDF API into the cache, then write COCO.

    Args:
        backend: a :class:`CdfConfig` or :class:`SegmentationClient` (the API), or any
            :class:`~cogseg_ml.backends.base.SegmentationBackend` (a local model, a fallback).
        config: the CDF connection for images and write-back, when ``backend`` has none.
        cache: a :class:`MaskCache` or a path for one (default location when ``None``).
        categories: category names in id order (default: sorted names seen in the samples).
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
                 categories: Sequence[str] | None = None, min_score: float = 0.0,
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
        self.images = ImageStore(self.cache)
        self.categories = list(categories) if categories is not None else None
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

    # --- labeling ----------------------------------------------------------------------------
    def _file_key(self, sample: Sample) -> str:
        return CacheKey(self.config.project, sample.file, sample.instances[0].prompt,
                        API_BACKEND).file_key

    def _mine(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        for s in samples:
            if not isinstance(s, Sample):
                raise ValidationError(f"label() takes Samples, got {type(s).__name__}")
            if self.shard is None or shard_of(self._file_key(s), self.shard[1]) == self.shard[0]:
                yield s

    def label(self, samples: Iterable[Sample]) -> LabelingReport:
        """Label every sample (of this shard); returns the report (also ``self.report``)."""
        t0 = time.perf_counter()
        rep = self.report = LabelingReport(shard=self.shard)
        seen_categories: set[str] = set()
        with SegmentationClient(self.config) as client, \
                open(self.manifest, "w", encoding="utf-8") as manifest, \
                progress_bar(None, "labelling", progress=self.progress, unit="prompt") as bar:
            it = self._mine(samples)
            while True:
                chunk = [s for _, s in zip(range(self.chunk_size), it, strict=False)]
                if not chunk:
                    break
                lines = self._label_chunk(client, chunk, bar, seen_categories)
                for line in lines:
                    manifest.write(json.dumps(line, separators=(",", ":")) + "\n")
                manifest.flush()
        if self.categories is None:
            self.categories = sorted(seen_categories)
        rep.seconds = time.perf_counter() - t0
        return rep

    def _loader(self, file_key: str) -> Callable[[], bytes]:
        def load() -> bytes:
            data = self.images.get(file_key)
            if data is None:
                raise CogsegError(f"image {file_key} left the image store")
            return data

        return load

    def _image_info(self, client: SegmentationClient, sample: Sample
                    ) -> tuple[str, int, int]:
        key = self._file_key(sample)
        found = self.images.get_with_digest(key)
        if found is None:
            data = client.download(sample.file)
            found = data, self.images.put(key, data)
        h, w = image_size(found[0], sample.file)
        return found[1], h, w

    def _label_chunk(self, client: SegmentationClient, chunk: list[Sample], bar: Any,
                     seen_categories: set[str]) -> list[dict[str, Any]]:
        rep = self.report
        rep.samples += len(chunk)
        rep.instances += sum(len(s.instances) for s in chunk)
        info: dict[int, tuple[str, int, int] | str] = {}
        with ThreadPoolExecutor(self.download_workers) as pool:
            futures: dict[str, Any] = {}  # one download per file, however many samples name it
            for s in chunk:
                fkey = self._file_key(s)
                if fkey not in futures:
                    futures[fkey] = pool.submit(self._image_info, client, s)
            for j, s in enumerate(chunk):
                try:
                    info[j] = futures[self._file_key(s)].result()
                except CogsegError as exc:
                    info[j] = _reason(exc)
        name, version = self.backend.identities()[0]
        keys: dict[tuple[int, int], CacheKey] = {}
        for j, s in enumerate(chunk):
            got = info[j]
            if isinstance(got, tuple):
                for k, inst in enumerate(s.instances):
                    keys[(j, k)] = CacheKey(self.config.project, s.file, inst.prompt, name,
                                            file_version=got[0], model_version=version)
        order = list(keys)
        present = self.cache.keys_present([keys[o] for o in order])
        errors: dict[tuple[int, int], str] = {}
        jobs = []
        for o, hit in zip(order, present, strict=True):
            if hit:
                rep.from_cache += 1
                bar.update(1)
            else:
                s = chunk[o[0]]
                got = info[o[0]]
                assert isinstance(got, tuple)
                digest, h, w = got
                jobs.append(BackendJob(SegmentRequest(s.file, s.instances[o[1]].prompt, tag=o),
                                       h, w, digest, self._loader(self._file_key(s))))
        pending: list[tuple[CacheKey, CachedResult]] = []
        try:
            for out in self.backend.run(jobs):
                o = out.job.request.tag
                bar.update(1)
                if out.error is not None or out.result is None:
                    errors[o] = _reason(out.error or CogsegError("no result"))
                else:
                    rep.jobs_run += 1
                    res = out.result
                    key = keys[o]
                    if (res.backend, res.model_version) != (name, version):  # provenance
                        key = dataclasses.replace(key, backend=res.backend,
                                                  model_version=res.model_version)
                        keys[o] = key
                    pending.append((key, res))
                if len(pending) >= 64:
                    self.cache.put_many(pending)
                    pending.clear()
                bar.set_postfix(done=rep.from_cache + rep.jobs_run, failed=rep.failed +
                                len(errors), refresh=False)
        finally:
            self.cache.put_many(pending)  # on Ctrl-C too: keep what finished
        return self._manifest_lines(chunk, info, keys, errors, seen_categories)

    def _manifest_lines(self, chunk: list[Sample], info: dict[int, Any],
                        keys: dict[tuple[int, int], CacheKey],
                        errors: dict[tuple[int, int], str],
                        seen_categories: set[str]) -> list[dict[str, Any]]:
        rep = self.report
        lines = []
        for j, s in enumerate(chunk):
            got = info[j]
            file_key = self._file_key(s)
            if isinstance(got, str):
                for k in range(len(s.instances)):
                    self._fail(s, k, got)
                continue
            digest, h, w = got
            insts = []
            kk = [(k, keys[(j, k)]) for k in range(len(s.instances)) if (j, k) not in errors]
            for k in range(len(s.instances)):
                if (j, k) in errors:
                    self._fail(s, k, errors[(j, k)])
            results = self.cache.get_many([key for _, key in kk])
            for (k, key), res in zip(kk, results, strict=True):
                inst = s.instances[k]
                if inst.category:
                    seen_categories.add(inst.category)
                if res is None:  # evicted between put and now: report, never guess
                    self._fail(s, k, "result missing from the cache (evicted?)")
                    continue
                rep.labelled += 1
                insts.append({"k": k, "key": key.fingerprint(), "category": inst.category,
                              "backend": res.backend, "keep": self._select(res)})
            lines.append({"file_key": file_key, "file": _file_json(s), "digest": digest,
                          "height": h, "width": w, "instances": insts})
        return lines

    def _select(self, res: CachedResult) -> list[int]:
        """Indices of the segments kept by the quality controls; counts the rest."""
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
        rep.failure_reasons[re.sub(r"\d+", "N", shape)[:160]] += 1
        if len(rep.failures) < MAX_FAILURES_KEPT:
            rep.failures.append({"file": sample.file.describe(), "instance": k,
                                 "reason": reason})

    # --- output ------------------------------------------------------------------------------
    def _lines(self) -> Iterator[dict[str, Any]]:
        if not self.manifest.exists():
            raise ValidationError("nothing labelled yet: call label(samples) first")
        with open(self.manifest, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)

    def iter_annotations(self) -> Iterator[tuple[dict[str, Any], dict[str, Any], Any]]:
        """``(image line, instance, CachedSegment)`` for every kept segment, in order."""
        for line in self._lines():
            fps = [inst["key"] for inst in line["instances"]]
            results = self.cache.get_by_fingerprints(fps)
            for inst, res in zip(line["instances"], results, strict=True):
                if res is None:
                    continue
                for i in inst["keep"]:
                    yield line, inst, res.segments[i]

    def to_coco(self, path: str | Path, segmentation: Literal["rle", "polygon"] = "rle") -> int:
        """Write a COCO instance-segmentation file (streamed); returns the annotation count.

        ``segmentation="rle"`` writes compressed RLE (exact); ``"polygon"`` writes pixel
        polygons traced along pixel corners (exact for masks without holes; holes are filled).
        The file is written to a temporary name and renamed into place.
        """
        if segmentation not in ("rle", "polygon"):
            raise ValidationError(f"segmentation must be 'rle' or 'polygon', got "
                                  f"{segmentation!r}")
        cats = self.categories or []
        cat_id = {name: k + 1 for k, name in enumerate(cats)}
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.incomplete")
        n_ann = 0
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                out.write('{"info":' + json.dumps({"description": "cogseg_ml labels",
                                                   "version": __version__}))
                out.write(',"categories":' + json.dumps(
                    [{"id": 0, "name": "object"}] * (not cats) +
                    [{"id": i, "name": n} for n, i in cat_id.items()]))
                out.write(',"images":[')
                for n, line in enumerate(self._lines()):
                    out.write(("," if n else "") + json.dumps({
                        "id": n + 1, "file_name": line["file_key"], "cdf_file": line["file"],
                        "height": line["height"], "width": line["width"],
                        "sha256": line["digest"]}))
                out.write('],"annotations":[')
                image_ids: dict[str, int] = {}
                for line, inst, seg in self.iter_annotations():
                    img_id = image_ids.setdefault(line["file_key"], len(image_ids) + 1)
                    rle = seg.rle
                    a = int(area([rle])[0])
                    box = [float(v) for v in bbox_of([rle])[0]]
                    if segmentation == "rle":
                        geom: Any = rle
                    else:
                        geom = [[float(c) for xy in poly for c in xy]
                                for poly in mask_to_polygons(decode([rle])[0])]
                    n_ann += 1
                    out.write(("," if n_ann > 1 else "") + json.dumps({
                        "id": n_ann, "image_id": img_id,
                        "category_id": cat_id.get(inst["category"], 0) if cats else 0,
                        "segmentation": geom, "area": a, "bbox": box, "iscrowd": 0,
                        "score": seg.score, "prompt_index": inst["k"],
                        "source": inst.get("backend")}))
                out.write("]}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return n_ann

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
            others = {line["file_key"]: line["file"] for line in self._lines()
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
        polys = mask_to_polygons(decode([seg.rle])[0])
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


def _file_json(sample: Sample) -> dict[str, Any]:
    f = sample.file
    if f.id is not None:
        return {"id": f.id}
    if f.external_id is not None:
        return {"externalId": f.external_id}
    assert f.instance_id is not None
    return {"instanceId": {"space": f.instance_id.space,
                           "externalId": f.instance_id.external_id}}


def _shoelace(poly: Sequence[tuple[int, int]]) -> float:
    a = np.asarray(poly, dtype=np.float64)
    return float((a[:, 0] * np.roll(a[:, 1], -1) - np.roll(a[:, 0], -1) * a[:, 1]).sum() / 2)
