"""Read-through images and masks: the one place the dataset and the labeler get both from.

:class:`SegmentStore` answers three questions, each from the cache first:

* **which version of a file** (:meth:`~SegmentStore.resolve`): CDF's ``files/byids``, one call
  per 1000 files. The version is the file's ``uploadedTime`` and ``lastUpdatedTime``, so
  replaced content (an upload with overwrite) is a new version; a metadata-only edit costs one
  re-download, never a stale image. **Freshness rule:** an explicit refresh
  (``resolve(..., fresh=True)``, which the dataset's ``prefetch()`` and the labeler's
  ``label()`` use) always asks CDF, so content replaced a moment ago is seen. Implicit lookups
  (``dataset[i]``, ``get_height_and_width``, :meth:`~SegmentStore.image`) reuse the version
  this store resolved last (for its whole life: a dataset and its DataLoader workers, which
  get it pickled, serve one version per file), else one any store of this process resolved
  less than ``VERSION_TTL_S`` (60 s) ago, else ask CDF. When CDF cannot be reached, the
  newest stored version of each file is used (one WARNING), so training on prefetched data
  works offline.
* **which bytes** (:meth:`~SegmentStore.image`): the image store by file version, else a
  download; images are identified by their SHA-256 from then on.
* **which masks** (:meth:`~SegmentStore.lookup`, :meth:`~SegmentStore.segment`): cached results
  of every identity the backend may answer with (preferred first), keyed by the image's
  SHA-256, so masks always belong to exactly the pixels they are served with; misses go to the
  backend, and each answer is stored under the identity of whoever gave it (provenance).

Keys carry the cluster's origin (:func:`~cogseg_ml.cache.cache_keys.origin_of`): the same
project name on two clusters never shares an image or a mask.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.file_checks import check_segmentable
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.api.wire_schema import FileMetadata
from cogseg_ml.backends.base import BackendJob, MaskResult, SegmentationBackend
from cogseg_ml.cache.cache_keys import CacheKey, file_identity, file_key, origin_of
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import CachedResult, MaskCache
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import (
    ApiUnavailableError,
    CacheError,
    CogsegError,
    FileValidationError,
    NotFoundError,
    SampleError,
)
from cogseg_ml.image_decode import DEFAULT_MAX_PIXELS, decode_image, image_size
from cogseg_ml.prompts import FileRef, Prompt

__all__ = ["DEFAULT_MAX_PIXELS", "FileInfo", "ImageRecord", "SegmentStore", "cached_result",
           "decode_image", "image_size"]

_log = logging.getLogger("cogseg_ml.store")
BYIDS_CHUNK = 1000
PUT_BATCH = 64  # answers per cache transaction at most...
FLUSH_INTERVAL_S = 0.5  # ...and none waits longer than this to be stored
#: Implicit lookups reuse a version any store of this process resolved less than this long
#: ago (seconds, on :attr:`SegmentStore.clock`); explicit refreshes never do.
VERSION_TTL_S = 60.0
_RESOLVED: dict[tuple[str, str, FileRef], tuple[float, FileInfo]] = {}
_RESOLVED_LOCK = threading.Lock()
OUTAGE_MEMORY_S = 60.0  # after CDF failed to answer, use stored versions this long


@dataclass(frozen=True)
class FileInfo:
    """What the store knows of a file: its version and name (``None`` when offline)."""

    version: str
    name: str | None = None
    offline: bool = False
    unsegmentable: FileValidationError | None = None  # why the API cannot segment it


@dataclass(frozen=True)
class ImageRecord:
    """One stored image: which file and version, its bytes' SHA-256, its size and name."""

    file: FileRef
    file_key: str
    digest: str
    height: int
    width: int
    name: str | None = None

    @property
    def file_name(self) -> str:
        """A usable file name: the CDF file name, else the external id, else the id."""
        f = self.file
        if self.name:
            return self.name
        if f.external_id is not None:
            return f.external_id
        if f.id is not None:
            return str(f.id)
        assert f.instance_id is not None
        return f"{f.instance_id.space}/{f.instance_id.external_id}"


def file_version(meta: FileMetadata) -> str:
    """The version marker of a file's content: ``uploadedTime/lastUpdatedTime`` (ms)."""
    return f"{meta.uploaded_time or 0}/{meta.last_updated_time}"


def cached_result(result: MaskResult) -> CachedResult:
    """The cache entry for a backend's answer: the answer itself (one result type), dated
    now."""
    return dataclasses.replace(result, created=time.time())


class SegmentStore:
    """Read-through images and masks for one CDF project, one cache and one backend.

    Args:
        config: the CDF connection images come from.
        cache: the mask cache (the image store lives beside it).
        backend: where missing masks come from.
        max_pixels: refuse larger images before decoding them.
        download_workers: threads that download images in :meth:`records`.

    Attributes:
        clock: the monotonic clock (seconds) that ages the process-wide version memo and the
            memory of an outage; ``time.monotonic`` unless replaced (tests move it forward
            instead of waiting). Not pickled: workers use ``time.monotonic``.

    Pickles without live connections or threads; what it resolved (file versions) travels.
    """

    def __init__(self, config: CdfConfig, cache: MaskCache, backend: SegmentationBackend, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, download_workers: int = 8) -> None:
        self.config = config
        self.cache = cache
        self.images_store = ImageStore(cache)
        self.backend = backend
        self.max_pixels = max_pixels
        self.download_workers = download_workers
        self.origin = origin_of(config.base_url)
        self._info: dict[FileRef, FileInfo | CogsegError] = {}
        self._client: SegmentationClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._keys: dict[tuple[str, int, tuple[Prompt, ...]], list[CacheKey]] = {}
        self._file_keys: dict[tuple[FileRef, str], str] = {}
        self._warned_offline = False
        self._outage: tuple[float, ApiUnavailableError] | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._unsaved: list[tuple[CacheKey, CachedResult]] = []
        self.downloads = 0  # images this store downloaded (in this process)
        self.clock: Callable[[], float] = time.monotonic

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _pool=None, _keys={}, _file_keys={}, _lock=None,
                     _flush_lock=None, _unsaved=[], _outage=None)
        state.pop("clock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.clock = time.monotonic
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()

    @property
    def client(self) -> SegmentationClient:
        """A client on this process's segmentation session."""
        if self._client is None:
            self._client = SegmentationClient(self.config)
        return self._client

    def close(self) -> None:
        """Release the session and stop the download threads."""
        client, self._client = self._client, None
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if client is not None:
            client.close()

    # --- files ---------------------------------------------------------------------------------
    def resolve(self, refs: Iterable[FileRef], *, fresh: bool = False
                ) -> dict[FileRef, FileInfo | CogsegError]:
        """Version and name of each file (or why it cannot be used), one call per 1000.

        A file CDF does not know is a :class:`NotFoundError`; one the API cannot segment keeps
        the reason in ``unsegmentable`` (its image can still be read; its jobs fail with it).

        With ``fresh=True`` (an explicit refresh: the dataset's ``prefetch()``, the labeler's
        ``label()``) CDF is asked about every file, so content replaced moments ago is seen.
        Otherwise (an implicit lookup) a version this store already knows is used, else one
        any store of this process resolved less than ``VERSION_TTL_S`` ago (on
        :attr:`clock`), else CDF is asked. When CDF cannot be reached (or failed to answer
        less than ``OUTAGE_MEMORY_S`` ago), files with a stored version use it; the others
        carry the :class:`ApiUnavailableError`.
        """
        wanted = list(dict.fromkeys(refs))
        if fresh:
            todo = wanted
        else:
            self._recently_resolved([r for r in wanted if r not in self._info])
            todo = [r for r in wanted if r not in self._info]
        for i in range(0, len(todo), BYIDS_CHUNK):
            chunk = todo[i:i + BYIDS_CHUNK]
            if self._outage is not None and self.clock() < self._outage[0]:
                self._offline(chunk, self._outage[1])  # seen down moments ago: do not wait again
                continue
            try:
                metas = self.client.metadata_map(chunk)
            except ApiUnavailableError as exc:
                self._outage = (self.clock() + OUTAGE_MEMORY_S, exc)
                self._offline(chunk, exc)
                continue
            self._outage = None
            for ref in chunk:
                meta = metas.get(ref)
                if meta is None:
                    self._info[ref] = NotFoundError(
                        f"file {ref.describe()} does not exist in project "
                        f"{self.config.project!r}", status_code=400, missing=[ref.describe()])
                    continue
                why = None
                try:
                    check_segmentable(meta, ref)
                except FileValidationError as err:
                    why = err
                self._info[ref] = info = FileInfo(file_version(meta), meta.name, unsegmentable=why)
                with _RESOLVED_LOCK:
                    _RESOLVED[(self.origin, self.config.project, ref)] = (self.clock(), info)
        return {r: self._info[r] for r in wanted}

    def _recently_resolved(self, refs: Sequence[FileRef]) -> None:
        """Versions another store of this process resolved less than VERSION_TTL_S ago."""
        now = self.clock()
        with _RESOLVED_LOCK:
            for ref in refs:
                hit = _RESOLVED.get((self.origin, self.config.project, ref))
                if hit is not None and now - hit[0] < VERSION_TTL_S:
                    self._info[ref] = hit[1]

    def _offline(self, refs: Sequence[FileRef], exc: ApiUnavailableError) -> None:
        used = 0
        for ref in refs:
            version = self._stored_version(ref)
            if version is None:
                self._info[ref] = exc
            else:
                self._info[ref] = FileInfo(version, offline=True)
                used += 1
        if used and not self._warned_offline:
            self._warned_offline = True
            _log.warning("CDF cannot be reached (%s): using the stored version of %d files; "
                         "replaced content is not noticed until CDF answers again", exc, used)

    def _stored_version(self, ref: FileRef) -> str | None:
        prefix = file_identity(self.origin, self.config.project, ref) + "@"
        key = self.images_store.latest_key(prefix)
        return None if key is None else key[len(prefix):]

    def info(self, ref: FileRef) -> FileInfo:
        """The file's version and name.

        Raises:
            CogsegError: why the file cannot be used (unknown, unsegmentable, unreachable).
        """
        got = self.resolve([ref])[ref]
        if isinstance(got, CogsegError):
            raise got
        return got

    # --- images --------------------------------------------------------------------------------
    def file_key(self, ref: FileRef, info: FileInfo) -> str:
        """The image store's key of one version of a file (worked out once per process)."""
        memo = (ref, info.version)
        key = self._file_keys.get(memo)
        if key is None:
            key = file_key(self.origin, self.config.project, ref, info.version)
            if len(self._file_keys) >= 100_000:
                self._file_keys.clear()
            self._file_keys[memo] = key
        return key

    def image(self, ref: FileRef, *, stored: tuple[bytes, str] | None = None
              ) -> tuple[bytes, ImageRecord]:
        """The file's bytes and record: from the image store, else downloaded and stored.

        ``stored``: the file's bytes and SHA-256 as :meth:`stored_images` read them (for many
        files at once), used instead of reading the image store again.

        Raises:
            CogsegError: unknown, unsegmentable, unreachable, or not a readable image.
        """
        info = self.info(ref)
        key = self.file_key(ref, info)
        found = stored if stored is not None else self.images_store.get_with_digest(key)
        if found is None:
            data = self.client.download(ref)
            found = data, self.images_store.put(key, data)
            with self._lock:
                self.downloads += 1
        data, digest = found
        h, w = image_size(data, ref, self.max_pixels)
        return data, ImageRecord(ref, key, digest, h, w, info.name)

    def stored_images(self, refs: Sequence[FileRef]) -> dict[FileRef, tuple[bytes, str]]:
        """The bytes and SHA-256 of the files whose known version is in the image store, read
        with one index query for all: what :meth:`image` would read for each (pass it as
        ``stored=``). Files whose version this store has not resolved yet, or that are not
        stored, are left out; nothing is asked of CDF and nothing is downloaded."""
        keys: dict[FileRef, str] = {}
        for ref in refs:
            info = self._info.get(ref)
            if isinstance(info, FileInfo):
                keys[ref] = self.file_key(ref, info)
        found = self.images_store.get_many_with_digest(list(keys.values()))
        return {ref: found[key] for ref, key in keys.items() if key in found}

    def records(self, refs: Sequence[FileRef], *, fresh: bool = False
                ) -> list[ImageRecord | CogsegError]:
        """:meth:`image` for many files at once (one metadata call per 1000, downloads on
        ``download_workers`` threads shared by all calls); records in input order.

        ``fresh=True`` asks CDF for every file's version first (see :meth:`resolve`), so a
        file replaced moments ago is downloaded again; otherwise known versions are used.

        Raises:
            CacheError: the image store cannot be written (e.g. the disk is full): no file
                could be stored, so this is not one file's failure.
        """
        self.resolve(refs, fresh=fresh)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.download_workers,
                                            thread_name_prefix="cogseg-download")
        futures = {r: self._pool.submit(self.image, r) for r in dict.fromkeys(refs)}
        out: list[ImageRecord | CogsegError] = []
        for r in refs:
            try:
                out.append(futures[r].result()[1])
            except CacheError:
                raise
            except CogsegError as exc:
                out.append(exc)
        return out

    def loader(self, rec: ImageRecord) -> Callable[[], bytes]:
        """A function returning the record's bytes from the image store (for local models)."""
        def load() -> bytes:
            data = self.images_store.get(rec.file_key)
            if data is None:
                raise SampleError(f"image of {rec.file.describe()} left the image store")
            return data

        return load

    # --- masks ---------------------------------------------------------------------------------
    def mask_keys(self, rec: ImageRecord, prompts: Sequence[Prompt], identity: int = 0
                  ) -> list[CacheKey]:
        """Cache keys of prompts on an image for one backend identity (0: the preferred)."""
        memo_key = (rec.digest, identity, tuple(prompts))
        keys = self._keys.get(memo_key)
        if keys is None:
            name, version = self.backend.identities()[identity]
            keys = [CacheKey(self.config.project, rec.file, p, name, file_version=rec.digest,
                             model_version=version, origin=self.origin) for p in prompts]
            if len(self._keys) >= 100_000:
                self._keys.clear()
            self._keys[memo_key] = keys
        return keys

    def lookup(self, rec: ImageRecord, prompts: Sequence[Prompt]) -> list[CachedResult | None]:
        """Cached results of prompts on an image, any identity the backend may answer with."""
        return self.lookup_many([(rec, prompts)])[0]

    def lookup_many(self, requests: Sequence[tuple[ImageRecord, Sequence[Prompt]]]
                    ) -> list[list[CachedResult | None]]:
        """:meth:`lookup` for several images at once: one cache read per backend identity for
        all of them, results in the order asked."""
        keys = [self.mask_keys(rec, prompts) for rec, prompts in requests]
        flat: list[CachedResult | None] = self.cache.get_many([k for ks in keys for k in ks])
        out: list[list[CachedResult | None]] = []
        at = 0
        for ks in keys:
            out.append(flat[at:at + len(ks)])
            at += len(ks)
        for ident in range(1, len(self.backend.identities())):
            missing = [(n, i) for n, results in enumerate(out)
                       for i, r in enumerate(results) if r is None]
            if not missing:
                break
            other = [self.mask_keys(rec, prompts, ident) for rec, prompts in requests]
            for (n, i), r in zip(missing, self.cache.get_many([other[n][i] for n, i in missing]),
                                 strict=True):
                out[n][i] = r
        return out

    def present(self, rec: ImageRecord, prompts: Sequence[Prompt], *,
                preferred_only: bool = False) -> list[bool]:
        """Whether each prompt's result is cached (no decoding): under any identity the
        backend may answer with, or with ``preferred_only`` under the preferred one (the
        labeler's rule: a fallback's answer is redone when the preferred backend is back)."""
        hits = [False] * len(prompts)
        n = 1 if preferred_only else len(self.backend.identities())
        for ident in range(n):
            todo = [i for i, h in enumerate(hits) if not h]
            if not todo:
                break
            keys = self.mask_keys(rec, prompts, ident)
            for i, h in zip(todo, self.cache.keys_present([keys[i] for i in todo]),
                            strict=True):
                hits[i] = h
        return hits

    def segment(self, items: Iterable[tuple[ImageRecord, Prompt, Any]]
                ) -> Generator[tuple[Any, ImageRecord, CachedResult | None, CogsegError | None],
                               None, None]:
        """Run ``(record, prompt, tag)`` items on the backend (read lazily), store each answer
        under the identity of whoever gave it, and yield ``(tag, record, result, error)``."""
        pending: dict[int, tuple[ImageRecord, Prompt, Any]] = {}
        lock = threading.Lock()
        counter = iter(range(1 << 62))

        refused: list[tuple[Any, ImageRecord, FileValidationError]] = []

        def jobs() -> Iterator[BackendJob]:
            for rec, prompt, tag in items:
                info = self._info.get(rec.file)
                if isinstance(info, FileInfo) and info.unsegmentable is not None:
                    with lock:
                        refused.append((tag, rec, info.unsegmentable))
                    continue
                n = next(counter)
                with lock:
                    pending[n] = (rec, prompt, tag)
                yield BackendJob(SegmentRequest(rec.file, prompt, tag=n), rec.height,
                                 rec.width, rec.digest, self.loader(rec), file_checked=True)

        stop = threading.Event()
        flusher = threading.Thread(target=self._flush_every, args=(stop,), daemon=True,
                                   name="cogseg-store-flush")
        flusher.start()
        try:
            for out in self.backend.run(jobs()):
                with lock:
                    rec, prompt, tag = pending.pop(out.job.request.tag)
                if out.result is None:
                    yield tag, rec, None, out.error or CogsegError("the backend gave no result")
                    continue
                res = cached_result(out.result)
                with self._lock:
                    self._unsaved.append((self._answer_key(rec, prompt, res), res))
                    full = len(self._unsaved) >= PUT_BATCH
                if full:
                    self.flush()
                yield tag, rec, res, None
                while refused:
                    with lock:
                        tag, rec, why = refused.pop()
                    yield tag, rec, None, why
            while refused:
                tag, rec, why = refused.pop()
                yield tag, rec, None, why
        except BaseException:  # Ctrl-C, SIGTERM, an error, or the consumer closing us
            stop.set()
            flusher.join()
            try:
                self.flush()  # keep what finished
            except CogsegError as exc:
                # Never raise from here: close() also runs at garbage collection, where an
                # error is lost. The results stay unsaved for the next flush.
                with self._lock:
                    unsaved = len(self._unsaved)
                _log.warning("%d finished results could not be stored yet: %s", unsaved, exc)
            raise
        else:
            stop.set()
            flusher.join()
            self.flush()  # a normal end reports a failed write

    def _flush_every(self, stop: threading.Event) -> None:
        """Store answers within ``FLUSH_INTERVAL_S`` of arriving, however slow the rest is."""
        while not stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except CogsegError as exc:  # kept unsaved: the next flush (or the last) tries again
                _log.debug("periodic cache write failed, retried later: %s", exc)

    def flush(self) -> None:
        """Write the results :meth:`segment` has not stored yet (it batches its writes).

        A failed write keeps them for the next flush, so nothing finished is dropped. When it
        returns, every answer stored before the call is readable: a flush in progress on
        another thread (the timed one) is waited for, not skipped.
        """
        with self._flush_lock:
            with self._lock:
                batch, self._unsaved = self._unsaved, []
            if not batch:
                return
            try:
                self.cache.put_many(batch)
            except BaseException:
                with self._lock:
                    self._unsaved[:0] = batch
                raise

    def _answer_key(self, rec: ImageRecord, prompt: Prompt, res: CachedResult) -> CacheKey:
        return CacheKey(self.config.project, rec.file, prompt, res.backend,
                        file_version=rec.digest, model_version=res.model_version,
                        origin=self.origin)
