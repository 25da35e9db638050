"""MaskCache and ImageStore on a real SQLite file, with many processes and kills."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cogseg_ml import CacheError, FileRef, InstanceId, Point, Prompt
from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import CachedResult, CachedSegment, MaskCache
from cogseg_ml.cache.merge import merge
from cogseg_ml.errors import CacheVersionError
from cogseg_ml.mask_codec import encode


def result(seed: int = 0, h: int = 20, w: int = 30, n: int = 2,
           backend: str = "cdf-api") -> CachedResult:
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < 0.3
    segs = tuple(CachedSegment(float(0.9 - i * 0.1), r) for i, r in enumerate(encode(masks)))
    return CachedResult(segments=segs, height=h, width=w, backend=backend, job_id=seed)


def key(i: int = 0, backend: str = "cdf-api", **kw: object) -> CacheKey:
    return CacheKey(project="p", file=FileRef(id=1000 + i),
                    prompt=Prompt(points=(Point(0.5, 0.25),)), backend=backend, **kw)  # type: ignore[arg-type]


def test_put_get_round_trip(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    r = result(1)
    cache.put(key(1), r)
    got = cache.get(key(1))
    assert got is not None and got.segments == r.segments and got.job_id == 1
    assert got.masks().shape == (2, 20, 30)
    assert cache.get(key(2)) is None and cache.contains(key(1)) and not cache.contains(key(2))
    assert cache.get_many([key(2), key(1)])[1] == got
    assert cache.delete(key(1)) and not cache.delete(key(1))


def test_key_canonical_form() -> None:
    p1 = Prompt(points=(Point(0.1, 0.2), Point(0.3, 0.4, 0)))
    p2 = Prompt(points=(Point(0.3, 0.4, 0), Point(0.1, 0.2000000001)))
    f = FileRef(id=5)
    assert CacheKey("p", f, p1, "cdf-api").fingerprint() == CacheKey("p", f, p2, "cdf-api"
                                                                     ).fingerprint()
    base = CacheKey("p", f, p1, "cdf-api", file_version=1, model_version="beta")
    for other in (CacheKey("q", f, p1, "cdf-api", file_version=1, model_version="beta"),
                  CacheKey("p", FileRef(id=6), p1, "cdf-api", 1, "beta"),
                  CacheKey("p", f, p1, "local-sam", 1, "beta"),
                  CacheKey("p", f, p1, "cdf-api", 2, "beta"),
                  CacheKey("p", f, p1, "cdf-api", 1, "vit_b"),
                  CacheKey("p", f, Prompt(points=(Point(0.1, 0.2),)), "cdf-api", 1, "beta")):
        assert other.fingerprint() != base.fingerprint()


def test_api_and_local_results_never_answer_for_each_other(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    cache.put(key(0, "cdf-api"), result(0))
    assert cache.get(key(0, "local-sam")) is None
    cache.put(key(0, "local-sam"), result(5, backend="local-sam"))
    assert cache.get(key(0, "cdf-api")).backend == "cdf-api"  # type: ignore[union-attr]
    assert cache.stats().by_backend == {"cdf-api": 1, "local-sam": 1}


@pytest.mark.parametrize("xid", ["../../etc/passwd", "a/b\\c", "ünïcødé ✓ 画像.png",
                                 "x" * 5000, "\x00weird"])
def test_bad_keys_are_safe(tmp_path: Path, xid: str) -> None:
    cache = MaskCache(tmp_path / "c")
    store = ImageStore(cache)
    k = CacheKey("p", FileRef(external_id=xid), Prompt(points=(Point(0.5, 0.5),)), "cdf-api")
    cache.put(k, result(3))
    assert cache.get(k) is not None
    store.put(k.file_key, b"\x89PNG bytes")
    assert store.get(k.file_key) == b"\x89PNG bytes"
    inside = {p.resolve() for p in (tmp_path / "c").rglob("*")}
    assert all(str(p).startswith(str((tmp_path / "c").resolve())) for p in inside)
    inst = CacheKey("p", FileRef(instance_id=InstanceId("s/..", xid)),
                    Prompt(points=(Point(0.5, 0.5),)), "cdf-api")
    cache.put(inst, result(4))
    assert cache.get(inst) is not None


def test_files_are_owner_only(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path / "c")
    cache.put(key(0), result(0))
    ImageStore(cache).put("f", b"data")
    for p in (tmp_path / "c").rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_file():
            assert mode & 0o077 == 0, (p, oct(mode))
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) & 0o077 == 0


def test_version_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    MaskCache(tmp_path).close()
    db = sqlite3.connect(tmp_path / "masks.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(CacheVersionError) as info:
        MaskCache(tmp_path)
    assert "schema version 99" in str(info.value) and "cogseg cache clear" in str(info.value)


def test_not_a_cache_file(tmp_path: Path) -> None:
    bad = tmp_path / "masks.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CacheError, match="not a cogseg mask cache"):
        MaskCache(bad)


def _last_read_at(cache: MaskCache, table: str, keys: list[str]) -> None:
    """Record ``keys`` of ``table`` as last read at 1, 2, ... seconds after the epoch (long
    ago, in this order), through a second connection: the LRU order is set, not slept for."""
    col = "key" if table == "entries" else "file_key"
    db = sqlite3.connect(cache.path, isolation_level=None, timeout=10)
    try:
        db.executemany(f"UPDATE {table} SET last_access = ? WHERE {col} = ?",
                       [(float(t), k) for t, k in enumerate(keys, start=1)])
    finally:
        db.close()


def test_lru_eviction_by_entries_and_bytes(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path, max_entries=10)
    cache.touch_interval_s = 0.0
    for i in range(10):
        cache.put(key(i), result(i))
    _last_read_at(cache, "entries", [key(i).fingerprint() for i in range(10)])  # 0 oldest
    cache.get(key(0))  # now the most recently used
    for i in range(10, 15):
        cache.put(key(i), result(i))
    cache.evict()
    assert cache.stats().entries == 10
    assert cache.contains(key(0)) and not cache.contains(key(1))
    assert cache.contains(key(14))
    size = cache.stats().bytes
    small = MaskCache(tmp_path / "b", max_bytes=size // 2)
    for i in range(15):
        small.put(key(i), result(i))
    small.evict()
    assert small.stats().bytes <= size // 2


def test_cache_pickles_as_settings(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path, max_entries=5)
    cache.put(key(1), result(1))
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.max_entries == 5 and clone.get(key(1)) is not None


def test_merge_and_export_coco(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    a, b = MaskCache(tmp_path / "a"), MaskCache(tmp_path / "b")
    for i in range(3):
        a.put(key(i), result(i))
    for i in range(2, 5):
        b.put(key(i), result(i))
    assert _merged(a, b) == 2 and a.stats().entries == 5
    from cogseg_ml.coco_io import export_cache

    n = export_cache(a, tmp_path / "out.json")
    coco = COCO(str(tmp_path / "out.json"))
    assert n == 5 and len(coco.getAnnIds()) == 5 and len(coco.getImgIds()) == 5
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert coco.annToMask(ann).sum() == ann["area"]


def test_image_store_eviction_and_corruption(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    store = ImageStore(cache, max_bytes=250)
    for i in range(4):
        store.put(f"file-{i}", bytes([i]) * 100)  # evicts as it goes: the just-put is newest
        _last_read_at(cache, "images", [f"file-{k}" for k in range(i + 1)])  # 0 oldest
    assert store.get("file-0") is None and store.get("file-3") == bytes([3]) * 100
    sha = store.put("file-9", b"abc")
    store._blob(sha).write_bytes(b"xyz")  # corrupted on disk
    assert store.get("file-9") is None


def test_vacuum_and_integrity(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    for i in range(50):
        cache.put(key(i), result(i))
    assert cache.clear() == 50
    cache.vacuum()
    assert cache.integrity_check() and cache.stats().entries == 0


# --- many processes ----------------------------------------------------------------------------


def _worker(path: str, wid: int, n: int) -> int:
    cache = MaskCache(path, busy_timeout_s=120)
    misses = 0
    for i in range(n):
        cache.put(key(wid * 10_000 + i), result(i, h=16, w=16, n=1))
        if cache.get(key(wid * 10_000 + i)) is None:
            misses += 1
        cache.get_many([key(((wid + 1) % 8) * 10_000 + j) for j in range(0, i, 7)])
    return misses


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_eight_processes_share_one_cache_without_losing_entries(tmp_path: Path,
                                                                start_method: str) -> None:
    n = 60 if start_method == "spawn" else 120
    cache = MaskCache(tmp_path)  # the parent holds a connection across the fork too
    cache.put(key(999_999), result(1))
    ctx = mp.get_context(start_method)
    with ctx.Pool(8) as pool:
        misses = pool.starmap(_worker, [(str(tmp_path), w, n) for w in range(8)])
    assert misses == [0] * 8
    assert cache.stats().entries == 8 * n + 1
    assert cache.integrity_check()


_KILL_SCRIPT = """
import sys
from tests.cache.test_mask_cache import key, result
from cogseg_ml.cache.mask_cache import MaskCache
cache = MaskCache(sys.argv[1])
first = int(sys.argv[2])  # each run stores keys of its own
results = [result(j, h=64, w=64, n=3) for j in range(25)]
i = 0
while True:
    cache.put_many([(key(first + i * 25 + j), results[j]) for j in range(25)])
    print("stored", flush=True)
    i += 1
"""


def test_sigkill_mid_write_leaves_a_sound_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    before = 0
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path),
                                 str(round_ * 1_000_000)],
                                stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[2])
        assert proc.stdout is not None
        # Killed once it said it committed a few batches, so while it writes the next one
        # (its loop does nothing else): the point is drawn, never waited for.
        committed = int(rng.integers(1, 9))
        try:
            for _ in range(committed):
                assert proc.stdout.readline().strip() == "stored", f"round {round_}"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        cache = MaskCache(tmp_path)
        assert cache.integrity_check(), f"round {round_}"
        count = cache.stats().entries
        assert count % 25 == 0  # whole batches only: commits are atomic
        assert count >= before + 25 * committed  # every batch it said it stored survived
        before = count
        for _, _, _, res in cache.iter_entries():
            assert res.masks().shape == (3, 64, 64)
        cache.close()


def test_image_store_concurrent_puts_of_the_same_bytes(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = ImageStore(MaskCache(tmp_path))
    data = bytes(range(256)) * 400
    with ThreadPoolExecutor(8) as pool:
        shas = list(pool.map(lambda i: store.put(f"file-{i % 4}", data), range(64)))
    assert len(set(shas)) == 1 and store.get("file-3") == data
    assert not list(tmp_path.rglob("*.incomplete"))


def _merged(target: MaskCache, other: object) -> int:
    """Entries :func:`merge` copied."""
    return merge(target, other).entries  # type: ignore[arg-type]


def test_the_cache_stores_and_returns_the_backends_result_type(tmp_path: Path) -> None:
    """One result type from backend to cache to Python API: no field-by-field copies."""
    from cogseg_ml.backends.base import MaskResult, ScoredMask
    from cogseg_ml.cache.mask_cache import CachedResult, CachedSegment
    from cogseg_ml.store import cached_result

    assert CachedResult is MaskResult and CachedSegment is ScoredMask
    answer = result(7)
    stored = cached_result(answer)
    assert stored == answer and stored.segments is answer.segments
    cache = MaskCache(tmp_path / "c")
    cache.put(key(7), stored)
    back = cache.get(key(7))
    assert type(back) is MaskResult and back == answer
    assert all(type(s) is ScoredMask for s in back.segments)
