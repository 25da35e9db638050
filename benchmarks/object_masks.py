"""Random SAM 2.1 weights that give object-like masks, at the same cost.

A random-weight SAM 2.1 answers every prompt with noise: the mask decoder's upscaling kernels
(2x2 transposed convolutions) and the encoder's high-resolution skip features turn random
features into a pixel-scale checkerboard, so one mask is thousands of fragments (the tiny test
layout at 480x640: about 200 polygons and 20,000 vertices per mask; hiera-tiny: about 3,500
polygons). A trained model's masks are objects: a few parts, a smooth outline. Whatever is
measured after the model (tracing polygons, JSON, HTTP) then costs what it would never cost
with real weights.

:func:`object_like` rewrites two parts of a saved random checkpoint so its masks are blobs
(tiny test layout: about 1.5 polygons and 100 vertices per mask), keeping every layer, shape and
floating-point operation, so the model's own time is unchanged:

* the decoder's high-resolution skip projections (``mask_decoder.conv_s0``, ``conv_s1``) keep
  only their bias (their weights become zero);
* each upscaling transposed convolution (``mask_decoder.upscale_conv1``, ``upscale_conv2``)
  gives its 2x2 outputs one kernel, the mean of the four.

Outlines are then staircases of the low-resolution mask's cells, with fewer vertices than a
trained model's smooth outlines; benchmarks say which masks they measured.
"""

from __future__ import annotations

from pathlib import Path

#: The checkpoint file :func:`object_like` rewrites (transformers' ``save_pretrained``).
WEIGHTS = "model.safetensors"


def object_like(folder: Path) -> Path:
    """Rewrite the random SAM 2.1 checkpoint in ``folder`` (see the module docstring) in place;
    returns ``folder``.

    Raises:
        KeyError: the checkpoint has no SAM 2.1 mask decoder.
    """
    from safetensors.torch import load_file, save_file

    path = folder / WEIGHTS
    weights = load_file(path)
    for name in ("conv_s0", "conv_s1"):
        key = f"mask_decoder.{name}.weight"
        weights[key] = weights[key] * 0.0
    for name in ("upscale_conv1", "upscale_conv2"):
        key = f"mask_decoder.{name}.weight"
        kernel = weights[key]
        weights[key] = kernel.mean(dim=(2, 3), keepdim=True).expand_as(kernel).contiguous()
    save_file(weights, path, metadata={"format": "pt"})
    return folder
