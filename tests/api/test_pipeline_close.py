"""Closing a job stream while its poll loop waits on a timer never hangs (MockTransport)."""

from __future__ import annotations

import asyncio

import httpx

from cogseg_ml.api.client import AsyncSegmentationClient
from cogseg_ml.api.job_pipeline import run_jobs
from cogseg_ml.config import CdfConfig, PollConfig, StaticToken
from cogseg_ml.prompts import FileRef, Prompt


class _OneDoneRestRunning:
    """Job 1 completes at once; every other job stays Running (polls keep being scheduled)."""

    def __init__(self) -> None:
        self.next_job = 1

    def __call__(self, request: httpx.Request) -> httpx.Response:
        item = {"fileId": 7}
        if request.method == "POST":
            job_id, self.next_job = self.next_job, self.next_job + 1
            return httpx.Response(201, json={"status": "Queued", "jobId": job_id,
                                             "createdTime": 1, "statusTime": 1,
                                             "items": [item]})
        job_id = int(request.url.path.rsplit("/", 1)[1])
        done = job_id == 1
        if done:
            item["segments"] = [{"score": 0.9, "polygons": [{"vertices": [
                {"x": 0.1, "y": 0.1}, {"x": 0.5, "y": 0.1}, {"x": 0.5, "y": 0.5}]}]}]
        return httpx.Response(200, json={"status": "Completed" if done else "Running",
                                         "jobId": job_id, "createdTime": 1, "statusTime": 2,
                                         "items": [item]})


def test_closing_the_stream_mid_poll_ends_promptly() -> None:
    config = CdfConfig(project="p", base_url="https://cdf.invalid",
                       credentials=StaticToken("tok"),
                       poll=PollConfig(initial_s=0.001, min_interval_s=0.001,
                                       max_interval_s=0.002))

    async def once() -> None:
        client = AsyncSegmentationClient(config,
                                         transport=httpx.MockTransport(_OneDoneRestRunning()))
        try:
            reqs = [(FileRef(id=7), Prompt.of([(0.1 + 0.01 * i, 0.2)])) for i in range(8)]
            stream = run_jobs(client, reqs, concurrency=8, check_files=False)
            first = await stream.__anext__()
            assert first.ok
            # The poll loop is between timed waits for the Running jobs: closing must end it.
            await asyncio.wait_for(stream.aclose(), 10)
        finally:
            await client.aclose()

    for _ in range(40):  # the race it guards against (cancel meets timer) is not every time
        asyncio.run(once())
