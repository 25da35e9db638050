"""From result rows to the project's outputs: a COCO file (the labeler's writer) and the mask
cache (so the dataset and the labeler read Ray-labelled masks without running a job again).

Both take a Ray Dataset of result rows (executed once and streamed to the driver, which orders
the rows in a temporary SQLite file, so its memory stays flat), a ``pyarrow.Table`` or an
iterable of row dicts.

The COCO file is the one :meth:`SegmentationLabeler.to_coco
<cogseg_ml.labeler.SegmentationLabeler.to_coco>` writes for the same prompts: images in image
id order (rows without an image id get the next ids, in file order), each image whose file
could be read listed whether or not it kept a segment, the kept segments in prompt order, and
the same category table (:class:`~cogseg_ml.samples.CategoryTable`).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import pyarrow as pa  # type: ignore[import-untyped]
import ray.data

from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.mask_cache import CachedResult, CachedSegment, MaskCache
from cogseg_ml.coco_io import CocoWriter, file_json
from cogseg_ml.errors import ValidationError
from cogseg_ml.mask_codec import Rle
from cogseg_ml.prompts import FileRef, Point, Prompt
from cogseg_ml.ray.schema import OK, file_of_row
from cogseg_ml.samples import Category, CategoryTable, Instance, Sample

__all__ = ["Results", "import_results", "write_coco"]

Results: TypeAlias = "ray.data.Dataset | pa.Table | Iterable[Mapping[str, Any]]"
"""Result rows: a Ray Dataset, a ``pyarrow.Table``, or row dicts."""

PUT_BATCH = 512
STREAM_BATCH = 4096
_COCO_FIELDS = ("file", "image_id", "instance", "status", "kept", "category", "rle", "score",
                "height", "width", "backend", "file_key", "file_name", "digest")
_CACHE_FIELDS = ("file_key", "prompt", "backend", "model_version", "file", "segment", "rle",
                 "score", "height", "width", "job_id", "digest")


def _stream(results: Results) -> Iterator[dict[str, Any]]:
    """The result rows, one execution of a Dataset (streamed, never gathered)."""
    if isinstance(results, ray.data.Dataset):
        for batch in results.iter_batches(batch_format="pyarrow", batch_size=STREAM_BATCH):
            table: Any = batch
            yield from table.to_pylist()
        return
    if isinstance(results, pa.Table):
        for batch in results.to_batches(STREAM_BATCH):
            yield from batch.to_pylist()
        return
    for row in results:
        if not isinstance(row, Mapping):
            raise ValidationError(f"result rows are mappings, got {type(row).__name__}")
        yield row  # type: ignore[misc]


class _Spool:
    """Rows put in any order, read back sorted by their keys: an SQLite file in a temporary
    folder (the driver's memory stays flat however many rows there are)."""

    def __init__(self, n_keys: int) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="cogseg-ray-")
        self._db = sqlite3.connect(Path(self._dir.name) / "spool.sqlite")
        self._keys = [f"k{i}" for i in range(n_keys)]
        cols = ", ".join(self._keys)
        self._db.execute(f"CREATE TABLE rows ({cols}, payload TEXT NOT NULL)")
        self._insert = f"INSERT INTO rows VALUES ({', '.join('?' * (n_keys + 1))})"
        self._order = f"SELECT payload FROM rows ORDER BY {cols}, rowid"
        self._pending: list[tuple[Any, ...]] = []

    def put(self, keys: tuple[Any, ...], row: Mapping[str, Any], fields: Sequence[str]) -> None:
        self._pending.append((*keys, json.dumps([row[f] for f in fields])))
        if len(self._pending) >= STREAM_BATCH:
            self._db.executemany(self._insert, self._pending)
            self._pending = []

    def sorted(self, fields: Sequence[str]) -> Iterator[dict[str, Any]]:
        if self._pending:
            self._db.executemany(self._insert, self._pending)
            self._pending = []
        for (payload,) in self._db.execute(self._order):
            yield dict(zip(fields, json.loads(payload), strict=True))

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ANY_PROMPT = Prompt(points=(Point(0.5, 0.5),))  # CategoryTable.build reads only the classes


def _table(categories: Sequence[str | Category | Mapping[str, Any]] | None,
           pairs: Iterable[tuple[str | None, int | None]]) -> CategoryTable:
    if categories is not None:
        return CategoryTable.build(categories)
    insts = tuple(Instance(_ANY_PROMPT, cat, cid) for cat, cid in sorted(
        set(pairs), key=lambda p: (p[0] is None, p[0] or "", p[1] or 0)))
    return CategoryTable.build(None, [Sample(FileRef(id=1), insts)] if insts else [])


def write_coco(results: Results, path: str | Path, *,
               categories: Sequence[str | Category | Mapping[str, Any]] | None = None,
               segmentation: Literal["rle", "polygon"] = "rle") -> int:
    """Write the COCO instance-segmentation file of result rows; returns the annotation count.

    Args:
        results: result rows (see :data:`Results`); a Dataset is executed once.
        path: the output file (written atomically, see :class:`~cogseg_ml.coco_io.CocoWriter`).
        categories: the classes, as the labeler takes them; default: the rows' own (their
            COCO ids where every named instance has one, else their names sorted).
        segmentation: ``"rle"`` (exact) or ``"polygon"``.

    Raises:
        ValidationError: a row's category is not among ``categories``, one name has two ids,
            or two files claim one image id.
    """
    pairs: set[tuple[str | None, int | None]] = set()
    with _Spool(5) as spool:
        for row in _stream(results):
            if row.get("prompt") is not None:  # an instance that was read: its class counts
                pairs.add((row.get("category"), row.get("category_id")))
            if row.get("file_key") is None:  # the file could not be read: not in the set
                continue
            iid, k, seg = row.get("image_id"), row.get("instance"), row.get("segment")
            spool.put((iid is None, iid or 0, row["file_key"], -1 if k is None else k,
                       -1 if seg is None else seg), row, _COCO_FIELDS)
        table = _table(categories, pairs)
        with CocoWriter(path, table.as_coco(), segmentation=segmentation) as out:
            for row in spool.sorted(_COCO_FIELDS):
                out.add_image(row["file_key"], file_name=row["file_name"],
                              height=row["height"], width=row["width"],
                              image_id=row["image_id"],
                              cdf_file=file_json(file_of_row(row["file"])),
                              sha256=row["digest"])
                if row["status"] == OK and row["kept"] and row["rle"] is not None:
                    rle: Rle = {"size": [row["height"], row["width"]], "counts": row["rle"]}
                    out.add_annotation(row["file_key"], table.id_of(row["category"]), rle,
                                       row["score"], prompt_index=row["instance"],
                                       source=row["backend"])
    return out.annotations


def _origin_and_project(file_key: str) -> tuple[str, str]:
    try:
        ident = json.loads(file_key.rsplit("@", 1)[0])
        origin, project = ident[0], ident[1]
    except (ValueError, IndexError, TypeError, KeyError):
        raise ValidationError(f"file_key {file_key!r} is not a file version key "
                              "(cluster, project, file @ version)") from None
    if not isinstance(origin, str) or not isinstance(project, str):
        raise ValidationError(f"file_key {file_key!r} is not a file version key")
    return origin, project


def _entry(rows: list[dict[str, Any]]) -> tuple[CacheKey, CachedResult]:
    first = rows[0]
    origin, project = _origin_and_project(first["file_key"])
    prompt = json.loads(first["prompt"])
    key = CacheKey(project, file_of_row(first["file"]),
                   Prompt.of(prompt["points"] or None, prompt["box"]), first["backend"],
                   file_version=first["digest"], model_version=first["model_version"] or "",
                   origin=origin)
    h, w = first["height"], first["width"]
    segs, seen = [], set()
    for r in rows:
        if r["segment"] is None or r["segment"] in seen:  # no segment; or the same answer twice
            continue
        seen.add(r["segment"])
        segs.append(CachedSegment(float(r["score"]), {"size": [h, w], "counts": r["rle"]}))
    return key, CachedResult(segments=tuple(segs), height=h, width=w, backend=first["backend"],
                             model_version=first["model_version"] or "",
                             job_id=first["job_id"])


def import_results(results: Results, cache: MaskCache | str | Path | None = None) -> int:
    """Store the answers of result rows in a mask cache; returns the entries written.

    Every segment of every answer is stored (kept or not: the cache holds answers, the quality
    controls apply when reading), under the identity of the backend that gave it, so a
    :class:`~cogseg_ml.dataset.CdfSegmentationDataset` or a labeler on this cache finds them
    and runs no job. Images are not in the rows: they are downloaded when first read.
    Failed rows are skipped; a Dataset is executed once.
    """
    target = cache if isinstance(cache, MaskCache) else MaskCache(cache)
    written = 0
    with _Spool(5) as spool:
        for row in _stream(results):
            if row.get("status") == OK and row.get("file_key") is not None:
                seg = row.get("segment")
                spool.put((row["file_key"], row["prompt"], row["backend"],
                           row["model_version"] or "", -1 if seg is None else seg), row,
                          _CACHE_FIELDS)
        batch: list[tuple[CacheKey, CachedResult]] = []
        group: list[dict[str, Any]] = []
        ident: tuple[Any, ...] | None = None
        for row in spool.sorted(_CACHE_FIELDS):
            this = (row["file_key"], row["prompt"], row["backend"], row["model_version"])
            if group and this != ident:
                batch.append(_entry(group))
                group = []
                if len(batch) >= PUT_BATCH:
                    written += target.put_many(batch)
                    batch = []
            ident = this
            group.append(row)
        if group:
            batch.append(_entry(group))
        written += target.put_many(batch)
    return written
