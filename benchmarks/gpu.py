"""Every GPU figure in one command (``make bench-gpu``), within a time budget (8 min default).

On one CUDA GPU, with random weights of the real architectures (nothing is downloaded):

1. **Local labelling, SAM 2.1** hiera-tiny and hiera-large, bf16 autocast, encoder batches:
   images/s at 1, 16 and 64 prompts per image through ``LocalSamBackend.run`` (PNG decode and
   RLE encode included) beside the naive use of transformers (processor plus a full forward
   per prompt); the encoder's and the rest's (decoder, post-processing, RLE) share of the time;
   peak GPU memory beside the naive loop's. Goals on one H100/H200: hiera-large >= 50 images/s
   at 16 prompts per image, decoder and the rest < 20% of the time.
2. **Batched text detection**: the Swin-T Grounding DINO layout in bf16, 8 classes, beside the
   naive loop (``benchmarks.text_labeling``).
3. **Batch mask decode** on CUDA beside the CPU (``benchmarks.masks_at_size``).
4. **A local-model Ray actor** (``LocalModelSpec``, ``num_gpus=1``) labelling the emulator's
   images, beside the single-process labeller with the same model in the same run.
5. **``cogseg serve``** on the GPU (hiera-tiny layout, 8 images x 16 prompts) beside the same
   model in-process, and its encoder passes per job (``benchmarks.service``).
6. **``cogseg serve --ray``**: Ray Serve with 1 and 2 model replicas sharing the GPU (half a GPU
   each, hiera-tiny layout) beside the single-node service on the same model
   (``benchmarks.service --ray --sam``). Not in ``--smoke``: Ray Serve takes a minute to start
   on a small CPU machine; ``python -m benchmarks.service --ray --sam`` runs the same code there.

Writes ``benchmarks/results/gpu.json`` (``--out`` elsewhere); ``python -m benchmarks table``
puts it in the docs and README tables. Without a CUDA GPU it says so in one line and exits 0
(writing nothing). ``--smoke`` runs every section with the tiny test configurations on the
CPU in seconds, so the code path is tested where there is no GPU (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Figure, Report, emulator_process, table

#: What one section may not start past, counted from the command's start (the Ray section
#: needs about a minute).
SECTION_RESERVE_S = 60.0


class Budget:
    """The command's time budget: a section starts only while enough of it remains."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = clock() + seconds
        self.skipped: list[str] = []

    def allows(self, section: str, needs_s: float = SECTION_RESERVE_S) -> bool:
        """Whether ``section`` may start; a skipped one is remembered for the report."""
        if self.deadline - self.clock() >= needs_s:
            return True
        self.skipped.append(section)
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak GPU memory allocated while ``fn`` runs, in MiB (0 on the CPU)."""
    if device.type != "cuda":
        fn()
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 1024**2


def sam_figures(size: str, device: str, images: int, prompts: tuple[int, ...]
                ) -> list[Figure]:
    """SAM 2.1 of one size: images/s per prompt count, encoder share, peak memory."""
    from benchmarks.sam import _boxes, _jobs, sam2_backend
    from cogseg_ml.emulator.synthetic_images import make_image

    be = sam2_backend(size, device)
    dev = be.device
    n_params = sum(p.numel() for p in be.model.parameters()) / 1e6
    dtype = "bf16" if dev.type == "cuda" else "float32"
    tag = f"sam2.1 {size} ({n_params:.0f} M, {dtype})"
    pix = [make_image(700 + i, 480, 640).pixels for i in range(images)]
    list(be.run(_jobs(pix[:2], _boxes(2, 0), "warm")))  # kernels, allocator, autotuning
    figs = []
    for n in prompts:
        figs += _sam_at(be, pix, n, tag, size)
    be.close()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return figs


def _sam_at(be: Any, pix: list[Any], n: int, tag: str, size: str) -> list[Figure]:
    """One prompt count: ours, the encoder alone, the naive loop, peak memory."""
    from benchmarks.sam import _boxes, _jobs, _naive_sam2

    dev, model, proc = be.device, be.model, be.adapter.processor
    boxes = _boxes(n, n)
    jobs = _jobs(pix, boxes, f"ours-{n}")
    keys = [f"enc-{n}-{hashlib.sha256(p.tobytes()).hexdigest()}" for p in pix]
    encode_s = _timed(lambda: be.embed_many(pix, keys), dev)
    outcomes: list[Any] = []
    peak = _peak_mib(lambda: outcomes.extend(be.run(jobs)), dev)
    run_s = _timed(lambda: list(be.run(_jobs(pix, boxes, f"again-{n}"))), dev)
    assert len(outcomes) == len(jobs) and all(o.result is not None for o in outcomes)
    k = min(n, 8)  # the naive loop is long: its rate per prompt from a few prompts
    naive_s = _timed(lambda: [_naive_sam2(model, proc, pix[0], b, dev) for b in boxes[:k]],
                     dev)
    naive_peak = _peak_mib(lambda: _naive_sam2(model, proc, pix[0], boxes[0], dev), dev)
    naive_rate = 1.0 / (naive_s / k * n)  # images/s: n prompts an image, one at a time
    rest = max(0.0, run_s - encode_s) / run_s
    goal = ">= 50 images/s" if size == "hiera-large" and n == 16 else ""
    images = len(pix)
    return [
        Figure(f"{tag}: images/s at {n} prompts per image", images / run_s, "images/s",
               "processor + full forward per prompt", naive_rate, goal=goal,
               notes=f"{images} images 480x640, encoder batch {be.encoder_batch_size}, "
                     f"device {_where(dev)}"),
        Figure(f"{tag}: decoder + post-processing share at {n} prompts", rest * 100, "%",
               "encoder share", (1 - rest) * 100, higher_is_better=False,
               goal="< 20%" if goal else "",
               notes=f"encoder alone {encode_s:.3f} s of {run_s:.3f} s"),
        Figure(f"{tag}: peak GPU memory at {n} prompts per image", peak, "MiB",
               "naive, one prompt", naive_peak, higher_is_better=False),
    ]


def _where(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"


def text_figures(smoke: bool) -> list[Figure]:
    """Batched Grounding DINO (Swin-T layout, bf16) beside the naive loop."""
    from benchmarks.text_labeling import run_layout

    if smoke:
        return run_layout("tiny", "cpu", 2, 2, 1)
    return run_layout("swin-t", "cuda", 16, 8, 1)


def mask_decode_figures(device: str) -> list[Figure]:
    """The batch mask decoder on ``device`` beside the CPU."""
    from benchmarks.masks_at_size import device_decode_figures

    return device_decode_figures(torch.device(device), repeats=3)


def ray_figures(device: str, items: int, smoke: bool) -> list[Figure]:
    """One local-model Ray actor (one GPU) beside the single-process labeller, same model."""
    import ray
    import ray.data

    from benchmarks.labeler import samples
    from benchmarks.sam import sam2_layout
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.backends.sam2 import save_random_checkpoint
    from cogseg_ml.labeler import SegmentationLabeler
    from cogseg_ml.ray import LocalModelSpec, label_dataset, prompt_dataset

    work = samples(items)
    size = "tiny-test" if smoke else "hiera-tiny"
    gpus = 0 if device == "cpu" else 1
    with emulator_process(processing_time=0.0, concurrency=32) as (cfg, _), \
            tempfile.TemporaryDirectory() as tmp:
        folder = save_random_checkpoint(Path(tmp) / "sam2", "sam2", seed=0,
                                        config=sam2_layout(size))
        local = LocalSamBackend.from_pretrained(folder, device=device)
        lab = SegmentationLabeler(local, cache=Path(tmp) / "lab", workdir=Path(tmp) / "w",
                                  progress=False, config=cfg)
        t0 = time.perf_counter()
        single = lab.label(work).labelled / (time.perf_counter() - t0)
        local.close()
        del local
        if device != "cpu":
            torch.cuda.empty_cache()  # the actor gets the whole GPU
        ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False,
                 _temp_dir=str(Path(tmp) / "ray"))
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            spec = LocalModelSpec(folder, device="auto" if gpus else "cpu")
            t0 = time.perf_counter()
            rows = label_dataset(prompt_dataset(work), spec, config=cfg,
                                 cache=Path(tmp) / "ray", actors=1,
                                 num_gpus=gpus or None).materialize()
            wall = time.perf_counter() - t0
            ok = sum(1 for r in rows.iter_rows() if r["status"] == "ok")
        finally:
            ray.shutdown()
    return [Figure(f"Ray, 1 local-model actor ({size}, {gpus} GPU): items/s", ok / wall,
                   "items/s", "single-process labeller, same model", single,
                   notes=f"{ok} of {items} items; actor start-up and model load included")]


def service_figures(device: str, smoke: bool) -> list[Figure]:
    """``cogseg serve`` on the GPU beside the same model in-process (``benchmarks.service``)."""
    from benchmarks.service import run as run_service

    if smoke:
        return run_service(images=1, prompts=2, device="cpu", config="tiny-test",
                           rounds=1).figures
    return run_service(images=8, prompts=16, device=device, config="hiera-tiny").figures


def service_ray_figures(device: str) -> list[Figure]:
    """``cogseg serve --ray`` on the GPU: 1 and 2 replicas beside the single-node service."""
    from benchmarks.service import ray_sam_run

    return ray_sam_run(16, 16, device, "hiera-tiny", cpus_per_replica=1.0,
                       gpus_per_replica=0.5).figures


def run(*, smoke: bool = False, budget_s: float = 480.0, images: int = 32,
        ray_items: int = 400) -> Report:
    """Every section that fits the budget (a skipped one is named in the report)."""
    device = "cpu" if smoke else "cuda"
    budget = Budget(budget_s)
    sizes = ["tiny-test"] if smoke else ["hiera-tiny", "hiera-large"]
    rep = Report("gpu", params={"device": _where(torch.device(device)), "smoke": smoke,
                                "budget_s": budget_s, "images": images,
                                "torch": torch.__version__})
    if smoke:
        images, ray_items = 2, 12
    for size in sizes:
        if budget.allows(f"sam2.1 {size}", needs_s=0 if smoke else 90):
            rep.add(*sam_figures(size, device, images, (1, 16, 64)))
    if budget.allows("text detection", needs_s=0 if smoke else 60):
        rep.add(*text_figures(smoke))
    if budget.allows("mask decode", needs_s=0 if smoke else 20):
        rep.add(*mask_decode_figures(device))
    if budget.allows("ray actor", needs_s=0 if smoke else 90):
        rep.add(*ray_figures(device, ray_items, smoke))
    if budget.allows("segment service", needs_s=0 if smoke else 90):
        rep.add(*service_figures(device, smoke))
    if not smoke and budget.allows("segment service on Ray Serve", needs_s=150):
        rep.add(*service_ray_figures(device))  # not in --smoke: see the module docstring
    rep.params["skipped"] = budget.skipped
    return rep


def main(argv: list[str] | None = None) -> Report | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny configurations on the CPU: checks the code path, no figures")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="no section starts when it would not end within this (default 480)")
    p.add_argument("--out", type=Path, default=None,
                   help="the result file (default benchmarks/results/gpu.json)")
    a = p.parse_args(argv or [])
    if not a.smoke and not torch.cuda.is_available():
        print("bench-gpu: no CUDA GPU on this machine; nothing measured (run it where "
              "torch.cuda.is_available() is true)")
        return None
    rep = run(smoke=a.smoke, budget_s=a.budget_s)
    path = rep.write(a.out)
    print(table([json.loads(path.read_text())]))
    print(f"wrote {path}" + (f"; skipped for time: {', '.join(rep.params['skipped'])}"
                             if rep.params["skipped"] else ""))
    return rep


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
    sys.exit(0)
