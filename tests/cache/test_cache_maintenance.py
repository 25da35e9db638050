"""Merging, clearing and opening caches at the edges: missing paths, the same file twice,
read-only locations, a full disk; the image store travels with merges and is owner-only."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.cache.merge import merge
from cogseg_ml.errors import CacheError, ValidationError
from tests.cache.test_mask_cache import key, result

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_permissions = pytest.mark.skipif(AS_ROOT, reason="root ignores file permissions")


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# --- opening ----------------------------------------------------------------------------------


def test_an_existing_cache_only_is_opened_when_asked(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="no mask cache") as info:
        MaskCache(tmp_path / "typo", create=False)
    assert "typo" in str(info.value)
    assert not (tmp_path / "typo").exists()
    with pytest.raises(CacheError, match="no mask cache"):
        MaskCache(tmp_path, create=False)  # an existing folder without a cache in it
    assert list(tmp_path.iterdir()) == []
    MaskCache(tmp_path / "real").put(key(1), result(1))
    assert MaskCache(tmp_path / "real", create=False).get(key(1)) is not None


def test_a_cache_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError) as info:
        MaskCache(blocker / "cache")
    msg = str(info.value)
    assert str(blocker) in msg and "choose" in msg


@needs_permissions
def test_a_cache_in_a_read_only_folder_is_a_clear_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(CacheError) as info:
            MaskCache(ro / "cache")
        assert str(ro) in str(info.value) and "writable" in str(info.value)
        MaskCache(tmp_path / "rw").close()
        (tmp_path / "rw").chmod(0o555)
        with pytest.raises(CacheError, match="writable"):
            MaskCache(tmp_path / "rw").put(key(1), result(1))
    finally:
        ro.chmod(0o755)
        (tmp_path / "rw").chmod(0o755)


# --- a full disk ------------------------------------------------------------------------------


def _limit_pages(cache: MaskCache, extra: int = 0) -> None:
    """Cap this thread's connection at the file's current size: SQLite's own 'disk is full'."""
    conn = cache.db.connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + extra}")


def test_a_full_disk_says_so_and_leaves_the_cache_intact(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    cache.put_many([(key(i), result(i)) for i in range(3)])
    _limit_pages(cache)
    with pytest.raises(CacheError) as info:
        cache.put_many([(key(i), result(i, h=200, w=200)) for i in range(10, 60)])
    msg = str(info.value)
    assert "disk is full" in msg and "intact" in msg and "rollback" not in msg
    assert cache.integrity_check() and cache.stats().entries == 3
    assert all(cache.get(key(i)) is not None for i in range(3))
    cache.close()
    again = MaskCache(tmp_path)  # a new connection has no cap: space was "freed"
    again.put(key(10), result(10))
    assert again.stats().entries == 4


def test_image_bytes_on_a_full_disk_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    cache = MaskCache(tmp_path)
    store = ImageStore(cache)
    store.put("kept", b"first image")
    real_fdopen = os.fdopen

    class FullFile:
        def __init__(self, fd: int, mode: str) -> None:
            self._f = real_fdopen(fd, mode)

        def __enter__(self) -> FullFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("cogseg_ml.cache.image_store.os.fdopen", FullFile)
    with pytest.raises(CacheError) as info:
        store.put("new", b"second image" * 100)
    assert "disk is full" in str(info.value) and "intact" in str(info.value)
    monkeypatch.undo()
    assert store.get("new") is None and store.get("kept") == b"first image"
    assert not [p for p in _files(store.root) if p.name.endswith(".incomplete")]


# --- the image store's folder ----------------------------------------------------------------


def test_the_image_folder_is_owner_only_like_its_files(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path / "c")
    store = ImageStore(cache)
    store.put("f", b"data")
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    for p in store.root.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


def test_a_corrupted_blob_is_replaced_by_the_next_put(tmp_path: Path) -> None:
    store = ImageStore(MaskCache(tmp_path))
    sha = store.put("f", b"good bytes")
    store._blob(sha).write_bytes(b"bad")
    assert store.get("f") is None
    store.put("f", b"good bytes")
    assert store.get("f") == b"good bytes"


# --- merge ------------------------------------------------------------------------------------


def test_merge_copies_the_image_index_and_its_blobs(tmp_path: Path) -> None:
    a, b = MaskCache(tmp_path / "a"), MaskCache(tmp_path / "b")
    ImageStore(a).put("in-a", b"A" * 50)
    src = ImageStore(b)
    src.put("in-b", b"B" * 50)
    src.put("also-b", b"C" * 70)
    b.put(key(1), result(1))
    got = merge(a, b)
    assert (got.entries, got.images) == (1, 2)
    dst = ImageStore(a)
    assert dst.get("in-b") == b"B" * 50 and dst.get("also-b") == b"C" * 70
    assert dst.get("in-a") == b"A" * 50
    assert all(str(p).startswith(str(tmp_path / "a")) for p in _files(dst.root))
    for p in _files(dst.root):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    again = merge(a, b)  # nothing new the second time
    assert (again.entries, again.images) == (0, 0)
    assert merge(a, tmp_path / "b").entries == 0  # a path names the source too


def test_merge_skips_source_images_whose_bytes_are_missing_or_corrupt(tmp_path: Path) -> None:
    a, b = MaskCache(tmp_path / "a"), MaskCache(tmp_path / "b")
    src = ImageStore(b)
    src._blob(src.put("corrupt", b"x" * 10)).write_bytes(b"y" * 10)
    src._blob(src.put("gone", b"z" * 10)).unlink()
    src.put("fine", b"w" * 10)
    assert merge(a, b).images == 1
    dst = ImageStore(a)
    assert dst.get("fine") == b"w" * 10 and dst.get("corrupt") is None and dst.get("gone") is None


def test_merge_of_two_caches_sharing_one_folder(tmp_path: Path) -> None:
    a, b = MaskCache(tmp_path / "a.sqlite"), MaskCache(tmp_path / "b.sqlite")
    ImageStore(b).put("f", b"shared folder")
    assert merge(a, b).images == 1 and ImageStore(a).get("f") == b"shared folder"


def test_merge_refuses_a_missing_source_and_creates_nothing(tmp_path: Path) -> None:
    a = MaskCache(tmp_path / "a")
    for missing in (tmp_path / "typo", tmp_path / "typo.sqlite", tmp_path / "no" / "dir"):
        with pytest.raises(CacheError, match="no mask cache") as info:
            _merged(a, missing)
        assert missing.name in str(info.value)
        assert not missing.exists() and not missing.parent.joinpath("masks.sqlite").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.timeout(20)
def test_merge_into_itself_is_refused_at_once(tmp_path: Path) -> None:
    a = MaskCache(tmp_path / "a")
    a.put(key(1), result(1))
    for same in (tmp_path / "a", tmp_path / "a" / "masks.sqlite", a,
                 tmp_path / "x" / ".." / "a"):
        with pytest.raises(ValidationError, match="itself"):
            _merged(a, same)  # type: ignore[arg-type]
    assert a.stats().entries == 1


def test_merge_into_a_full_disk_says_so(tmp_path: Path) -> None:
    a, b = MaskCache(tmp_path / "a"), MaskCache(tmp_path / "b")
    b.put_many([(key(i), result(i, h=200, w=200)) for i in range(40)])
    a.put(key(100), result(100))
    _limit_pages(a)
    with pytest.raises(CacheError, match="disk is full"):
        merge(a, b)
    assert a.integrity_check() and a.stats().entries == 1


# --- clear ------------------------------------------------------------------------------------


def test_clear_images_removes_index_and_blobs(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    cache.put(key(1), result(1))
    store = ImageStore(cache)
    store.put("f1", b"one" * 10)
    store.put("f2", b"two" * 20)
    assert cache.clear() == 1 and store.get("f1") == b"one" * 10  # entries only
    removed = store.clear()
    assert (removed.images, removed.bytes) == (2, 90)
    assert store.get("f1") is None and cache.stats().images == 0
    assert _files(store.root) == set()


def test_clear_images_while_another_thread_reads(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    store = ImageStore(cache)
    for i in range(20):
        store.put(f"f{i}", bytes([i]) * 64)
    seen: list[Any] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(store.get("f3"))

    t = threading.Thread(target=read)
    t.start()
    try:
        assert store.clear().images == 20
    finally:
        done.set()
        t.join()
    assert all(v in (None, bytes([3]) * 64) for v in seen)


def _merged(target: MaskCache, other: object) -> int:
    """Entries :func:`merge` copied."""
    return merge(target, other).entries  # type: ignore[arg-type]
