"""Local Segment-Anything throughput: our backend beside the naive predictor use.

Naive use: ``SamPredictor.set_image`` then ``predict`` for every prompt (the image is encoded
again for each prompt). Ours: the image is encoded once (embedding cache) and the prompts of an
image go through the decoder in one batch. Measured at 1, 16 and 64 prompts per image. On the
CPU with the tiny random-weight model of the real architecture (the real ViT-B takes 15-30 s
per image on this machine's CPU); on a GPU, pass ``--model vit_b`` (random weights, real size).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import Figure, Report
from cogseg_ml.backends.local_sam import LocalSamBackend, build_sam, build_tiny_sam
from cogseg_ml.emulator.synthetic_images import make_image
from cogseg_ml.prompts import Point, Prompt


def _prompts(n: int, seed: int) -> list[Prompt]:
    rng = np.random.default_rng(seed)
    return [Prompt(points=(Point(float(x), float(y)),)) for x, y in rng.random((n, 2))]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(model: str = "tiny", device: str = "auto", images: int = 3) -> Report:
    from segment_anything import SamPredictor

    net = build_tiny_sam() if model == "tiny" else build_sam(model, None)
    be = LocalSamBackend(model=net, device=device)
    dev = be.device
    rep = Report("sam", params={"model": model, "device": str(dev), "images": images,
                                "image_size": "480x640"})
    pix = [make_image(500 + i, 480, 640).pixels for i in range(images)]
    be.segment_image(pix[0], _prompts(2, 0), key="warm")  # warm-up (kernels, allocator)
    predictor = SamPredictor(be.model)

    # Encoder alone.
    _sync(dev)
    t0 = time.perf_counter()
    for i, p in enumerate(pix):
        be.embed(p, key=f"enc-{i}")
    _sync(dev)
    enc_rate = images / (time.perf_counter() - t0)
    rep.add(Figure("encoder images/s", enc_rate, "images/s", "", None))
    for n in (1, 16, 64):
        prompts = _prompts(n, n)
        # Ours: fresh keys so each image is encoded once per run, then one decoder batch.
        _sync(dev)
        t0 = time.perf_counter()
        for i, p in enumerate(pix):
            be.segment_image(p, prompts, key=f"ours-{n}-{i}")
        _sync(dev)
        ours = images * n / (time.perf_counter() - t0)
        # Naive: set_image + predict per prompt.
        naive_images = 1 if n > 1 and model != "tiny" else images
        _sync(dev)
        t0 = time.perf_counter()
        for p in pix[:naive_images]:
            for pr in prompts:
                predictor.set_image(p)
                h, w = p.shape[:2]
                predictor.predict(point_coords=np.array([[pr.points[0].x * w - 0.5,
                                                          pr.points[0].y * h - 0.5]]),
                                  point_labels=np.array([1]), multimask_output=True)
        _sync(dev)
        naive = naive_images * n / (time.perf_counter() - t0)
        rep.add(Figure(f"prompts/s at {n} per image", ours, "prompts/s",
                       "naive predictor (re-encode per prompt)", naive))
    # Decoder alone: embedding cached, 64 prompts per call.
    prompts = _prompts(64, 99)
    be.segment_image(pix[0], prompts, key="dec")
    _sync(dev)
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        be.segment_image(pix[0], prompts, key="dec")
    _sync(dev)
    dec_rate = reps * 64 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for pr in prompts[:16]:
        be.segment_image(pix[0], [pr], key="dec")
    _sync(dev)
    one_rate = 16 / (time.perf_counter() - t0)
    rep.add(Figure("decoder prompts/s, batch of 64, cached embedding", dec_rate, "prompts/s",
                   "one prompt per call, cached embedding", one_rate))
    return rep


def main(argv: list[str] | None = None) -> Report:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv or [])
    return run(model=a.model, device=a.device)


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
