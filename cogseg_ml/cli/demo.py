"""``cogseg demo``: README's main job on the embedded emulator."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> int:
    from cogseg_ml.demo import run_demo

    return run_demo(Path(args.out), n_images=args.images, quiet=args.quiet)


def register(sub: Any) -> None:
    """Add ``demo`` to the subcommands ``sub``."""
    d = sub.add_parser("demo", help="label bundled images through the emulator (README's job)",
                       description="Start the emulator on bundled images, segment them through "
                                   "the real client, and write results and a report to --out.")
    d.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    d.add_argument("--images", type=int, default=12, help="synthetic images to label")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run)
