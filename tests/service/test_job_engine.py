"""The job engine the service and the emulator share, on its own: a real SQLite file, a real
event loop, answerers that record what they were given; and a process killed mid-job."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

from cogseg_ml.api.wire_schema import JobStatus
from cogseg_ml.prompts import Point, Prompt
from cogseg_ml.service.job_engine import JobEngine, JobOutcome
from cogseg_ml.service.job_store import JobStore, StoredJob


class Recorder:
    """Completes every job with no segments; keeps the batches it was handed."""

    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_first = fail_first

    def answer(self, jobs: Sequence[StoredJob]) -> list[JobOutcome]:
        self.batches.append([j.job_id for j in jobs])
        if self.fail_first and len(self.batches) == 1:
            raise RuntimeError("the model broke")
        return [JobOutcome(j.job_id, JobStatus.COMPLETED) for j in jobs]


def job_fields(k: int) -> dict[str, object]:
    return dict(project="p", file_id=100 + k, file_external_id=f"f{k}", file_version="v1",
                prompt=Prompt(points=(Point(0.5, 0.25, 1),)), digest=f"{k:064x}", height=8,
                width=8)


async def _until_ended(engine: JobEngine, n: int) -> None:
    while engine.ended < n:
        await asyncio.sleep(0)  # yields to the workers; no clock involved
        await asyncio.to_thread(lambda: None)


def test_waiting_jobs_of_all_callers_go_to_the_answerer_together(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    answerer = Recorder()
    engine = JobEngine(store, answerer, workers=1, batch_jobs=512)

    async def scenario() -> list[StoredJob]:
        jobs = [await engine.submit(**job_fields(k)) for k in range(5)]  # type: ignore[arg-type]
        await engine.start()  # five jobs wait: one answer call takes them all
        await _until_ended(engine, 5)
        await engine.stop()
        return jobs

    jobs = asyncio.run(scenario())
    assert answerer.batches == [[j.job_id for j in jobs]]
    assert [store.get(j.job_id).status for j in jobs] == [JobStatus.COMPLETED] * 5  # type: ignore[union-attr]
    assert len(engine.jobs) == 5 and list(engine.jobs) == [j.job_id for j in jobs]


def test_a_broken_answer_fails_its_jobs_and_the_worker_lives_on(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    engine = JobEngine(store, Recorder(fail_first=True), workers=1)

    async def scenario() -> tuple[StoredJob, StoredJob]:
        await engine.start()
        first = await engine.submit(**job_fields(0))  # type: ignore[arg-type]
        await _until_ended(engine, 1)
        second = await engine.submit(**job_fields(1))  # type: ignore[arg-type]
        await _until_ended(engine, 2)
        await engine.stop()
        return first, second

    first, second = asyncio.run(scenario())
    broken = store.get(first.job_id)
    assert broken is not None and broken.status is JobStatus.FAILED
    assert broken.error_message == "internal error"  # no exception text leaks to callers
    assert store.get(second.job_id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_the_stored_hook_runs_before_any_worker_takes_the_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    hooked: set[int] = set()
    seen_unhooked: list[int] = []

    class Checking(Recorder):
        def answer(self, jobs: Sequence[StoredJob]) -> list[JobOutcome]:
            seen_unhooked.extend(j.job_id for j in jobs if j.job_id not in hooked)
            return super().answer(jobs)

    engine = JobEngine(store, Checking(), workers=4, batch_jobs=1, threads=4)

    async def scenario() -> None:
        await engine.start()
        for k in range(40):
            await engine.submit(**job_fields(k), on_stored=lambda j: hooked.add(j.job_id))  # type: ignore[arg-type]
        await _until_ended(engine, 40)
        await engine.stop()

    asyncio.run(scenario())
    assert len(hooked) == 40 and seen_unhooked == []


def test_end_limit_holds_jobs_running_until_released(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    engine = JobEngine(store, Recorder(), workers=2, batch_jobs=1)
    engine.end_limit = 1

    async def scenario() -> dict[str, int]:
        await engine.start()
        for k in range(3):
            await engine.submit(**job_fields(k))  # type: ignore[arg-type]
        await _until_ended(engine, 1)
        while (await asyncio.to_thread(store.counts))["Running"] < 2:
            await asyncio.sleep(0)
        held = await asyncio.to_thread(store.counts)
        engine.end_limit = None
        await _until_ended(engine, 3)
        await engine.stop()
        return held

    held = asyncio.run(scenario())
    assert held["Completed"] == 1 and held["Running"] == 2
    assert store.counts()["Completed"] == 3


_KILLED_MID_JOB = textwrap.dedent("""
    import asyncio, sys, threading
    from cogseg_ml.prompts import Point, Prompt
    from cogseg_ml.service.job_engine import JobEngine
    from cogseg_ml.service.job_store import JobStore

    class Stuck:
        def answer(self, jobs):
            print("answering", *[j.job_id for j in jobs], flush=True)
            threading.Event().wait()  # the model never returns: the process is killed here

    async def main():
        engine = JobEngine(JobStore(sys.argv[1]), Stuck())
        await engine.start()
        await engine.submit(project="p", file_id=1, file_external_id=None, file_version="v",
                            prompt=Prompt(points=(Point(0.5, 0.5, 1),)), digest="0" * 64,
                            height=8, width=8)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_a_job_running_when_the_process_is_killed_completes_after_a_restart(
        tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_MID_JOB, str(db)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    timer = threading.Timer(120, proc.kill)  # a hung child fails the test, never hangs it
    timer.start()
    try:
        line = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        timer.cancel()
        proc.stdout.close()
    assert line[:1] == ["answering"], line
    job_id = int(line[1])
    store = JobStore(db)
    job = store.get(job_id)
    assert job is not None and job.status is JobStatus.RUNNING  # killed mid-job
    answerer = Recorder()
    engine = JobEngine(store, answerer)

    async def restart() -> None:
        await engine.start()
        await _until_ended(engine, 1)
        await engine.stop()

    asyncio.run(restart())
    assert answerer.batches == [[job_id]]  # the same job, once: not lost, not duplicated
    done = store.get(job_id)
    assert done is not None and done.status is JobStatus.COMPLETED
    assert store.count() == 1


def test_a_completed_jobs_body_is_its_wire_view_with_the_stored_segments(tmp_path: Path
                                                                         ) -> None:
    import numpy as np

    from cogseg_ml.service.segment_wire import mask_segment

    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.add(**job_fields(0))  # type: ignore[arg-type]
    mask = np.zeros((8, 8), bool)
    mask[1:6, 2:7] = True
    mask[3, 4] = False  # a hole: exact polygons keep it
    segments = [mask_segment(mask, 0.9), mask_segment(~mask, 0.25)]
    (taken,) = store.take_queued(1)
    (recorded,) = store.finish([(job.job_id, JobStatus.COMPLETED, segments, None, None)],
                               {job.job_id: taken})
    done = store.get(job.job_id)
    assert done is not None and done.segments == tuple(segments)
    assert recorded == done  # what the engine keeps for polls is what the file holds
    long_way = done.view(created=False).model_dump_json(by_alias=True, exclude_none=True)
    assert done.retrieve_body() == long_way.encode()


def test_taken_jobs_are_returned_as_stored(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    store.add(**job_fields(0))  # type: ignore[arg-type]
    (taken,) = store.take_queued(4)
    assert taken == store.get(taken.job_id)
    assert taken.status is JobStatus.RUNNING and taken.start_time is not None
