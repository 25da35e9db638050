"""A labelling run killed mid-way loses at most the jobs in flight (a real process, SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cogseg_ml.cache.mask_cache import MaskCache

FINISHED_BEFORE_KILL = 10


def _prompts(images, path: Path) -> int:
    """Five slightly different boxes per object: 90 distinct jobs."""
    lines = []
    for im in images:
        for o in im.objects:
            b = o.box()
            for k in range(5):
                d = 0.002 * k
                lines.append({"file": {"externalId": im.name}, "category": o.category,
                              "box": [b.x_min + d, b.y_min, b.x_max, b.y_max - d]})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return len(lines)


def _env(emu) -> dict[str, str]:
    env = dict(os.environ)
    env.update(COGNITE_PROJECT=emu.project, COGNITE_BASE_URL=emu.base_url,
               COGNITE_TOKEN_URL=emu.token_url, COGNITE_CLIENT_ID=emu.state.client_id,
               COGNITE_CLIENT_SECRET=emu.client_secret.reveal())
    return env


def _label(emu, prompts: Path, out: Path, cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cogseg_ml.cli", "label", "--prompts", str(prompts), "--out",
         str(out), "--cache", str(cache), "--no-progress", "--concurrency", "16"],
        env=_env(emu), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stored(cache: Path) -> int:
    return MaskCache(cache).stats().entries if cache.exists() else 0


def _wait_for(what: str, check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkill_after_n_finished_jobs_keeps_them(make_emulator, images, tmp_path) -> None:
    emu = make_emulator(processing_time_s=0.0, concurrency=8)
    n = _prompts(images, tmp_path / "prompts.jsonl")
    # The emulator lets FINISHED_BEFORE_KILL jobs end and holds the rest Running: from then on
    # only the client's own flushing can bring the finished ones to disk.
    emu.jobs.end_limit = FINISHED_BEFORE_KILL
    cache = tmp_path / "cache.sqlite"
    child = _label(emu, tmp_path / "prompts.jsonl", tmp_path / "killed.json", cache)
    try:
        _wait_for("the finished jobs to end", lambda: emu.jobs.completed >= FINISHED_BEFORE_KILL)
        _wait_for("the finished jobs to be stored",
                  lambda: _stored(cache) >= FINISHED_BEFORE_KILL)
        assert child.poll() is None, child.communicate()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert _stored(cache) == FINISHED_BEFORE_KILL
    assert not (tmp_path / "killed.json").exists()  # nothing half-written under the name

    emu.jobs.end_limit = None
    resumed = _label(emu, tmp_path / "prompts.jsonl", tmp_path / "resumed.json", cache)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    fresh = _label(emu, tmp_path / "prompts.jsonl", tmp_path / "fresh.json",
                   tmp_path / "fresh-cache.sqlite")
    _, err = fresh.communicate(timeout=120)
    assert fresh.returncode == 0, err
    a = json.loads((tmp_path / "resumed.json").read_text())
    b = json.loads((tmp_path / "fresh.json").read_text())
    assert len(a["annotations"]) == n
    assert (a["images"], a["annotations"], a["categories"]) == (
        b["images"], b["annotations"], b["categories"])


class InterruptAfter:
    """The API backend, with Ctrl-C pressed after ``n`` answers arrived."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.n = inner, n
        self.name, self.model_version = inner.name, inner.model_version

    def identities(self):
        return self.inner.identities()

    def run(self, jobs):
        for k, out in enumerate(self.inner.run(jobs)):
            if k == self.n:
                raise KeyboardInterrupt
            yield out


def test_ctrl_c_stores_what_finished_and_says_how_to_resume(shared_emulator, images,
                                                           tmp_path) -> None:
    import pytest

    from cogseg_ml.backends.api_backend import ApiBackend
    from cogseg_ml.errors import RunInterrupted
    from cogseg_ml.labeler import SegmentationLabeler
    from cogseg_ml.samples import load_records, samples_from_records

    _prompts(images, tmp_path / "prompts.jsonl")
    samples = samples_from_records(load_records(tmp_path / "prompts.jsonl"))
    backend = InterruptAfter(ApiBackend(shared_emulator.config, concurrency=8), 7)
    lab = SegmentationLabeler(backend, config=shared_emulator.config, progress=False,
                              cache=tmp_path / "cache.sqlite", workdir=tmp_path / "work")
    with pytest.raises(RunInterrupted) as info:
        lab.label(samples)
    assert info.value.signal_name == "SIGINT"
    assert "7 jobs finished" in str(info.value) and "run it again" in str(info.value)
    assert "7 jobs run" in info.value.summary
    assert MaskCache(tmp_path / "cache.sqlite").stats().entries == 7


def test_flush_waits_for_a_flush_in_progress(shared_emulator, tmp_path) -> None:
    """After flush() returns, what was unsaved is readable, even if the timed flusher had
    taken it and was still writing (the labeler reads results right after flushing)."""
    import threading

    from cogseg_ml.backends.api_backend import ApiBackend
    from cogseg_ml.store import SegmentStore

    writing, release = threading.Event(), threading.Event()

    class SlowCache(MaskCache):
        def put_many(self, items):
            items = list(items)
            if items:
                writing.set()
                release.wait(30)
            return super().put_many(items)

    cache = SlowCache(tmp_path / "cache.sqlite")
    store = SegmentStore(shared_emulator.config, cache, ApiBackend(shared_emulator.config))
    key_res = _one_entry()
    store._unsaved.append(key_res)
    timed = threading.Thread(target=store.flush)  # stands for the timed flusher
    timed.start()
    assert writing.wait(30)
    returned = threading.Event()
    second = threading.Thread(target=lambda: (store.flush(), returned.set()))
    second.start()
    assert not returned.wait(0.2)  # it waits for the write in progress...
    release.set()
    timed.join(30)
    second.join(30)
    assert returned.is_set()  # ...and returns once it is stored
    assert cache.stats().entries == 1


def test_closing_a_stream_whose_cache_is_full_warns_and_keeps_the_results(
        shared_emulator, images, tmp_path, caplog) -> None:
    """A stream closed after a failed write (a full disk) must not raise from its cleanup:
    a generator's close runs at garbage collection too, where an error is lost. It says how
    many results it could not store and keeps them for the next flush."""
    import logging

    import pytest

    from cogseg_ml.backends.api_backend import ApiBackend
    from cogseg_ml.errors import CacheError
    from cogseg_ml.prompts import FileRef, Prompt
    from cogseg_ml.store import SegmentStore

    class FullCache(MaskCache):
        def put_many(self, items):
            if list(items):
                raise CacheError("database or disk is full")
            return 0

    store = SegmentStore(shared_emulator.config, FullCache(tmp_path / "cache.sqlite"),
                         ApiBackend(shared_emulator.config))
    im = images[0]
    (rec,) = store.records([FileRef(external_id=im.name)])
    gen = store.segment([(rec, Prompt(box=o.box()), i) for i, o in enumerate(im.objects)])
    tag, _, result, error = next(gen)
    assert result is not None and error is None
    with caplog.at_level(logging.WARNING, logger="cogseg_ml.store"):
        gen.close()  # the old cleanup raised CacheError here
    assert "could not be stored" in caplog.text and "disk is full" in caplog.text
    assert len(store._unsaved) >= 1  # kept, not dropped
    with pytest.raises(CacheError):  # an explicit flush still reports the failure
        store.flush()


def _one_entry():
    import numpy as np

    from cogseg_ml.cache.cache_keys import CacheKey
    from cogseg_ml.cache.mask_cache import CachedResult, CachedSegment
    from cogseg_ml.mask_codec import encode
    from cogseg_ml.prompts import FileRef, Point, Prompt

    m = np.zeros((1, 8, 8), bool)
    m[0, 1:4, 1:5] = True
    return (CacheKey("p", FileRef(id=1), Prompt(points=(Point(0.5, 0.5),)), "cdf-api"),
            CachedResult((CachedSegment(0.9, encode(m)[0]),), 8, 8, "cdf-api"))
