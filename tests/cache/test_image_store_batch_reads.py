"""Many images' index rows read with one query: what one-by-one reads give, verified."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import MaskCache


def test_many_reads_are_the_single_reads(tmp_path: Path) -> None:
    store = ImageStore(MaskCache(tmp_path / "cache"))
    blobs = {"file:1@v1": b"one " * 50, "file:2@v1": b"two " * 50, "file:3@v9": b"one " * 50}
    for key, data in blobs.items():
        store.put(key, data)
    asked = ["file:2@v1", "file:1@v1", "file:404@v1", "file:3@v9", "file:1@v1"]
    got = store.get_many_with_digest(asked)
    assert got == {k: store.get_with_digest(k) for k in blobs}
    assert got["file:3@v9"] == (blobs["file:3@v9"],
                                hashlib.sha256(blobs["file:3@v9"]).hexdigest())
    assert store.get_many_with_digest([]) == {}


def test_a_damaged_blob_is_a_miss_and_is_dropped(tmp_path: Path) -> None:
    store = ImageStore(MaskCache(tmp_path / "cache"))
    sha = store.put("file:1@v1", b"image bytes " * 20)
    store.put("file:2@v1", b"other bytes " * 20)
    blob = next(p for p in (tmp_path / "cache").rglob(sha))
    blob.write_bytes(b"damaged")
    assert set(store.get_many_with_digest(["file:1@v1", "file:2@v1"])) == {"file:2@v1"}
    assert not blob.exists()


def test_reads_are_noted_for_the_lru_order(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path / "cache")
    store = ImageStore(cache)
    store.put("file:1@v1", b"a" * 64)
    store.put("file:2@v1", b"b" * 64)
    cache.touch_interval_s = 0.0
    cache.touch_batch, cache.touch_flush_s = 1000, 3600.0  # noted, not written yet
    before = cache.db.pending_touches()
    store.get_many_with_digest(["file:1@v1", "file:2@v1"])
    assert cache.db.pending_touches() == before + 2
