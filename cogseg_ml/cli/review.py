"""``cogseg review``: a static page to accept or reject the masks of a labels file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cogseg_ml.cli.common import (
    EXIT_OK,
    guard_outputs,
    input_file,
    say,
    signals_stop_the_run,
    stopped,
)
from cogseg_ml.errors import ValidationError


def _image_source(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The cache (when there is one), then CDF (when configured and not --offline)."""
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.review.images import fetched
    from cogseg_ml.store.image_fetcher import ImageFetcher

    config = None
    if not args.offline:
        try:
            config = CdfConfig.from_env()
        except ValidationError:
            config = None  # no CDF configured: the cache only
    fetcher = ImageFetcher(args.cache, config, offline=config is None)
    return fetched(fetcher), [fetcher]


def run(args: argparse.Namespace) -> int:

    with signals_stop_the_run() as received:
        try:
            return _review(args)
        except KeyboardInterrupt:
            return stopped(received, args.out)


def _review(args: argparse.Namespace) -> int:
    from cogseg_ml.coco_io import read_labels
    from cogseg_ml.exports.folder_writer import check_out
    from cogseg_ml.review.page import write_review_page
    from cogseg_ml.store.image_fetcher import existing_cache

    labels = input_file(args.labels, "LABELS")
    existing_cache(args.cache)
    guard_outputs([("--out", args.out)], [("LABELS", labels)], cache=args.cache,
                  folders=["--out"])
    check_out(args.out, "review", flag="--out", inputs=(labels, args.cache))
    coco = read_labels(labels)
    images, opened = _image_source(args)
    try:
        page = write_review_page(coco, args.out, labels_name=labels.name, images=images,
                                 progress=not args.no_progress)
    finally:
        for thing in reversed(opened):
            thing.close()
    print(f"review page: {page.index} ({page.masks} masks on {page.images} images)")
    if page.without_picture:
        first, why = next(iter(page.without_picture.items()))
        say(f"{len(page.without_picture)} images drawn without their picture (e.g. {first}: "
            f"{why}); give --cache the labels were made with, or set COGNITE_* to read them "
            "from CDF")
    print(f"open it in a browser, save the decisions, then: cogseg export {labels} --to coco "
          f"--decisions {Path(labels.stem + '.decisions.json')} --out ACCEPTED_DIR")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``review`` to the subcommands ``sub``."""
    r = sub.add_parser(
        "review", help="a static page to accept or reject the masks of a labels file",
        description="Write DIR/index.html: every mask of a COCO labels file as a thumbnail "
                    "over its image, grouped by image, lowest score first, with its category, "
                    "score, area and source (API or local model). Open it from disk (no "
                    "server), accept or reject masks by click or key, and save the decisions; "
                    "`cogseg export LABELS --decisions FILE` then keeps the accepted masks. "
                    "Images come from the mask cache, else from CDF (COGNITE_* variables). "
                    "DIR appears only when complete, with a manifest (cogseg-output.json); an "
                    "earlier review page there is replaced whole, and a folder holding anything "
                    "else is refused (exit 2). Exit 130/143: stopped by SIGINT/SIGTERM.")
    r.add_argument("labels", metavar="LABELS", help="the COCO labels file (e.g. from cogseg "
                                                     "label)")
    r.add_argument("--out", required=True, metavar="DIR",
                   help="folder for index.html and its thumbnails: new, empty, or an earlier "
                        "review page (replaced)")
    r.add_argument("--cache", default=None,
                   help="the mask cache the labels were made with (default: the user cache)")
    r.add_argument("--offline", action="store_true",
                   help="never read images from CDF (the cache only)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run)
