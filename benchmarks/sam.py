"""Local Segment-Anything throughput: our backend beside the naive use of each model.

SAM 1 (``segment-anything``): naive use is ``SamPredictor.set_image`` then ``predict`` for every
prompt (the image is encoded again for each prompt). SAM 2.1 (``transformers``): naive use is
the processor plus a full ``Sam2Model`` forward per prompt, then ``post_process_masks``. Ours:
``LocalSamBackend`` (``run()`` on jobs carrying PNG bytes, so decoding and RLE are included for
SAM 2.1): each image encoded once, the prompts of an image through the decoder together, on
CUDA several images per encoder call and bf16 autocast. Measured at 1, 16 and 64 prompts per
image. On the CPU with tiny random-weight models of the real architectures (the real ViT-B
takes 15-30 s per image on this machine's CPU, SAM 2.1 hiera-tiny about 2.5 s); on a GPU pass
``--model vit_b --sam2 hiera-large`` (random weights, real sizes).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import Figure, Report
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.base import BackendJob
from cogseg_ml.backends.local_sam import LocalSamBackend, build_sam, build_tiny_sam
from cogseg_ml.emulator.synthetic_images import encode_image, make_image
from cogseg_ml.prompts import Box, FileRef, Point, Prompt

SAM2_SIZES = ["tiny-test", "hiera-tiny", "hiera-small", "hiera-base-plus", "hiera-large"]


def _prompts(n: int, seed: int) -> list[Prompt]:
    rng = np.random.default_rng(seed)
    return [Prompt(points=(Point(float(x), float(y)),)) for x, y in rng.random((n, 2))]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best(fn: Callable[[int], object], device: torch.device, reps: int) -> float:
    """The shortest of ``reps`` timed calls ``fn(rep)`` (a shared machine's spikes excluded)."""
    times = []
    for rep in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn(rep)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def _boxes(n: int, seed: int) -> list[Prompt]:
    rng = np.random.default_rng(seed)
    out = []
    for x, y, bw, bh in rng.random((n, 4)):
        x0, y0 = 0.7 * float(x), 0.7 * float(y)
        out.append(Prompt(box=Box(x0, y0, x0 + 0.05 + 0.25 * float(bw),
                                  y0 + 0.05 + 0.25 * float(bh))))
    return out


def run(model: str = "tiny", device: str = "auto", images: int = 3,
        sam2: str | None = "tiny-test") -> Report:
    rep = run_sam1(model, device, images)
    if sam2 is not None:
        rep.params["sam2"] = sam2
        rep.add(*run_sam2(sam2, device, images))
    return rep


def run_sam1(model: str = "tiny", device: str = "auto", images: int = 3) -> Report:
    """SAM 1 through ``segment-anything``: the original figures."""
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
    reps = 3 if model == "tiny" else 1
    for n in (1, 16, 64):
        prompts = _prompts(n, n)

        def ours_run(r: int, n: int = n, prompts: list[Prompt] = prompts) -> None:
            # Fresh keys so each image is encoded once per run, then its decoder batches.
            for i, p in enumerate(pix):
                be.segment_image(p, prompts, key=f"ours-{n}-{i}-{r}")

        # Naive: set_image + predict per prompt.
        naive_images = 1 if n > 1 and model != "tiny" else images

        def naive_run(r: int, prompts: list[Prompt] = prompts, k: int = naive_images) -> None:
            for p in pix[:k]:
                for pr in prompts:
                    predictor.set_image(p)
                    h, w = p.shape[:2]
                    predictor.predict(point_coords=np.array([[pr.points[0].x * w - 0.5,
                                                              pr.points[0].y * h - 0.5]]),
                                      point_labels=np.array([1]), multimask_output=True)

        ours = images * n / _best(ours_run, dev, reps)
        naive = naive_images * n / _best(naive_run, dev, reps)
        rep.add(Figure(f"prompts/s at {n} per image", ours, "prompts/s",
                       "naive predictor (re-encode per prompt)", naive))
    # Decoder alone: embedding cached, 64 prompts per call.
    be.decoder_batch_size = 64
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


# --- SAM 2.1 through transformers ----------------------------------------------------------------
def sam2_layout(size: str) -> Any:
    """``Sam2Config`` of a published SAM 2.1 size (random weights), or the tiny test config."""
    from transformers import Sam2Config

    from cogseg_ml.backends.sam2 import tiny_config

    if size == "tiny-test":
        return tiny_config("sam2")
    hiera: dict[str, dict[str, Any]] = {
        "hiera-tiny": {},
        "hiera-small": {"blocks_per_stage": [1, 2, 11, 2], "global_attention_blocks": [7, 10, 13]},
        "hiera-base-plus": {"hidden_size": 112, "num_attention_heads": 2,
                            "embed_dim_per_stage": [112, 224, 448, 896],
                            "num_attention_heads_per_stage": [2, 4, 8, 16],
                            "blocks_per_stage": [2, 3, 16, 3],
                            "global_attention_blocks": [12, 16, 20],
                            "window_positional_embedding_background_size": [14, 14]},
        "hiera-large": {"hidden_size": 144, "num_attention_heads": 2,
                        "embed_dim_per_stage": [144, 288, 576, 1152],
                        "num_attention_heads_per_stage": [2, 4, 8, 16],
                        "blocks_per_stage": [2, 6, 36, 4],
                        "global_attention_blocks": [23, 33, 43],
                        "window_size_per_stage": [8, 4, 16, 8]},
    }
    backbone = {"model_type": "sam2_hiera_det_model", **hiera[size]}
    dims = backbone.get("embed_dim_per_stage", [96, 192, 384, 768])
    vision = {"model_type": "sam2_vision_model", "backbone_config": backbone,
              "backbone_channel_list": list(reversed(dims))}
    return Sam2Config(vision_config=vision)


def sam2_backend(size: str, device: str) -> LocalSamBackend:
    """``LocalSamBackend`` on a random-weight SAM 2.1 of ``size`` (written, loaded, removed)."""
    from cogseg_ml.backends.sam2 import TransformersSamAdapter, save_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_checkpoint(Path(tmp) / "sam2", "sam2", seed=0,
                                        config=sam2_layout(size))
        be = LocalSamBackend.from_pretrained(folder, device=device)
    assert isinstance(be.adapter, TransformersSamAdapter)
    return be


def _naive_sam2(model: Any, proc: Any, pixels: np.ndarray, prompt: Prompt,
                device: torch.device) -> torch.Tensor:
    """What a first user of transformers writes: processor, full forward, post-process."""
    h, w = pixels.shape[:2]
    assert prompt.box is not None
    x0, y0, x1, y1 = prompt.box.to_pixels(w, h)
    inputs = proc(images=pixels, input_boxes=[[[x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5]]],
                  return_tensors="pt", input_data_format="channels_last").to(device)
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    with torch.inference_mode(), ctx:
        out = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                    multimask_output=True)
        masks = proc.post_process_masks(out.pred_masks.float().cpu(),
                                        inputs["original_sizes"].cpu())[0]
    best = int(out.iou_scores[0, 0].argmax())
    return masks[0, best]  # type: ignore[no-any-return]


def _loader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _jobs(pix: list[np.ndarray], prompts: list[Prompt], round_: str) -> list[BackendJob]:
    jobs = []
    for i, p in enumerate(pix):
        data = encode_image(p)
        # A fresh key per round: every image is encoded once per measured round.
        key = f"{round_}:{hashlib.sha256(data).hexdigest()}"
        h, w = p.shape[:2]
        jobs += [BackendJob(SegmentRequest(FileRef(id=i + 1), pr, tag=(i, j)), h, w, key,
                            _loader(data)) for j, pr in enumerate(prompts)]
    return jobs


def run_sam2(size: str = "tiny-test", device: str = "auto", images: int = 3) -> list[Figure]:
    """SAM 2.1 (random weights of a published size, or the tiny test config)."""
    be = sam2_backend(size, device)
    dev, model, proc = be.device, be.model, be.adapter.processor  # type: ignore[attr-defined]
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    tag = f"sam2.1 {size} ({n_params:.1f} M)"
    pix = [make_image(700 + i, 480, 640).pixels for i in range(images)]
    list(be.run(_jobs(pix[:1], _boxes(2, 0), "warm")))  # warm-up (kernels, allocator)
    _naive_sam2(model, proc, pix[0], _boxes(1, 0)[0], dev)
    figs = []

    reps = 1 if size != "tiny-test" else 3

    # Encoder alone: embed_many (encoder batches on CUDA) beside the processor plus
    # get_image_embeddings one image at a time.
    def naive_encode(r: int) -> None:
        for p in pix:
            inputs = proc(images=p, return_tensors="pt",
                          input_data_format="channels_last").to(dev)
            with torch.inference_mode():
                model.get_image_embeddings(inputs["pixel_values"])  # type: ignore[operator]

    ours = images / _best(lambda r: be.embed_many(pix, [f"enc-{r}-{i}" for i in range(images)]),
                          dev, reps)
    naive = images / _best(naive_encode, dev, reps)
    figs.append(Figure(f"{tag} encoder images/s", ours, "images/s",
                       "processor + get_image_embeddings per image", naive,
                       notes=f"encoder batch {be.encoder_batch_size}"))
    real_size = size != "tiny-test"
    for n in (1, 16, 64):
        prompts = _boxes(n, n)
        rounds = [_jobs(pix, prompts, f"ours-{n}-{r}") for r in range(reps)]

        def ours_run(r: int, rounds: list[list[BackendJob]] = rounds) -> None:
            outs = list(be.run(rounds[r]))  # every image encoded once per round
            assert all(o.result is not None for o in outs)

        naive_images = 1 if n > 1 and real_size and dev.type == "cpu" else images

        def naive_run(r: int, prompts: list[Prompt] = prompts, k: int = naive_images) -> None:
            for p in pix[:k]:
                for pr in prompts:
                    _naive_sam2(model, proc, p, pr, dev)

        ours = images * n / _best(ours_run, dev, reps)
        naive = naive_images * n / _best(naive_run, dev, reps)
        goal = ""
        if n == 64:
            goal = ">= 10x on a GPU" if dev.type == "cuda" else ">= 4x on the CPU"
        figs.append(Figure(f"{tag} prompts/s at {n} per image", ours, "prompts/s",
                           "processor + full forward per prompt", naive, goal=goal,
                           notes=f"decoder batch {be.decoder_batch_size or 'auto'}, encoder "
                                 f"batch {be.encoder_batch_size}, device {dev}, best of {reps}"))
    be.close()
    return figs


def main(argv: list[str] | None = None) -> Report:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    p.add_argument("--sam2", default="tiny-test", choices=[*SAM2_SIZES, "none"],
                   help="SAM 2.1 size (random weights); 'none' skips SAM 2.1")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv or [])
    return run(model=a.model, device=a.device, sam2=None if a.sam2 == "none" else a.sam2)


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
