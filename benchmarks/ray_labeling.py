"""Ray Data labelling: items/s with 1 and 2 actors beside the single-process labeler.

Same prompts (point prompts over the emulator's synthetic images, as ``benchmarks.labeler``),
same emulator (its own process, 300 ms per job, server concurrency 32), same run; each side
starts from an empty cache. Ray runs locally (``ray.init(num_cpus=2)``); its start-up is not
timed, the pipeline is (``label_dataset(...).materialize()``). On a machine with 2 cores the
actors share them with the emulator and Ray's own processes, so the ratio says what Ray's
overhead costs there, not what more machines give: the API's latency and rate limit bound one
actor as they bound the labeler, and more actors pay only where they add jobs in flight.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, Report, emulator_process
from benchmarks.labeler import samples


def run(items: int = 1000) -> Report:
    import ray
    import ray.data

    from cogseg_ml.labeler import SegmentationLabeler
    from cogseg_ml.ray import label_dataset, prompt_dataset

    rep = Report("ray_labeling", params={"items": items, "processing_s": 0.3,
                                         "server_concurrency": 32, "ray_num_cpus": 2})
    work = samples(items)
    with emulator_process(processing_time=0.3, concurrency=32) as (cfg, _), \
            tempfile.TemporaryDirectory() as tmp:
        lab = SegmentationLabeler(cfg, cache=Path(tmp) / "lab", workdir=Path(tmp) / "w",
                                  progress=False, concurrency=64)
        t0 = time.perf_counter()
        report = lab.label(work)
        single = report.labelled / (time.perf_counter() - t0)
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(Path(tmp) / "ray"))
        ray.data.DataContext.get_current().enable_progress_bars = False
        rates = {}
        try:
            for actors in (1, 2):
                ds = prompt_dataset(work)
                t0 = time.perf_counter()
                rows = label_dataset(ds, cfg, cache=Path(tmp) / f"ray{actors}", actors=actors,
                                     concurrency=32, batches_in_flight=2).materialize()
                wall = time.perf_counter() - t0
                ok = sum(1 for r in rows.iter_rows() if r["status"] == "ok")
                rates[actors] = (ok / wall, ok)
        finally:
            ray.shutdown()
    for actors, (rate, ok) in rates.items():
        rep.add(Figure(f"items/s, {actors} actor{'s' if actors > 1 else ''}", rate, "items/s",
                       "single-process labeler", single,
                       notes=f"{ok} result rows; 2 cores shared with the emulator and Ray"))
    rep.add(Figure("items/s, 2 actors vs 1", rates[2][0], "items/s", "1 actor", rates[1][0]))
    return rep


def main(argv: list[str] | None = None) -> Report:
    return run()


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
