"""A labeling run whose jobs never finish ends: each item fails with JobTimeoutError after the
job timeout (default 900 s, read from an injected clock), and the report says so (the command
line then exits 1 with the report's summary)."""

from __future__ import annotations

import threading
from typing import Any

from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.config import PollConfig
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample

GUARD_S = 60  # the old behaviour waited forever: the run is given this long, then the test fails


class Minutes:
    """A monotonic clock that moves 60 s every time it is read."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 60.0
        return self.t


def test_a_run_whose_jobs_never_finish_ends_with_each_item_failed(
        make_emulator, images, tmp_path) -> None:
    emu = make_emulator(concurrency=8)
    emu.jobs.end_limit = 0  # no job ever ends: Running (or Queued behind them) forever
    cfg = emu.config.with_options(poll=PollConfig(initial_s=0.01, min_interval_s=0.01,
                                                  max_interval_s=0.02))
    api = ApiBackend(cfg)
    api.client.session.client.health.clock = Minutes()
    samples = [Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
               for im in images[:2]]
    lab = SegmentationLabeler(api, cache=tmp_path / "c", workdir=tmp_path / "w", progress=False)
    done: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: done.update(report=lab.label(samples)),
                              daemon=True)
    worker.start()
    worker.join(GUARD_S)
    assert not worker.is_alive(), "the run is still waiting for jobs that never finish"
    rep = done["report"]
    prompts = sum(len(s.instances) for s in samples)
    assert rep.failed == prompts and rep.labelled == 0
    assert set(rep.failure_reasons) and all(r.startswith("JobTimeoutError")
                                            for r in rep.failure_reasons), rep.failure_reasons
    summary = rep.summary()
    assert f"{prompts} failed" in summary and "JobTimeoutError" in summary
    assert "over the job timeout (RetryConfig.job_timeout_s)" in summary, summary
    assert all("900 s after its creation" in f["reason"] for f in rep.failures), rep.failures
    api.close()
