"""Masks at training size: 30 instances of a 4000x3000 image, trained at short side 800.

Our side: :func:`cogseg_ml.masks_at_size.rle_at_size` (dense masks straight at 800x1066) and
:func:`~cogseg_ml.masks_at_size.compact_at_size` (the same as :class:`CompactMasks`).
Baselines in the same run, over the same RLEs: a full-resolution decode followed by
torchvision's nearest resize (``v2.functional.resize`` of a ``tv_tensors.Mask``), once with
pycocotools' uint8 decode (what ``wrap_dataset_for_transforms_v2`` hands ``v2.Resize``) and
once with :func:`cogseg_ml.mask_codec.decode` (bool, as the dataset returns today; torchvision
casts bool masks to float32 to resize them). Also: the batch decoder against pycocotools at
full resolution and at training size, bytes pickled per sample (what a DataLoader worker sends
the main process) for compact against dense masks, and the peak memory of each path in a
fresh process. With a GPU: the batch decode on CUDA against the CPU.

Masks are wobbly blobs (polygons with radial noise, 3-30% of the short side) rasterised by
pycocotools straight to RLE. ``python -m benchmarks.masks_at_size`` prints JSON and a table.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as tvf

from benchmarks.common import Figure, Report
from cogseg_ml import mask_codec
from cogseg_ml.masks_at_size import (
    CompactMasks,
    compact_at_size,
    decode_rle_batch,
    rle_at_size,
    target_size,
)

H, W, N = 3000, 4000, 30


def blob_rles(n: int, h: int, w: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` wobbly blobs as pycocotools RLEs (bytes counts), never a dense array."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        r = rng.uniform(0.03, 0.3) * min(h, w)
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        rad = r * (1 + 0.2 * np.sin(3 * t + rng.uniform(0, 6)) + 0.05 * rng.standard_normal(96))
        xs = np.clip(cx + rad * np.cos(t), 0, w)
        ys = np.clip(cy + rad * np.sin(t) * rng.uniform(0.6, 1.4), 0, h)
        out.append(coco_mask.frPyObjects([np.stack([xs, ys], 1).ravel().tolist()], h, w)[0])
    return out


def _str_rles(rles: list[dict[str, Any]]) -> list[mask_codec.Rle]:
    return [{"size": list(r["size"]), "counts": r["counts"].decode()} for r in rles]


def _baseline_pycocotools(rles: list[dict[str, Any]], out: tuple[int, int]) -> torch.Tensor:
    full = torch.from_numpy(coco_mask.decode(rles)).permute(2, 0, 1)  # uint8 (N, H, W)
    return tvf.resize(tv_tensors.Mask(full), list(out)).as_subclass(torch.Tensor)


def _baseline_codec(rles: list[mask_codec.Rle], out: tuple[int, int]) -> torch.Tensor:
    full = torch.from_numpy(mask_codec.decode(rles))  # bool (N, H, W), strided
    return tvf.resize(tv_tensors.Mask(full), list(out)).as_subclass(torch.Tensor)


def _best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best time of each, interleaved so that both sides see the same machine load."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_child(side: str) -> None:
    """In a fresh process: run one path once, print its peak RSS growth in MiB.

    The peak (``VmHWM``) is reset first: a child's ``ru_maxrss`` would start at its parent's.
    """
    rles = blob_rles(N, H, W)
    out = target_size(H, W, 800, 1333)
    strs = _str_rles(rles)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_kib("VmRSS")
    {"rle_at_size": lambda: rle_at_size(rles, H, W, *out),
     "compact_at_size": lambda: compact_at_size(rles, H, W, *out),
     "pycocotools+resize": lambda: _baseline_pycocotools(rles, out),
     "mask_codec+resize": lambda: _baseline_codec(strs, out)}[side]()
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def _peak_mib(side: str) -> float:
    res = subprocess.run([sys.executable, "-m", "benchmarks.masks_at_size", "--peak", side],
                         capture_output=True, text=True, check=True)
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"])


def run(repeats: int = 3) -> Report:
    out = target_size(H, W, 800, 1333)
    rep = Report("masks_at_size", params={"image": f"{W}x{H}", "instances": N,
                                          "target": f"{out[1]}x{out[0]}",
                                          "resize": "v2.Resize(800, max_size=1333)",
                                          "torch_threads": 1})
    torch.set_num_threads(1)
    rles = blob_rles(N, H, W)
    strs = _str_rles(rles)
    ours = rle_at_size(rles, H, W, *out)
    assert torch.equal(ours, _baseline_pycocotools(rles, out).bool())
    compact = compact_at_size(rles, H, W, *out)
    assert torch.equal(compact.to_dense(), ours)

    t = _best({"ours": lambda: rle_at_size(rles, H, W, *out),
               "compact": lambda: compact_at_size(rles, H, W, *out),
               "coco": lambda: _baseline_pycocotools(rles, out),
               "codec": lambda: _baseline_codec(strs, out)}, repeats)
    rep.add(Figure(f"rle_at_size, {N} masks {W}x{H} -> {out[1]}x{out[0]}", t["ours"] * 1e3,
                   "ms", "pycocotools decode + v2 nearest resize", t["coco"] * 1e3,
                   higher_is_better=False),
            Figure("rle_at_size (same)", t["ours"] * 1e3, "ms",
                   "mask_codec.decode + v2 resize (bool)", t["codec"] * 1e3,
                   higher_is_better=False),
            Figure("compact_at_size (CompactMasks, same masks)", t["compact"] * 1e3, "ms",
                   "pycocotools decode + v2 nearest resize", t["coco"] * 1e3,
                   higher_is_better=False))

    # The batch decoder at full resolution and at training size, against pycocotools.
    small_rles = compact.to_rles()
    coco_small = [{"size": r["size"], "counts": r["counts"].encode()} for r in small_rles]
    full_compact = CompactMasks.from_rles(rles, H, W)
    t = _best({"full": lambda: full_compact.to_dense(),
               "full_coco": lambda: coco_mask.decode(rles),
               "full_codec": lambda: mask_codec.decode(strs),
               "small": lambda: compact.to_dense(),
               "small_coco": lambda: coco_mask.decode(coco_small)}, repeats)
    rep.add(Figure(f"CompactMasks.to_dense, {N} at {W}x{H} (CPU)", t["full"] * 1e3, "ms",
                   "pycocotools decode", t["full_coco"] * 1e3, higher_is_better=False,
                   notes=f"mask_codec.decode: {t['full_codec'] * 1e3:.0f} ms"),
            Figure(f"CompactMasks.to_dense, {N} at {out[1]}x{out[0]} (CPU)", t["small"] * 1e3,
                   "ms", "pycocotools decode", t["small_coco"] * 1e3, higher_is_better=False))

    # Bytes a worker pickles per sample.
    dense_bytes = len(pickle.dumps(ours.contiguous()))
    rep.add(Figure(f"bytes pickled per sample, CompactMasks at {out[1]}x{out[0]}",
                   len(pickle.dumps(compact)), "B", "dense bool masks, same size", dense_bytes,
                   higher_is_better=False,
                   notes=f"CompactMasks at full {W}x{H}: {len(pickle.dumps(full_compact))} B"))

    # Peak memory of each path in a fresh process.
    peaks = {s: _peak_mib(s) for s in ("rle_at_size", "compact_at_size", "pycocotools+resize",
                                       "mask_codec+resize")}
    rep.add(Figure("peak memory growth, rle_at_size", peaks["rle_at_size"], "MiB",
                   "pycocotools decode + v2 resize", peaks["pycocotools+resize"],
                   higher_is_better=False,
                   notes=f"mask_codec + v2 resize (bool, cast to float32 by torchvision): "
                         f"{peaks['mask_codec+resize']:.0f} MiB"),
            Figure("peak memory growth, compact_at_size", peaks["compact_at_size"], "MiB",
                   "pycocotools decode + v2 resize", peaks["pycocotools+resize"],
                   higher_is_better=False))

    if torch.cuda.is_available():
        rep.add(*device_decode_figures(torch.device("cuda"), repeats))
    return rep


def device_decode_figures(dev: torch.device, repeats: int = 3) -> list[Figure]:
    """The batch decoder at full resolution on ``dev`` (CUDA) beside the same on the CPU."""
    rles = blob_rles(N, H, W)
    full_compact = CompactMasks.from_rles(rles, H, W)
    decode_rle_batch(rles, H, W, device=dev)  # warm-up (kernels, allocator)
    _sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    _sync()

    def on_device() -> None:
        full_compact.to_dense(dev)
        _sync()

    t = _best({"device": on_device, "cpu": lambda: full_compact.to_dense()}, repeats)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return [Figure(f"CompactMasks.to_dense, {N} at {W}x{H}, {dev.type.upper()}",
                   t["device"] * 1e3, "ms", "the same on the CPU", t["cpu"] * 1e3,
                   higher_is_better=False, notes=where)]


def main(argv: list[str] | None = None) -> Report:
    return run()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--peak":
        _peak_child(sys.argv[2])
    else:
        from benchmarks.common import table

        written = json.loads(main(sys.argv[1:]).write().read_text())
        print(json.dumps(written, indent=1))
        print(table([written]))
