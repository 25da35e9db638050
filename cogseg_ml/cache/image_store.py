"""Image bytes beside the mask cache, so training epochs do not download an image again.

Blobs are content-addressed (``images/ab/<sha256>``), written to a per-process temporary file
and moved into place with ``os.replace`` (readers never see a partial file), owner-only (the
folders 0700, the files 0600). The index (file identity and version → hash, size, last access)
lives in the mask cache's SQLite file, table ``images``, reached through that file's one owner
(:class:`~cogseg_ml.cache.database.CacheDatabase`); the store has its own size budget with
least-recently-used eviction. Reads never take the write lock: their accesses are batched by
that owner, so the LRU order is approximate as the mask cache's is. File names are hashes, so
no file id can reach outside the store's folder. A blob whose bytes no longer match their hash
is dropped when read (the next put writes it again). Caches merged with
:func:`cogseg_ml.cache.merge.merge` bring their images along (:meth:`ImageStore.merge_from`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cogseg_ml.cache.database import CacheDatabase
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.errors import ValidationError

__all__ = ["ImageStore", "ImagesRemoved"]

_log = logging.getLogger("cogseg_ml.cache")


@dataclass(frozen=True)
class ImagesRemoved:
    """What :meth:`ImageStore.clear` removed: index entries and their stored bytes."""

    images: int
    bytes: int


class ImageStore:
    """Content-addressed image bytes indexed by file identity.

    Args:
        cache: the mask cache whose SQLite file holds the index; blobs go beside it.
        max_bytes: evict least-recently-used images beyond this total size.
    """

    def __init__(self, cache: MaskCache, *, max_bytes: int | None = 20 * 1024**3) -> None:
        self.cache = cache
        self.root = cache.path.parent / "images"
        self.max_bytes = max_bytes
        self._puts_since_check = 0
        self._root_ready = False

    @property
    def db(self) -> CacheDatabase:
        """The SQLite file's owner, shared with the mask cache (the index is its table)."""
        return self.cache.db

    def __repr__(self) -> str:
        return f"ImageStore(root={str(self.root)!r})"

    def _blob(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def get(self, file_key: str) -> bytes | None:
        """The stored bytes for a file key, or ``None`` (also when the blob went missing)."""
        found = self.get_with_digest(file_key)
        return None if found is None else found[0]

    def latest_key(self, prefix: str) -> str | None:
        """The most recently used stored file key that starts with ``prefix`` (e.g. a file's
        identity followed by ``@``: its latest stored version), or ``None``."""
        row = self.db.retry(lambda: self.db.connection().execute(
            "SELECT file_key FROM images WHERE file_key >= ? AND file_key < ? "
            "ORDER BY last_access DESC LIMIT 1", (prefix, prefix + "\uffff")).fetchone())
        return None if row is None else str(row[0])

    def get_with_digest(self, file_key: str) -> tuple[bytes, str] | None:
        """The stored bytes and their verified SHA-256 hex, or ``None``."""
        row = self.db.retry(lambda: self.db.connection().execute(
            "SELECT sha256, last_access FROM images WHERE file_key = ?", (file_key,)
        ).fetchone())
        if row is None:
            return None
        data = self._read_verified(row[0])
        if data is None:
            return None
        now = time.time()
        if now - row[1] > self.cache.touch_interval_s:  # LRU bookkeeping: written later, batched
            self.db.touch("images", (file_key,), now)
        return data, row[0]

    def get_many_with_digest(self, file_keys: Sequence[str]) -> dict[str, tuple[bytes, str]]:
        """:meth:`get_with_digest` for many file keys, their index rows read with one query
        (per 500 keys): ``{file_key: (bytes, sha256)}`` for those stored (and verified)."""
        keys = list(dict.fromkeys(file_keys))
        rows: list[tuple[str, str, float]] = []

        def read() -> None:
            conn = self.db.connection()
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                rows.extend(conn.execute(
                    f"SELECT file_key, sha256, last_access FROM images WHERE file_key IN "
                    f"({marks})", chunk))

        self.db.retry(read)
        out: dict[str, tuple[bytes, str]] = {}
        now = time.time()
        stale = []
        for key, sha, last_access in rows:
            data = self._read_verified(sha)
            if data is None:
                continue
            out[key] = data, sha
            if now - last_access > self.cache.touch_interval_s:
                stale.append(key)
        if stale:  # LRU bookkeeping: written later, batched
            self.db.touch("images", stale, now)
        return out

    def get_by_digest(self, sha256: str) -> bytes | None:
        """The stored bytes whose SHA-256 hex is ``sha256`` (verified), or ``None``.

        For readers that know an image by content only (a labels file records the ``sha256``
        of each image it labelled): no file version, no CDF call.

        Raises:
            ValidationError: ``sha256`` is not 64 hexadecimal digits.
        """
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValidationError(f"an image digest is 64 lowercase hexadecimal digits (a "
                                  f"SHA-256), got {sha256[:80]!r}")
        return self._read_verified(sha256)

    def has_digest(self, sha256: str) -> bool:
        """Whether bytes with this SHA-256 hex are stored (not read, so not verified)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            return False
        return self._blob(sha256).is_file()

    def _read_verified(self, sha: str) -> bytes | None:
        blob = self._blob(sha)
        try:
            data = blob.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if hashlib.sha256(data).hexdigest() != sha:  # corrupted on disk: a miss, rewritten
            _log.warning("image blob %s does not match its hash; dropped", blob.name)
            blob.unlink(missing_ok=True)
            return None
        return data

    def put(self, file_key: str, data: bytes) -> str:
        """Store bytes for a file key; returns their SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        path = self._blob(sha)
        if not path.exists():
            self._write_blob(path, data)
        now = time.time()
        self.db.write(lambda c: c.execute(
            "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)", (file_key, sha, len(data), now)))
        if self.max_bytes is not None:
            self._puts_since_check += 1
            if self._puts_since_check >= 16 or len(data) > self.max_bytes // 16:
                self._puts_since_check = 0
                self.evict()
        return sha

    def _ensure_root(self) -> None:
        """Create the store's folder owner-only (and tighten one an older version made)."""
        if self._root_ready:
            return
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = self.root.stat()
        if st.st_mode & 0o077 and st.st_uid == getattr(os, "getuid", lambda: -1)():
            os.chmod(self.root, 0o700)
        self._root_ready = True

    def _write_blob(self, path: Path, data: bytes) -> None:
        """Write one blob under a temporary name and move it into place."""
        tmp: Path | None = None
        try:
            self._ensure_root()
            path.parent.mkdir(exist_ok=True, mode=0o700)
            # A name unique to this write (threads of one process may store the same bytes at
            # once); mkstemp creates it owner-only.
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".incomplete",
                                        dir=path.parent)
            tmp = Path(name)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            err = self.db.storage_error(exc, self.root)
            if err is None:
                raise
            raise err from exc
        finally:
            if tmp is not None and tmp.exists():
                tmp.unlink()

    def _indexed(self, file_keys: Sequence[str]) -> set[str]:
        """Which of ``file_keys`` this store's index holds."""
        have: set[str] = set()

        def read() -> None:
            conn = self.db.connection()
            for i in range(0, len(file_keys), 500):
                chunk = file_keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                have.update(r[0] for r in conn.execute(
                    f"SELECT file_key FROM images WHERE file_key IN ({marks})", chunk))

        self.db.retry(read)
        return have

    def merge_from(self, other: ImageStore) -> int:
        """Copy the images of another store that this one lacks; returns how many.

        Bytes are verified against their hash on the way; an entry whose bytes are missing or
        damaged in ``other`` is skipped (it is downloaded again when needed).
        """
        rows: list[tuple[str, str, int, float]] = other.db.retry(
            lambda: other.db.connection().execute(
                "SELECT file_key, sha256, nbytes, last_access FROM images ORDER BY last_access"
            ).fetchall())
        have = self._indexed([r[0] for r in rows])
        todo = []
        for row in rows:
            if row[0] in have:
                continue
            sha = row[1]
            if not self._blob(sha).exists():
                try:
                    data = other._blob(sha).read_bytes()
                except FileNotFoundError:
                    continue
                if hashlib.sha256(data).hexdigest() != sha:
                    continue
                self._write_blob(self._blob(sha), data)
            todo.append(row)
        if not todo:
            return 0
        added = self.db.write(lambda c: c.executemany(
            "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?)", todo).rowcount)
        if self.max_bytes is not None:
            self.evict()
        return int(added)

    def clear(self) -> ImagesRemoved:
        """Remove every image from the index and its bytes from the folder."""
        def run(c: object) -> list[tuple[str, int]]:
            conn = self.db.connection()
            rows = conn.execute("SELECT sha256, nbytes FROM images").fetchall()
            conn.execute("DELETE FROM images")
            return [(str(s), int(n)) for s, n in rows]

        rows = self.db.write(run)
        self._drop_blobs({s for s, _ in rows})
        return ImagesRemoved(images=len(rows), bytes=sum(n for _, n in rows))

    def _drop_blobs(self, shas: set[str]) -> None:
        """Unlink blobs no index entry names any more (another writer may have added one)."""
        live = {s for (s,) in self.db.retry(lambda: self.db.connection().execute(
            "SELECT sha256 FROM images").fetchall())}
        for sha in shas - live:
            blob = self._blob(sha)
            blob.unlink(missing_ok=True)
            try:
                blob.parent.rmdir()  # only when empty
            except OSError:
                pass

    def evict(self) -> int:
        """Drop least-recently-used images beyond ``max_bytes``; returns how many."""
        if self.max_bytes is None:
            return 0
        budget = self.max_bytes

        def run(c: object) -> list[str]:
            conn = self.db.connection()
            total = conn.execute("SELECT COALESCE(SUM(nbytes), 0) FROM images").fetchone()[0]
            doomed: list[tuple[str, str]] = []
            for key, sha, nbytes in conn.execute(
                    "SELECT file_key, sha256, nbytes FROM images ORDER BY last_access"):
                if total <= budget:
                    break
                doomed.append((key, sha))
                total -= nbytes
            conn.executemany("DELETE FROM images WHERE file_key = ?", [(k,) for k, _ in doomed])
            live = {s for (s,) in conn.execute("SELECT sha256 FROM images")}
            return [s for _, s in doomed if s not in live]

        gone = self.db.write(run)
        for sha in gone:
            self._blob(sha).unlink(missing_ok=True)
        return len(gone)
