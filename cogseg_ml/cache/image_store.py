"""Image bytes beside the mask cache, so training epochs do not download an image again.

Blobs are content-addressed (``images/ab/<sha256>``), written to a per-process temporary file
and moved into place with ``os.replace`` (readers never see a partial file), owner-only. The
index (file identity and version → hash, size, last access) lives in the mask cache's SQLite
file, table ``images``; the store has its own size budget with least-recently-used eviction.
Reads never take the write lock: their accesses are batched by the mask cache (see
:mod:`cogseg_ml.cache.mask_cache`), so the LRU order is approximate in the same way.
File names are hashes, so no file id can reach outside the store's folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from cogseg_ml.cache.mask_cache import MaskCache

__all__ = ["ImageStore"]


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

    def __repr__(self) -> str:
        return f"ImageStore(root={str(self.root)!r})"

    def _blob(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def get(self, file_key: str) -> bytes | None:
        """The stored bytes for a file key, or ``None`` (also when the blob went missing)."""
        found = self.get_with_digest(file_key)
        return None if found is None else found[0]

    def get_with_digest(self, file_key: str) -> tuple[bytes, str] | None:
        """The stored bytes and their verified SHA-256 hex, or ``None``."""
        row = self.cache._retry(lambda: self.cache._conn().execute(
            "SELECT sha256, last_access FROM images WHERE file_key = ?", (file_key,)
        ).fetchone())
        if row is None:
            return None
        try:
            data = self._blob(row[0]).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != row[0]:  # corrupted on disk: treat as a miss
            return None
        now = time.time()
        if now - row[1] > self.cache.touch_interval_s:  # LRU bookkeeping: written later, batched
            self.cache._touch("images", (file_key,), now)
        return data, row[0]

    def put(self, file_key: str, data: bytes) -> str:
        """Store bytes for a file key; returns their SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        path = self._blob(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # A name unique to this write (threads of one process may store the same bytes at
            # once); mkstemp creates it owner-only.
            fd, name = tempfile.mkstemp(prefix=f".{sha}.", suffix=".incomplete",
                                        dir=path.parent)
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
        now = time.time()
        self.cache._write(lambda c: c.execute(
            "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)", (file_key, sha, len(data), now)))
        if self.max_bytes is not None:
            self._puts_since_check += 1
            if self._puts_since_check >= 16 or len(data) > self.max_bytes // 16:
                self._puts_since_check = 0
                self.evict()
        return sha

    def evict(self) -> int:
        """Drop least-recently-used images beyond ``max_bytes``; returns how many."""
        if self.max_bytes is None:
            return 0
        budget = self.max_bytes

        def run(c: object) -> list[str]:
            conn = self.cache._conn()
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

        gone = self.cache._write(run)
        for sha in gone:
            self._blob(sha).unlink(missing_ok=True)
        return len(gone)
