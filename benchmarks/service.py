"""``cogseg serve`` throughput: jobs through the service beside the same model in-process.

The emulator (in this process) stands in for the CDF project; the service runs as
``cogseg serve`` in its own process on a random-weight SAM 2.1: by default the real hiera-tiny
layout at 1024 px (the smallest SAM 2.1 users run; about a second per job on two CPU cores),
``--config tiny-test`` for the test layout (a few milliseconds per job: the service's own cost
per job shows there). The random weights are reshaped to give object-like masks at the same
cost (:mod:`benchmarks.object_masks`; ``--masks noise`` keeps the fragments random weights
draw, thousands of polygons per mask that no trained model gives). The same prompts
(``--prompts`` per image, points) on the same images go through:

* the service: our client, ``SegmentationClient.segment_many`` with every job in flight and
  its own adaptive polling, until each job's best mask is in hand as an RLE (images
  downloaded from the emulator once each, HTTP, SQLite, polygons both ways included);
* in-process: ``LocalSamBackend.run`` on the same jobs (bytes in memory).

Both sides are warmed on other images first, then take turns over fresh images (``--rounds``;
medians). Figures: jobs/s the service completes, with the in-process rate as baseline (goal on
the CPU >= 0.8x; its notes give the service's added time per job), the same with every mask in
the client's hands, the same beside in-process plus tracing the polygons, and encoder passes
per job read from the service's ``/metrics`` (goal 1/prompts).

``--ray`` measures routing and scale instead (result ``service_ray``): the model is
:class:`~cogseg_ml.service.ray.FixedWaitModel` (``--wait-s`` per job, how a GPU-bound model
looks from the CPU), and the same jobs (``--prompts`` point prompts on each of ``--images``
images, POSTed by 8 client threads, then polled until all are Completed) go through, in one
run:

* the single-node service (:func:`~cogseg_ml.service.app.build_app` on that model, uvicorn on
  a thread of this process, loopback);
* Ray Serve (``ray.init(num_cpus=2)``; the ingress and 1 model replica);
* Ray Serve with 2 model replicas (``--cpus-per-replica`` each, so both fit in 2 CPUs).

Each is warmed on other images first. Figures: jobs/s with 2 replicas beside 1 (goal
>= 1.8x), and jobs/s with 1 replica beside the single-node service (the ingress's cost).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import Figure, Report
from benchmarks.object_masks import object_like
from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.base import BackendJob
from cogseg_ml.backends.local_sam import LocalSamBackend
from cogseg_ml.backends.sam2 import save_random_checkpoint
from cogseg_ml.config import CdfConfig, PollConfig, StaticToken
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image, make_dataset
from cogseg_ml.prompts import FileRef, Point, Prompt
from cogseg_ml.service.job_engine import JobOutcome
from cogseg_ml.service.job_store import StoredJob
from cogseg_ml.service.model_answers import ImageBytes, ModelStats, result_segments

SEGMENT = "/context/vision/segment"
#: ``--masks``: what the random model's masks look like (see :mod:`benchmarks.object_masks`).
MASKS = {"object": "object-like (random weights reshaped, benchmarks.object_masks)",
         "noise": "noise (random weights as drawn: fragments)"}
#: Seconds between polling rounds: our client's shortest poll interval (PollConfig); polling
#: faster only measures how fast the service answers polls, taking the model's CPU.
POLL_INTERVAL_S = 0.05
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
                     work: list[tuple[str, tuple[float, float]]],
                     poll_first: int | None = None, posted: list[float] | None = None) -> float:
    """Seconds from the first POST until every job is Completed (each polling round reads
    the ``poll_first`` oldest jobs not yet seen Completed; ``None``: all of them; rounds
    :data:`POLL_INTERVAL_S` apart, our client's shortest interval); the seconds until the last
    POST was answered are appended to ``posted`` when given."""
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
        if posted is not None:
            posted.append(time.perf_counter() - t0)
        waiting = set(ids)
        while waiting:
            states = pool.map(lambda j: (j, http.get(f"{root}{SEGMENT}/{j}", headers=head)
                                         .json()["status"]), sorted(waiting)[:poll_first])
            for job_id, status in states:
                if status == "Failed":
                    raise RuntimeError(f"job {job_id} failed")
                if status == "Completed":
                    waiting.discard(job_id)
            if waiting:
                time.sleep(POLL_INTERVAL_S)
    return time.perf_counter() - t0


def _through_client(cfg: CdfConfig, by_name: dict[str, SyntheticImage],
                    work: list[tuple[str, tuple[float, float]]]) -> tuple[float, float]:
    """Our client (``SegmentationClient.segment_many``, its default concurrency and adaptive
    polling) gets every job's best mask as an RLE through the service: the seconds from the
    first POST until the service completed the last job (its ``statusTime``; the service runs on
    this machine's clock), and until the client had every mask in hand."""
    reqs = [SegmentRequest(FileRef(external_id=xid), Prompt(points=(Point(x, y, 1),)))
            for xid, (x, y) in work]
    last_status_ms = 0
    start = time.time()
    t0 = time.perf_counter()
    with SegmentationClient(cfg) as client:
        for outcome in client.segment_many(reqs):
            if not outcome.ok or outcome.result is None:
                raise RuntimeError(f"job {outcome.job_id} failed: {outcome.error}")
            best = outcome.result.item.best
            assert best is not None, "a completed job without a segment"
            h, w = by_name[outcome.request.file.external_id or ""].pixels.shape[:2]
            best.to_rle(h, w)
            last_status_ms = max(last_status_ms, outcome.result.status_time)
    in_hand = time.perf_counter() - t0
    return min(in_hand, last_status_ms / 1000 - start), in_hand


def random_sam2(folder: Path, config: str, masks: str) -> Path:
    """A random SAM 2.1 checkpoint in ``folder``: ``config`` ``tiny-test`` or the real
    ``hiera-tiny`` layout; ``masks`` ``object`` (reshaped, see :mod:`benchmarks.object_masks`)
    or ``noise`` (as drawn)."""
    cfg = None
    if config == "hiera-tiny":
        from transformers import Sam2Config

        cfg = Sam2Config()
    model = save_random_checkpoint(folder, "sam2", seed=0, config=cfg)
    return object_like(model) if masks == "object" else model


def _loader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _in_process(backend: LocalSamBackend, by_name: dict[str, SyntheticImage],
                work: list[tuple[str, tuple[float, float]]]
                ) -> tuple[float, float, float, float]:
    """Seconds for ``run`` alone, seconds to trace its masks as exact polygons (what the
    service adds before HTTP), and the mean polygons and vertices per mask."""
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
    vertices = sum(len(p.vertices) for segs in segments for s in segs
                   for p in s.polygons) / len(segments)
    return elapsed, tracing, polygons, vertices


def run(images: int = 1, prompts: int = 16, device: str = "cpu", config: str = "hiera-tiny",
        rounds: int = 3, masks: str = "object", poll_max_s: float | None = None) -> Report:
    """The default run (see the module docstring); ``masks``: ``"object"`` (the random weights
    reshaped by :func:`~benchmarks.object_masks.object_like`) or ``"noise"`` (as drawn);
    ``poll_max_s``: the client's ``PollConfig.max_interval_s`` (``None``: its default)."""
    if masks not in MASKS:
        raise ValueError(f"masks must be one of {', '.join(MASKS)}, got {masks!r}")
    rep = Report("service", params={"images": images, "prompts_per_image": prompts,
                                    "device": device, "model": f"SAM 2.1 {config}, random",
                                    "masks": MASKS[masks], "image_size": "480x640",
                                    "rounds": rounds, "client_poll_max_s": poll_max_s})
    # Fresh images each round (no embedding is reused across rounds); the two sides take turns,
    # round by round, so both see the same load on a shared machine; medians are reported.
    data = make_dataset((rounds + 1) * images, seed=11, height=480, width=640)
    sets = [data[k * images:(k + 1) * images] for k in range(rounds + 1)]
    served: list[float] = []
    in_hand: list[float] = []
    local: list[float] = []
    tracing: list[float] = []
    polygons: list[float] = []
    vertices: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_name, Emulator(images=data) as emu:
        tmp = Path(tmp_name)
        model = random_sam2(tmp / "model", config, masks)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cogseg_ml.cli", "serve", "--model", str(model),
             "--cdf-base-url", emu.base_url, "--port", "0", "--device", device,
             "--jobs-db", str(tmp / "jobs.sqlite"), "--cache", str(tmp / "c" / "m.sqlite"),
             "--rate-limit", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        backend = LocalSamBackend.from_pretrained(model, device=device)
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            http = httpx.Client(base_url=info["base_url"], timeout=120)
            _wait_ready(http, 120)
            poll = PollConfig() if poll_max_s is None else PollConfig(max_interval_s=poll_max_s)
            client = CdfConfig(project=emu.project, base_url=info["base_url"],
                               credentials=StaticToken(emu.issue_token()), poll=poll)
            pts = _points(prompts, 0)
            works = [[(im.name, p) for im in chosen for p in pts] for chosen in sets]
            by_name = {im.name: im for im in data}
            _through_client(client, by_name, works[0])
            _in_process(backend, by_name, works[0])
            enc0 = _metric(http, "cogseg_service_encoder_images")
            for work in works[1:]:
                served_s, in_hand_s = _through_client(client, by_name, work)
                served.append(served_s)
                in_hand.append(in_hand_s)
                local_s, tracing_s, polys, verts = _in_process(backend, by_name, work)
                local.append(local_s)
                tracing.append(tracing_s)
                polygons.append(polys)
                vertices.append(verts)
            encoder_passes = _metric(http, "cogseg_service_encoder_images") - enc0
            http.close()
        finally:
            backend.close()
            proc.terminate()
            proc.wait(60)
            if proc.stdout is not None:
                proc.stdout.close()
    served_s, in_hand_s, local_s, tracing_s = (float(np.median(v))
                                               for v in (served, in_hand, local, tracing))
    polygons_mean, vertices_mean = float(np.mean(polygons)), float(np.mean(vertices))
    work = works[1]
    n = len(work)
    jobs = (f"{n} jobs, {prompts} point prompts on each of {images} images; median of "
            f"{rounds} rounds taken in turn with in-process")
    rep.add(Figure("jobs/s through cogseg serve", n / served_s, "jobs/s",
                   "LocalSamBackend.run in-process, same jobs", n / local_s,
                   goal=">= 0.8x on the CPU",
                   notes=f"{jobs}; from the first POST until the service completed the last "
                         "job, our client (segment_many, fetching and rasterising the results) "
                         f"on the same cores; {(served_s - local_s) / n * 1000:+.1f} ms per job "
                         f"beside the model's {local_s / n * 1000:.1f} ms in-process"),
            Figure("jobs/s through cogseg serve, every mask in the client's hands",
                   n / in_hand_s, "jobs/s", "LocalSamBackend.run in-process, same jobs",
                   n / local_s,
                   notes=f"{jobs}; the client's adaptive polling (PollConfig: each poll "
                         "farther apart) adds "
                         f"{in_hand_s - served_s:.1f} s after the service's last job"),
            Figure("jobs/s through cogseg serve (vs in-process + exact polygons)", n / served_s,
                   "jobs/s", "LocalSamBackend.run + mask_to_polygons in-process",
                   n / (local_s + tracing_s),
                   notes=f"the service's own cost beside the same model work; {masks} masks: "
                         f"{polygons_mean:.1f} polygons, {vertices_mean:.0f} vertices per mask "
                         f"on average; tracing takes {tracing_s / n * 1000:.1f} ms per job"),
            Figure("encoder passes per job", encoder_passes / (n * rounds), "passes/job",
                   higher_is_better=False, goal=f"1/{prompts} = {1 / prompts:.4f}",
                   notes="from the service's /metrics"))
    return rep


class FixedWaitAnswerer:
    """The single-node service's answerer on :class:`~cogseg_ml.service.ray.FixedWaitModel`:
    each batch the job engine takes goes to the model in one call, with its images' bytes
    (as a replica gets them).

    Args:
        images: the service's image store.
        wait_s: seconds each job costs.
    """

    def __init__(self, images: ImageBytes, wait_s: float) -> None:
        from cogseg_ml.service.ray import FixedWaitModel

        self.images = images
        self.model = FixedWaitModel(wait_s)
        self._stats = ModelStats()

    def answer(self, jobs: Sequence[StoredJob]) -> list[JobOutcome]:
        """One outcome per job, after the model's wait."""
        data = {}
        for digest in {j.digest for j in jobs}:
            found = self.images.get_by_digest(digest)
            if found is None:
                raise RuntimeError(f"the image bytes {digest[:12]}... are not stored")
            data[digest] = found
        outcomes, stats = self.model.answer(jobs, data)
        self._stats = self._stats + stats
        return outcomes

    def stats(self) -> ModelStats:
        """The model's work so far."""
        return self._stats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(http: httpx.Client, deadline_s: float = 180) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            raise RuntimeError("the service did not get ready")
        time.sleep(0.05)


@contextmanager
def _single_node(cdf_base_url: str, folder: Path, make_answerer: Any) -> Iterator[str]:
    """The service on ``make_answerer``'s answerer, uvicorn on a thread: its base URL."""
    import uvicorn

    from cogseg_ml.service.app import ServiceLimits, build_app

    app = build_app(make_answerer, cdf_base_url, jobs_db=folder / "jobs.sqlite",
                    cache=folder / "cache.sqlite", limits=ServiceLimits(rate_per_s=0))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def _replica_jobs(http: httpx.Client) -> list[int]:
    """Jobs each model replica answered (from ``/metrics``), most first."""
    name = "cogseg_service_replica_jobs{"
    return sorted((int(float(line.rsplit(" ", 1)[1])) for line in http.get("/metrics").text
                   .splitlines() if line.startswith(name)), reverse=True)


@dataclass(frozen=True)
class Measured:
    """One deployment's run of the measured jobs."""

    seconds: float  # from the first POST until every job is Completed
    posted_s: float  # until the last POST was answered
    calls: int  # model calls (the replicas' or the local model's)
    by_replica: list[int]  # jobs each replica answered since start (warm-up included)

    def describe(self) -> str:
        by = f", jobs by replica {self.by_replica} (warm-up included)" if self.by_replica \
            else ""
        return (f"{self.seconds:.1f} s, all POSTed after {self.posted_s:.1f} s, "
                f"{self.calls} model calls{by}")


def run_ray(images: int = 16, prompts: int = 4, wait_s: float = 0.2,
            cpus_per_replica: float = 0.5, batch_jobs: int | None = None,
            max_ongoing_requests: int | None = None, interleave: bool = False,
            sam: Path | None = None, device: str = "cpu",
            gpus_per_replica: float = 0.0) -> Report:
    """The ``--ray`` run (see the module docstring); ``interleave``: the jobs are POSTed
    round-robin over the images (else image by image, as a labeller posts them).

    With ``sam`` (a checkpoint folder) every setup runs that model on ``device`` instead of
    the fixed wait (``make bench-gpu``: replicas with ``gpus_per_replica`` GPUs each)."""
    import functools

    import ray
    from ray import serve

    from cogseg_ml.service.app import ServiceLimits
    from cogseg_ml.service.ray import (
        APP_NAME,
        FixedWaitModel,
        RayServeOptions,
        segment_application,
    )

    tuned: dict[str, Any] = {"num_cpus_per_replica": cpus_per_replica}
    if batch_jobs is not None:
        tuned["batch_jobs"] = batch_jobs
    if max_ongoing_requests is not None:
        tuned["max_ongoing_requests"] = max_ongoing_requests
    tuned["num_gpus_per_replica"] = gpus_per_replica
    one, two = RayServeOptions(replicas=1, **tuned), RayServeOptions(replicas=2, **tuned)
    if sam is None:
        make_model: Any = functools.partial(FixedWaitModel, wait_s)

        def make_answerer(images_: Any, cache: Any, origin: str) -> Any:
            return FixedWaitAnswerer(images_, wait_s)
    else:
        from cogseg_ml.service.model_answers import ModelAnswerer
        from cogseg_ml.service.ray import SamModel

        make_model = functools.partial(SamModel, str(sam), device)
        local = LocalSamBackend.from_pretrained(sam, device=device)

        def make_answerer(images_: Any, cache: Any, origin: str) -> Any:
            return ModelAnswerer(images_, local, cache=None, origin=origin)
    rep = Report("service_ray", params={
        "images": images, "prompts_per_image": prompts,
        "wait_s_per_job": wait_s if sam is None else None,
        "model": "FixedWaitModel" if sam is None else f"SAM 2.1 random on {device}",
        "client_threads": 8, "ray_cpus": 2,
        "cpus_per_replica": cpus_per_replica, "batch_jobs": one.batch_jobs,
        "max_ongoing_requests": one.max_ongoing_requests, "image_size": "240x320",
        "order": "round-robin over the images" if interleave else "image by image"})
    warm_images = 2
    data = make_dataset(warm_images + images, seed=11, height=240, width=320)
    warm, measured = data[:warm_images], data[warm_images:]
    pts = _points(prompts, 0)
    warm_work = [(im.name, p) for im in warm for p in pts[:8]]
    work = ([(im.name, p) for p in pts for im in measured] if interleave else
            [(im.name, p) for im in measured for p in pts])
    n = len(work)
    poll_first = 32

    def measure(emu: Emulator, base_url: str, what: str) -> Measured:
        with httpx.Client(base_url=base_url, timeout=120,
                          limits=httpx.Limits(max_connections=16)) as http:
            _wait_ready(http)
            root = f"/api/v1/projects/{emu.project}"
            token = emu.issue_token()
            _through_service(http, root, token, warm_work, poll_first)
            calls0 = _metric(http, "cogseg_service_decoder_calls")
            posted: list[float] = []
            seconds = _through_service(http, root, token, work, poll_first, posted)
            calls = _metric(http, "cogseg_service_decoder_calls") - calls0
            got = Measured(seconds, posted[0], int(calls), _replica_jobs(http))
            print(f"{what}: {n / seconds:.2f} jobs/s, all POSTed in {got.posted_s:.2f} s, "
                  f"{got.calls} model calls, jobs by replica {got.by_replica}",
                  file=sys.stderr, flush=True)
            return got

    with tempfile.TemporaryDirectory() as tmp_name, Emulator(images=data) as emu:
        tmp = Path(tmp_name)
        (tmp / "single").mkdir()
        with _single_node(emu.base_url, tmp / "single", make_answerer) as url:
            single = measure(emu, url, "single-node service")
        port = _free_port()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 _temp_dir=str(tmp / "ray"))
        try:
            quiet = {"log_level": "WARNING", "enable_access_log": False}  # as uvicorn's above
            serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
            served: dict[int, Measured] = {}
            for opts in (one, two):
                folder = tmp / f"ray{opts.replicas}"
                folder.mkdir()
                app = segment_application(
                    make_model, emu.base_url,
                    jobs_db=folder / "jobs.sqlite", cache=folder / "cache.sqlite",
                    limits=ServiceLimits(rate_per_s=0), options=opts)
                serve.run(app, name=APP_NAME, route_prefix="/", logging_config=quiet)
                served[opts.replicas] = measure(emu, f"http://127.0.0.1:{port}",
                                                 f"Ray Serve, {opts.replicas} replica(s)")
                serve.delete(APP_NAME)
        finally:
            serve.shutdown()
            ray.shutdown()
    r1, r2 = served[1], served[2]
    cost = (f"{wait_s * 1000:.0f} ms of model wait per job (a replica's ceiling "
            f"{1 / wait_s:.0f} jobs/s)" if sam is None else
            f"random SAM 2.1 on {device}, {gpus_per_replica:g} GPU per replica")
    jobs = (f"{n} jobs ({prompts} point prompts on each of {images} images, "
            f"{'round-robin' if interleave else 'image by image'}), 8 client threads, {cost}")
    rep.add(Figure("jobs/s, Ray Serve 2 replicas", n / r2.seconds, "jobs/s",
                   "Ray Serve 1 replica", n / r1.seconds,
                   goal=">= 1.8x" if sam is None else "",
                   notes=f"{jobs}; 2 replicas: {r2.describe()}; 1 replica: {r1.describe()}"),
            Figure("jobs/s, Ray Serve 1 replica", n / r1.seconds, "jobs/s",
                   "single-node service", n / single.seconds,
                   notes=f"{jobs}; the ingress's cost (HTTP through Serve's proxy, calls to "
                         f"the replica); single-node: {single.describe()}"))
    return rep


def ray_sam_run(images: int, prompts: int, device: str, config: str,
                cpus_per_replica: float, gpus_per_replica: float) -> Report:
    """:func:`run_ray` on a random SAM 2.1 checkpoint (``config``: ``tiny-test`` or the real
    ``hiera-tiny`` layout, object-like masks) made for the run."""
    with tempfile.TemporaryDirectory() as tmp:
        model = random_sam2(Path(tmp) / "model", config, "object")
        return run_ray(images, prompts, cpus_per_replica=cpus_per_replica, sam=model,
                       device=device, gpus_per_replica=gpus_per_replica)


def main(argv: list[str] | None = None) -> Report:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, help="images measured (default 1; 16 with --ray)")
    p.add_argument("--prompts", type=int,
                   help="point prompts on each image (default 16; 4 with --ray)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", choices=["hiera-tiny", "tiny-test"],
                   help="the random SAM 2.1's layout (default hiera-tiny; --ray: tiny-test)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds, service and in-process in turn (medians)")
    p.add_argument("--masks", default="object", choices=list(MASKS),
                   help="object: the random weights reshaped to give object-like masks at the "
                        "same cost (default); noise: as drawn (thousands of fragments per mask)")
    p.add_argument("--poll-max-s", type=float,
                   help="the client's longest poll interval (PollConfig.max_interval_s; "
                        "default: its default)")
    r = p.add_argument_group("--ray: the single-node service, Ray Serve with 1 and 2 replicas")
    r.add_argument("--ray", action="store_true", help="measure Ray Serve (the ray extra)")
    r.add_argument("--wait-s", type=float, default=0.2,
                   help="model wait per job (s; default 0.2: at 0.05 Serve's HTTP path on two "
                        "shared cores, not the replicas, sets the pace)")
    r.add_argument("--cpus-per-replica", type=float, default=0.5)
    r.add_argument("--batch-jobs", type=int, help="RayServeOptions.batch_jobs")
    r.add_argument("--max-ongoing-requests", type=int,
                   help="RayServeOptions.max_ongoing_requests")
    r.add_argument("--interleave", action="store_true",
                   help="POST the jobs round-robin over the images (default: image by image)")
    r.add_argument("--sam", action="store_true",
                   help="a random SAM 2.1 (--config, --device) instead of the fixed wait")
    r.add_argument("--gpus-per-replica", type=float, default=0.0)
    a = p.parse_args(argv or [])
    if a.ray and a.sam:
        return ray_sam_run(a.images or 16, a.prompts or 4, a.device, a.config or "tiny-test",
                           a.cpus_per_replica, a.gpus_per_replica)
    if a.ray:
        return run_ray(a.images or 16, a.prompts or 4, a.wait_s, a.cpus_per_replica,
                       a.batch_jobs, a.max_ongoing_requests, a.interleave)
    return run(a.images or 1, a.prompts or 16, a.device, a.config or "hiera-tiny", a.rounds,
               a.masks, a.poll_max_s)


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
