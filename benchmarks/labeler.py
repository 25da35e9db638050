"""Labeler: throughput against a naive loop, and peak memory as the number of items grows.

Throughput: 2000 prompts against the emulator (300 ms processing, server concurrency 32), the
labeler beside a naive loop (create a job, sleep 1 s, poll until done, one after another; timed
on a few items, as its rate does not depend on how many). Memory: the labeler's peak RSS for
1k and 10k prompts (fast jobs), each in a fresh process; flat means the 10k run peaks no
higher than the 1k run plus a small margin.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, Report, emulator_process
from cogseg_ml import Point, Prompt, SegmentationClient
from cogseg_ml.emulator.synthetic_images import make_dataset
from cogseg_ml.prompts import FileRef
from cogseg_ml.samples import Instance, Sample

N_IMAGES = 20  # the emulator's --synthetic images


def samples(n_items: int, n_images: int = N_IMAGES) -> list[Sample]:
    """``n_items`` distinct point prompts spread over the emulator's first ``n_images``
    synthetic images (``--synthetic`` must serve that many)."""
    images = make_dataset(n_images)
    per_image = -(-n_items // n_images)
    out, made = [], 0
    for im in images:
        insts = []
        for k in range(per_image):
            if made == n_items:
                break
            obj = im.objects[k % len(im.objects)]
            ys, xs = obj.mask.nonzero()
            j = (k * 7919) % len(xs)
            insts.append(Instance(Prompt(points=(Point.from_pixels(
                xs[j] + 0.5, ys[j] + 0.5, im.width, im.height),)), obj.category))
            made += 1
        if insts:
            out.append(Sample(FileRef(external_id=im.name), tuple(insts)))
    return out


_MEMORY_SCRIPT = """
import json, sys


def hwm_kib():
    # VmHWM: this process's peak RSS since exec (ru_maxrss would include the parent's at fork).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

from benchmarks.labeler import samples
from cogseg_ml.config import CdfConfig, ClientCredentials
from cogseg_ml.labeler import SegmentationLabeler
info = json.loads(sys.argv[1]); n = int(sys.argv[2]); root = sys.argv[3]
cfg = CdfConfig(project=info["project"], base_url=info["base_url"], credentials=
                ClientCredentials(info["token_url"], info["client_id"], info["client_secret"]))
items = samples(n)
base = hwm_kib()
lab = SegmentationLabeler(cfg, cache=root + "/cache", workdir=root + "/work", progress=False,
                          concurrency=64)
rep = lab.label(items)
lab.to_coco(root + "/out.json")
peak = hwm_kib()
print(json.dumps({"labelled": rep.labelled, "failed": rep.failed, "base_kib": base,
                  "peak_kib": peak}))
"""


def _memory_run(info: dict[str, str], n: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, json.dumps(info), str(n),
                              tmp], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(items: int = 2000, naive_items: int = 4) -> Report:
    from cogseg_ml.labeler import SegmentationLabeler

    rep = Report("labeler", params={"items": items, "processing_s": 0.3,
                                    "server_concurrency": 32, "labeler_concurrency": 128})
    with emulator_process(processing_time=0.3, concurrency=32, synthetic=N_IMAGES) as (cfg, _):
        work = samples(items)
        with tempfile.TemporaryDirectory() as tmp:
            lab = SegmentationLabeler(cfg, cache=Path(tmp) / "cache", workdir=Path(tmp) / "w",
                                      progress=False, concurrency=128)
            t0 = time.perf_counter()
            report = lab.label(work)
            wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        flat = [(s.file, i.prompt) for s in samples(naive_items) for i in s.instances]
        with SegmentationClient(cfg) as client:
            for f, p in flat[:naive_items]:
                client.download(f)
                job = client.create_job(f, prompt=p)
                time.sleep(1.0)
                while not client.retrieve_job(job.job_id).status.is_terminal:
                    time.sleep(1.0)
        naive_rate = naive_items / (time.perf_counter() - t0)
    ideal = items * 0.3 / 32
    rep.add(Figure("items/s", report.labelled / wall, "items/s", "naive loop", naive_rate),
            Figure("wall time, 2000 items", wall, "s", "server-limited ideal", ideal,
                   higher_is_better=False),
            Figure("labelled", report.labelled, "items", "submitted", items, goal="1.0x"))
    with emulator_process(processing_time=0.0, concurrency=64, synthetic=N_IMAGES) as (cfg, _):
        creds = cfg.credentials
        info = {"project": cfg.project, "base_url": cfg.base_url,
                "token_url": creds.token_url, "client_id": creds.client_id,  # type: ignore[union-attr]
                "client_secret": creds.client_secret.reveal()}  # type: ignore[union-attr]
        small = _memory_run(info, 1000)
        large = _memory_run(info, 10000)
    rep.add(Figure("peak RSS growth, 10k items", (large["peak_kib"] - large["base_kib"]) / 1024,
                   "MiB", "peak RSS growth, 1k items",
                   (small["peak_kib"] - small["base_kib"]) / 1024, higher_is_better=False,
                   goal="flat (about 1x)",
                   notes=f"labelled {small['labelled']} and {large['labelled']}"),
            Figure("peak RSS, 10k items", large["peak_kib"] / 1024, "MiB", "peak RSS, 1k items",
                   small["peak_kib"] / 1024, higher_is_better=False, goal="flat (about 1x)"))
    return rep


def main(argv: list[str] | None = None) -> Report:
    return run()


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
