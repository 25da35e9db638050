"""The summary of a labelling run stopped by SIGINT counts what was finished and stored, and
so does the command line's ``--report``.

Ctrl-C arrives after ``n`` answers (the API backend over real HTTP, a real SQLite cache file):
the summary the CLI prints must say how many prompts are finished and stored (answers of this
run plus results already cached), how many failed, and how to resume, never "0 labelled".
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.cli import main
from cogseg_ml.errors import RunInterrupted
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import Box, FileRef, Prompt
from cogseg_ml.samples import Instance, Sample
from tests.exports.outputs import more_jobs_than, signalled_when
from tests.test_cli_input import cdf_env, write_prompts
from tests.test_crash_safety import InterruptAfter


def samples_for(images) -> list[Sample]:
    """Five slightly different boxes per object: 15 distinct prompts per image."""
    out = []
    for im in images:
        insts = []
        for o in im.objects:
            b = o.box()
            for k in range(5):
                d = 0.002 * k
                insts.append(Instance(Prompt(box=Box(b.x_min + d, b.y_min, b.x_max,
                                                     b.y_max - d)), o.category))
        out.append(Sample(FileRef(external_id=im.name), tuple(insts)))
    return out


def labeler(emu, cache: Path, work: Path, n: int | None = None) -> SegmentationLabeler:
    backend = ApiBackend(emu.config, concurrency=8)
    return SegmentationLabeler(backend if n is None else InterruptAfter(backend, n),
                               config=emu.config, progress=False, cache=cache, workdir=work)


def stored(cache: Path) -> int:
    return MaskCache(cache).stats().entries


def test_sigint_summary_counts_what_was_finished_and_stored(shared_emulator, images,
                                                            tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    lab = labeler(shared_emulator, cache, tmp_path / "work", n=20)
    with pytest.raises(RunInterrupted) as info:
        lab.label(samples_for(images))
    summary = info.value.summary
    assert stored(cache) == 20
    assert summary.splitlines()[0] == (
        "stopped by SIGINT: 20 finished and stored; run the same command again to resume")
    assert "0 labelled" not in summary
    assert lab.report.interrupted == "SIGINT" and lab.report.stored == 20
    assert lab.report.as_dict()["stored"] == 20
    assert lab.report.as_dict()["interrupted"] == "SIGINT"


def test_sigint_summary_counts_cached_results_and_failures(shared_emulator, images,
                                                           tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    samples = samples_for(images)
    labeler(shared_emulator, cache, tmp_path / "first").label(samples[:1])  # 15 cached
    assert stored(cache) == 15
    missing = Sample(FileRef(external_id="no-such-file.png"),
                     (Instance(Prompt(box=Box(0.1, 0.1, 0.5, 0.5))),
                      Instance(Prompt(box=Box(0.2, 0.2, 0.6, 0.6)))))
    lab = labeler(shared_emulator, cache, tmp_path / "second", n=10)
    with pytest.raises(RunInterrupted) as info:
        lab.label([*samples, missing])
    summary = info.value.summary
    assert stored(cache) == 25
    first = summary.splitlines()[0]
    assert first == ("stopped by SIGINT: 25 finished and stored; run the same command again "
                     "to resume")
    assert re.search(r"\b25 finished \(15 from cache, 10 jobs run\), 2 failed\b", summary)
    assert "NotFoundError" in summary  # why the two failed
    assert "25 finished and stored" in str(info.value)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_cli_run_still_writes_its_report(sig: signal.Signals, env, images,
                                                  tmp_path: Path) -> None:
    """``cogseg label --report`` stopped by a signal: the report says what was finished and
    stored (the cached image's masks), that the run was stopped and by what; ``--out`` is not
    written."""
    cache, report, out = tmp_path / "cache", tmp_path / "run.json", tmp_path / "labels.json"
    first = write_prompts(tmp_path / "first.jsonl", images[:1])
    assert main(["label", "--no-progress", "--prompts", str(first), "--cache", str(cache),
                 "--out", str(tmp_path / "first.json")]) == 0
    cached = len(images[0].objects)
    env.jobs.end_limit = 0  # from now on no job ends: the run is stopped mid-way
    jobs = len(env.jobs.jobs)
    both = write_prompts(tmp_path / "both.jsonl", images[:2])
    proc = subprocess.Popen([sys.executable, "-m", "cogseg_ml.cli", "label", "--no-progress",
                             "--prompts", str(both), "--cache", str(cache), "--out", str(out),
                             "--report", str(report)],
                            env={**os.environ, **cdf_env(env)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # signalled once the second image's first job is in flight
    returncode, err = signalled_when(proc, more_jobs_than(env, jobs, proc), sig)
    assert returncode == 128 + sig, err
    assert not out.exists()
    written = json.loads(report.read_text())
    assert written["written_by"].startswith("cogseg_ml ")
    assert written["interrupted"] == sig.name
    assert written["stored"] == written["from_cache"] == cached
    assert written["instances"] == sum(len(im.objects) for im in images[:2])
    assert f"{cached} finished and stored" in err, err
