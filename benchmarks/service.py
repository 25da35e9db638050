"""``cogseg serve`` throughput: jobs through the service beside the same model in-process.

The emulator (in this process) stands in for the CDF project; the service runs as
``cogseg serve`` in its own process on a random-weight SAM 2.1 (the tiny test layout on the
CPU; ``--config hiera-tiny`` for the real layout). The same prompts (``--prompts`` per image,
points) on the same images go through:

* the service: every job POSTed by 8 client threads, then polled until all are Completed
  (images downloaded from the emulator once each, HTTP, SQLite, polygons both ways included);
* in-process: ``LocalSamBackend.run`` on the same jobs (bytes in memory).

Both sides are warmed on other images first. Figures: jobs/s through the service, with the
in-process rate as baseline (goal on the CPU >= 0.8x), and encoder passes per job read from
the service's ``/metrics`` (goal 1/prompts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import Figure, Report
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.base import BackendJob
from cogseg_ml.backends.local_sam import LocalSamBackend
from cogseg_ml.backends.sam2 import save_random_checkpoint
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image, make_dataset
from cogseg_ml.prompts import FileRef, Point, Prompt
from cogseg_ml.service.model_answers import result_segments

SEGMENT = "/context/vision/segment"
BETA = {"cdf-version": "beta"}


def _points(n: int, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return [(round(float(x), 6), round(float(y), 6)) for x, y in 0.1 + 0.8 * rng.random((n, 2))]


def _metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def _through_service(http: httpx.Client, root: str, token: str,
                     work: list[tuple[str, tuple[float, float]]]) -> float:
    """Seconds from the first POST until every job is Completed."""
    head = {"Authorization": f"Bearer {token}", **BETA}

    def post(item: tuple[str, tuple[float, float]]) -> int:
        xid, (x, y) = item
        r = http.post(root + SEGMENT, headers=head, json={
            "items": [{"fileExternalId": xid}], "points": [{"x": x, "y": y, "label": 1}]})
        r.raise_for_status()
        return int(r.json()["jobId"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(post, work))
        waiting = set(ids)
        while waiting:
            states = pool.map(lambda j: (j, http.get(f"{root}{SEGMENT}/{j}", headers=head)
                                         .json()["status"]), sorted(waiting))
            for job_id, status in states:
                if status == "Failed":
                    raise RuntimeError(f"job {job_id} failed")
                if status == "Completed":
                    waiting.discard(job_id)
            if waiting:
                time.sleep(0.005)
    return time.perf_counter() - t0


def _loader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _in_process(backend: LocalSamBackend, by_name: dict[str, SyntheticImage],
                work: list[tuple[str, tuple[float, float]]]) -> tuple[float, float, float]:
    """Seconds for ``run`` alone, seconds to trace its masks as exact polygons (what the
    service adds before HTTP), and the mean polygons per mask."""
    data = {name: encode_image(im.pixels) for name, im in by_name.items()}
    jobs = []
    for xid, (x, y) in work:
        im = by_name[xid]
        h, w = im.pixels.shape[:2]
        jobs.append(BackendJob(SegmentRequest(FileRef(external_id=xid),
                                              Prompt(points=(Point(x, y, 1),))), h, w,
                               hashlib.sha256(data[xid]).hexdigest(), _loader(data[xid])))
    t0 = time.perf_counter()
    outcomes = list(backend.run(jobs))
    elapsed = time.perf_counter() - t0
    results = [o.result for o in outcomes if o.result is not None]
    assert len(results) == len(jobs), "in-process jobs failed"
    t1 = time.perf_counter()
    segments = [result_segments(r) for r in results]
    tracing = time.perf_counter() - t1
    polygons = sum(len(s.polygons) for segs in segments for s in segs) / len(segments)
    return elapsed, tracing, polygons


def run(images: int = 2, prompts: int = 16, device: str = "cpu", config: str = "tiny-test"
        ) -> Report:
    rep = Report("service", params={"images": images, "prompts_per_image": prompts,
                                    "device": device, "model": f"SAM 2.1 {config}, random",
                                    "image_size": "480x640"})
    data = make_dataset(2 * images, seed=11, height=480, width=640)
    warm, measured = data[:images], data[images:]
    with tempfile.TemporaryDirectory() as tmp_name, Emulator(images=data) as emu:
        tmp = Path(tmp_name)
        cfg = None
        if config == "hiera-tiny":
            from transformers import Sam2Config

            cfg = Sam2Config()
        model = save_random_checkpoint(tmp / "model", "sam2", seed=0, config=cfg)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cogseg_ml.cli", "serve", "--model", str(model),
             "--cdf-base-url", emu.base_url, "--port", "0", "--device", device,
             "--jobs-db", str(tmp / "jobs.sqlite"), "--cache", str(tmp / "c" / "m.sqlite"),
             "--rate-limit", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            http = httpx.Client(base_url=info["base_url"], timeout=120,
                                limits=httpx.Limits(max_connections=16))
            end = time.monotonic() + 120
            while http.get("/readyz").status_code != 200 and time.monotonic() < end:
                time.sleep(0.05)
            root = f"/api/v1/projects/{emu.project}"
            token = emu.issue_token()
            pts = _points(prompts, 0)
            warm_work = [(im.name, p) for im in warm for p in pts]
            work = [(im.name, p) for im in measured for p in pts]
            _through_service(http, root, token, warm_work)
            enc0 = _metric(http, "cogseg_service_encoder_images")
            served_s = _through_service(http, root, token, work)
            encoder_passes = _metric(http, "cogseg_service_encoder_images") - enc0
            http.close()
        finally:
            proc.terminate()
            proc.wait(60)
            if proc.stdout is not None:
                proc.stdout.close()
        backend = LocalSamBackend.from_pretrained(model, device=device)
        _in_process(backend, {im.name: im for im in warm}, warm_work)
        local_s, tracing_s, polygons = _in_process(backend, {im.name: im for im in measured},
                                                   work)
        backend.close()
    n = len(work)
    rep.add(Figure("jobs/s through cogseg serve", n / served_s, "jobs/s",
                   "LocalSamBackend.run in-process, same jobs", n / local_s,
                   goal=">= 0.8x on the CPU",
                   notes=f"{n} jobs, {prompts} point prompts on each of {images} images, "
                         "8 client threads, HTTP polling"),
            Figure("jobs/s through cogseg serve (vs in-process + exact polygons)", n / served_s,
                   "jobs/s", "LocalSamBackend.run + mask_to_polygons in-process",
                   n / (local_s + tracing_s),
                   notes=f"the service's own cost beside the same model work; random weights "
                         f"give fragmented masks: {polygons:.0f} polygons per mask on average, "
                         f"tracing takes {tracing_s / n * 1000:.0f} ms per job"),
            Figure("encoder passes per job", encoder_passes / n, "passes/job",
                   higher_is_better=False, goal=f"1/{prompts} = {1 / prompts:.4f}",
                   notes="from the service's /metrics"))
    return rep


def main(argv: list[str] | None = None) -> Report:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", default="tiny-test", choices=["tiny-test", "hiera-tiny"])
    a = p.parse_args(argv or [])
    return run(a.images, a.prompts, a.device, a.config)


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
