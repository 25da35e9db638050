"""``cogseg demo``: README's main job on the embedded emulator."""

from __future__ import annotations

import argparse
from typing import Any

from cogseg_ml.cli.common import positive, signals_stop_the_run, stopped


def run(args: argparse.Namespace) -> int:
    from cogseg_ml.demo import run_demo
    from cogseg_ml.exports.folder_writer import check_out

    check_out(args.out, "demo", flag="--out")  # before the emulator starts
    with signals_stop_the_run() as received:
        try:
            return run_demo(args.out, n_images=args.images, quiet=args.quiet)
        except KeyboardInterrupt:
            return stopped(received, args.out)


def register(sub: Any) -> None:
    """Add ``demo`` to the subcommands ``sub``."""
    d = sub.add_parser("demo", help="label bundled images through the emulator (README's job)",
                       description="Start the emulator on bundled images, segment them through "
                                   "the real client, and write results and a report to --out. "
                                   "The folder appears only when the demo is done, with a "
                                   "manifest (cogseg-output.json); an earlier demo there is "
                                   "replaced whole, and a folder holding anything else is "
                                   "refused (exit 2).")
    d.add_argument("--out", default="demo_out",
                   help="output folder: new, empty, or an earlier demo's (default demo_out)")
    d.add_argument("--images", type=positive, default=12, help="synthetic images to label")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run)
