"""Client throughput: many jobs against the emulator, beside a naive client in the same run.

Setup (from the issue): 500 jobs, 300 ms processing, server concurrency 32. The server-limited
ideal is ``jobs * processing / server_concurrency`` seconds. The naive client creates a job,
sleeps 1 s, polls until done, one job after another; it is timed on a few jobs (its rate does
not depend on how many) and its jobs/s compared with ours.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import Figure, Report, admin_get, emulator_process
from cogseg_ml import FileRef, Prompt, SegmentationClient, SegmentRequest
from cogseg_ml.config import CdfConfig, RetryConfig
from cogseg_ml.emulator.synthetic_images import make_dataset


def requests_for(n: int, n_images: int = 20) -> list[SegmentRequest]:
    images = make_dataset(n_images)
    pool = [(im.name, o.box()) for im in images for o in im.objects]
    return [SegmentRequest(FileRef(external_id=pool[i % len(pool)][0]),
                           Prompt(box=pool[i % len(pool)][1]), tag=i) for i in range(n)]


def naive(cfg: CdfConfig, reqs: list[SegmentRequest]) -> float:
    """Seconds for the naive loop over ``reqs``."""
    t0 = time.perf_counter()
    with SegmentationClient(cfg) as client:
        for r in reqs:
            job = client.create_job(r.file, prompt=r.prompt)
            time.sleep(1.0)
            while not client.retrieve_job(job.job_id).status.is_terminal:
                time.sleep(1.0)
    return time.perf_counter() - t0


def ours(cfg: CdfConfig, reqs: list[SegmentRequest], concurrency: int
         ) -> tuple[float, int, int]:
    """Seconds, completed outcomes, distinct job ids."""
    t0 = time.perf_counter()
    ok = 0
    job_ids: set[int] = set()
    with SegmentationClient(cfg) as client:
        for outcome in client.segment_many(reqs, concurrency=concurrency):
            ok += outcome.ok
            if outcome.job_id is not None:
                job_ids.add(outcome.job_id)
    return time.perf_counter() - t0, ok, len(job_ids)


def run(jobs: int = 500, processing: float = 0.3, server_concurrency: int = 32,
        client_concurrency: int = 128, naive_jobs: int = 5) -> Report:
    rep = Report("client_throughput", params={
        "jobs": jobs, "processing_s": processing, "server_concurrency": server_concurrency,
        "client_concurrency": client_concurrency, "naive_jobs_timed": naive_jobs})
    reqs = requests_for(jobs)
    ideal_s = jobs * processing / server_concurrency
    with emulator_process(processing_time=processing, concurrency=server_concurrency) as (cfg, _):
        with SegmentationClient(cfg) as warm:  # token, connections, first decode of images
            list(warm.segment_many(requests_for(60), concurrency=60))
        before = admin_get(cfg, "stats")
        wall, ok, distinct = ours(cfg, reqs, client_concurrency)
        after = admin_get(cfg, "stats")
        naive_s = naive(cfg, reqs[:naive_jobs])
    http_per_job = (after["requests"] - before["requests"]) / jobs
    rate, naive_rate = ok / wall, naive_jobs / naive_s
    rep.add(
        Figure("wall time, 500 jobs", wall, "s", "server-limited ideal", ideal_s,
               higher_is_better=False),
        Figure("jobs/s", rate, "jobs/s", "server-limited ideal", jobs / ideal_s,
               goal=">= 0.9x ideal"),
        Figure("jobs/s vs naive client", rate, "jobs/s", "naive sequential client", naive_rate),
        Figure("HTTP requests per job", http_per_job, "req/job", "", None,
               higher_is_better=False, goal="<= 3"),
        Figure("completed", ok, "jobs", "submitted", jobs, goal="1.0x"),
        Figure("jobs created on server", after["jobs"] - before["jobs"], "jobs", "submitted",
               jobs, goal="1.0x (no duplicates)"),
    )
    # The same run under a 10% mix of 429 and 503: nothing lost, nothing duplicated.
    faults = [{"kind": "status", "status": 429, "probability": 0.05, "retry_after": "0.2"},
              {"kind": "status", "status": 503, "probability": 0.05}]
    with emulator_process(processing_time=processing, concurrency=server_concurrency,
                          faults=faults, seed=11) as (cfg, _):
        retry = RetryConfig(max_attempts=12, backoff_base_s=0.1, max_backoff_s=5.0)
        cfg = cfg.with_options(retry=retry)
        wall_f, ok_f, distinct_f = ours(cfg, reqs, client_concurrency)
        stats = admin_get(cfg, "stats")
    rep.add(
        Figure("completed under 10% 429/503", ok_f, "jobs", "submitted", jobs, goal="1.0x"),
        Figure("jobs created under faults", stats["jobs"], "jobs", "submitted", jobs,
               goal="1.0x (no duplicates)"),
        Figure("wall time under faults", wall_f, "s", "fault-free run", wall,
               higher_is_better=False,
               notes=f"faults injected: {stats['faults_injected']}"),
    )
    rep.params["distinct_job_ids"] = [distinct, distinct_f]
    return rep


def main(argv: list[str] | None = None) -> Report:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--client-concurrency", type=int, default=128)
    a = p.parse_args(argv)
    return run(jobs=a.jobs, client_concurrency=a.client_concurrency)


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
