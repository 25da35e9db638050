"""Soak and crash runs: the labeler under 20% faults, and killed with SIGKILL at random moments.

``python -m benchmarks.soak`` (``make soak``) runs the full versions: 5000 items with 20% of
responses faulted (429 with Retry-After, 5xx, dropped connections, slow responses, failed jobs,
failed items, token expiry), then ten SIGKILLs of ``cogseg label`` followed by resumes. The test
suite runs short versions of both through :func:`soak` and :func:`crash_resume`.

Checks: every item is labelled once or reported with a reason (none lost, none duplicated),
no worker thread is left behind, memory stays flat; after each kill the cache passes SQLite's
integrity check, and the final COCO file equals that of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, Report, emulator_process
from benchmarks.labeler import N_IMAGES, samples
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.config import CdfConfig, ClientCredentials, RetryConfig
from cogseg_ml.labeler import SegmentationLabeler

FAULTS_20 = [  # about 20% of responses in all
    {"kind": "status", "status": 429, "probability": 0.04, "retry_after": "0.2"},
    {"kind": "status", "status": 503, "probability": 0.04},
    {"kind": "status", "status": 502, "probability": 0.02, "methods": ["GET"]},
    {"kind": "drop", "probability": 0.02, "methods": ["GET"]},
    {"kind": "delay", "probability": 0.02, "delay_s": 0.5},
    {"kind": "job_fail", "probability": 0.02, "message": "model crashed"},
    {"kind": "item_fail", "probability": 0.03, "message": "image unreadable"},
    {"kind": "token_expiry", "probability": 0.005},
]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(items: int, *, processing: float = 0.05, concurrency: int = 64,
         faults: list[dict[str, Any]] | None = None, seed: int = 1) -> dict[str, Any]:
    """Label ``items`` prompts under faults; returns the checks and figures."""
    work = samples(items)
    rss: list[float] = []
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(0.25):
            rss.append(_rss_mib())

    sampler = threading.Thread(target=sample_rss, daemon=True)
    with emulator_process(processing_time=processing, concurrency=32, synthetic=N_IMAGES,
                          faults=FAULTS_20 if faults is None else faults, seed=seed) as (cfg, _):
        cfg = cfg.with_options(retry=RetryConfig(max_attempts=8, backoff_base_s=0.05,
                                                 max_backoff_s=2.0, total_timeout_s=60))
        with tempfile.TemporaryDirectory() as tmp:
            lab = SegmentationLabeler(cfg, cache=Path(tmp) / "cache", workdir=Path(tmp) / "w",
                                      progress=False, concurrency=concurrency)
            sampler.start()
            t0 = time.perf_counter()
            rep = lab.label(work)
            wall = time.perf_counter() - t0
            stop.set()
            sampler.join()
            lab.to_coco(Path(tmp) / "out.json")
            coco = json.loads((Path(tmp) / "out.json").read_text())
            integrity = MaskCache(Path(tmp) / "cache").integrity_check()
        from benchmarks.common import admin_get

        stats = admin_get(cfg, "stats")
    seen = Counter((a["image_id"], a["prompt_index"]) for a in coco["annotations"])
    # The labeler's own threads (the emulator here runs in another process).
    leftover = [t.name for t in threading.enumerate() if t.name == "cogseg-segment-many"]
    half = len(rss) // 2
    return {
        "items": items, "labelled": rep.labelled, "failed": rep.failed, "seconds": wall,
        "accounted": rep.labelled + rep.failed == items,
        "duplicates": sum(n > 1 for n in seen.values()),
        "reasons_given": all(f["reason"] for f in rep.failures),
        "failure_reasons": dict(rep.failure_reasons),
        "threads_left": leftover, "integrity": integrity,
        "faults_injected": stats["faults_injected"],
        "rss_first_half_mib": max(rss[:half], default=0.0),
        "rss_second_half_mib": max(rss[half:], default=0.0),
    }


def _env(cfg: CdfConfig) -> dict[str, str]:
    creds = cfg.credentials
    assert isinstance(creds, ClientCredentials)
    return {**os.environ, "COGNITE_PROJECT": cfg.project, "COGNITE_BASE_URL": cfg.base_url,
            "COGNITE_CLIENT_ID": creds.client_id,
            "COGNITE_CLIENT_SECRET": creds.client_secret.reveal(),
            "COGNITE_TOKEN_URL": creds.token_url, "COGSEG_PROGRESS": "0"}


def crash_resume(items: int, kills: int, *, seed: int = 3) -> dict[str, Any]:
    """Kill ``cogseg label`` with SIGKILL ``kills`` times, resuming each time; compare."""
    rng = random.Random(seed)
    work = samples(items)
    records = [{"file": s.file.external_id, "points": [[p.x, p.y, p.label]
                                                       for p in i.prompt.points],
                "category": i.category} for s in work for i in s.instances]
    with emulator_process(processing_time=0.05, concurrency=32, synthetic=N_IMAGES) as (cfg, _):
        env = _env(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            prompts = root / "prompts.jsonl"
            prompts.write_text("\n".join(json.dumps(r) for r in records))

            def label(cache: str, out: str) -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    [sys.executable, "-m", "cogseg_ml.cli", "label", "--prompts", str(prompts),
                     "--out", str(root / out), "--cache", str(root / cache), "--no-progress"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            clean = label("clean", "clean.json")
            t0 = time.perf_counter()
            assert clean.wait(timeout=600) == 0
            clean_s = time.perf_counter() - t0
            killed_at, sound = [], []
            for _ in range(kills):
                proc = label("crashy", "crashy.json")
                delay = rng.uniform(0.2 * clean_s, 0.9 * clean_s)
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                killed_at.append(round(delay, 2))
                cache = MaskCache(root / "crashy")
                sound.append(cache.integrity_check())
                cache.close()
            final = label("crashy", "crashy.json")
            assert final.wait(timeout=600) == 0
            same = (json.loads((root / "clean.json").read_text())
                    == json.loads((root / "crashy.json").read_text()))
            entries = MaskCache(root / "crashy").stats().entries
    return {"items": items, "kills": kills, "killed_after_s": killed_at,
            "integrity_after_each_kill": sound, "final_equals_clean": same,
            "entries": entries, "clean_run_s": clean_s}


def main(argv: list[str] | None = None) -> Report:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--crash-items", type=int, default=1000)
    a = p.parse_args(argv or [])
    s = soak(a.items)
    c = crash_resume(a.crash_items, a.kills)
    rep = Report("soak", params={"soak": s, "crash": c})
    rep.add(Figure("items accounted for (labelled + failed)", s["labelled"] + s["failed"],
                   "items", "submitted", a.items, goal="1.0x"),
            Figure("items labelled under 20% faults", s["labelled"], "items", "submitted",
                   a.items),
            Figure("duplicated labels", s["duplicates"], "items", "", None, goal="0"),
            Figure("peak RSS, second half", s["rss_second_half_mib"], "MiB",
                   "peak RSS, first half", s["rss_first_half_mib"], higher_is_better=False,
                   goal="flat (about 1x)"),
            Figure("kills survived with a sound cache", sum(c["integrity_after_each_kill"]),
                   "kills", "kills", c["kills"], goal="1.0x"),
            Figure("final COCO equals uninterrupted run", float(c["final_equals_clean"]), "",
                   "", None, goal="1"))
    return rep


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
