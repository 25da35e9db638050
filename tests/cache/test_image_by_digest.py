"""Images read back by content digest (what a labels file records), verified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.errors import ValidationError


def test_bytes_come_back_by_their_digest_and_corruption_is_a_miss(tmp_path: Path) -> None:
    store = ImageStore(MaskCache(tmp_path / "cache"))
    data = b"\x89PNG fake image bytes " * 10
    sha = store.put("file:1@v1", data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.get_by_digest(sha) == data
    assert store.get_by_digest(hashlib.sha256(b"other").hexdigest()) is None
    blob = next(p for p in (tmp_path / "cache").rglob(sha))
    blob.write_bytes(b"corrupted")
    assert store.get_by_digest(sha) is None and not blob.exists()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ab" * 31, "AB" * 32, ""])
def test_a_digest_that_is_not_a_sha256_is_refused(tmp_path: Path, bad: str) -> None:
    store = ImageStore(MaskCache(tmp_path / "cache"))
    with pytest.raises(ValidationError, match="64 lowercase hexadecimal"):
        store.get_by_digest(bad)
