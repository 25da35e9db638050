"""``cogseg export``: a labels file to a COCO, YOLO or Label Studio folder (all or nothing)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cogseg_ml.cli.common import EXIT_OK, guard_outputs, input_file, signals_stop_the_run, stopped
from cogseg_ml.cli.export_labelstudio import check_server_options, push


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--val-fraction takes a number, got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"--val-fraction {text}: give at least 0 and below 1 "
                                         "(e.g. 0.1)")
    return v


def run(args: argparse.Namespace) -> int:
    if args.ls_url is not None:  # a push to a Label Studio server
        return push(args, _FORMAT_OPTIONS)
    with signals_stop_the_run() as received:
        try:
            return _export(args)
        except KeyboardInterrupt:
            return stopped(received, args.out)


def _export(args: argparse.Namespace) -> int:
    from cogseg_ml.errors import ValidationError
    from cogseg_ml.exports import export_labels
    from cogseg_ml.exports.folder_writer import check_out
    from cogseg_ml.store.image_fetcher import existing_cache

    check_server_options(args)
    if args.out is None:
        raise ValidationError("give --out DIR (the folder to write), or --to labelstudio "
                              "--ls-url URL (a Label Studio server)")
    # Every path is checked before any work: an export never fails at its end on a typo.
    labels = input_file(args.labels, "LABELS")
    decisions = input_file(args.decisions, "--decisions") if args.decisions else None
    cache = existing_cache(args.cache)
    guard_outputs([("--out", args.out)], [("LABELS", labels), ("--decisions", decisions)],
                  cache=cache, folders=["--out"])
    check_out(args.out, "export", flag="--out", inputs=(labels, decisions, cache))
    if args.undecided != "drop" and decisions is None:
        raise ValidationError("--undecided goes with --decisions FILE (a review decisions file)")
    options: dict[str, Any] = {}
    for flag, fmt, name in _FORMAT_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue
        if fmt != args.to:
            raise ValidationError(f"{flag} goes with --to {fmt}, not --to {args.to}")
        options[name] = value
    report = export_labels(labels, args.to, args.out, decisions=decisions,
                           undecided=args.undecided, cache=cache, **options)
    print(report.summary(), file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


#: (flag, format, option) of the options one format takes
_FORMAT_OPTIONS = (("--segmentation", "coco", "segmentation"),
                   ("--val-fraction", "yolo", "val_fraction"),
                   ("--yolo-parts", "yolo", "parts"),
                   ("--image-prefix", "labelstudio", "image_prefix"),
                   ("--model-version", "labelstudio", "model_version"))


def register(sub: Any) -> None:
    """Add ``export`` to the subcommands ``sub``."""
    exp = sub.add_parser(
        "export", help="export a labels file to COCO, YOLO or Label Studio",
        description="Read the COCO file `cogseg label` wrote, keep the accepted masks when "
                    "given review decisions, and write one folder: --to coco (annotations.json "
                    "and images/), --to yolo (Ultralytics segmentation: data.yaml, "
                    "images/train, labels/train), --to labelstudio (tasks.json with the masks "
                    "as predictions, label_config.xml, images/). Images come from the mask "
                    "cache, else from CDF (COGNITE_* variables). Masks keep their holes and "
                    "every part. The folder appears only when complete, with a manifest "
                    "(cogseg-output.json); an earlier export there is replaced whole, and a "
                    "folder holding anything else is refused. Exit 0: written; 2: bad input "
                    "(not a cogseg labels file, decisions for another labels file, a missing "
                    "image, an --out that is not ours); 3: CDF unreachable; 4: credentials "
                    "refused; 130/143: stopped by SIGINT/SIGTERM (nothing half-written). "
                    "--to labelstudio --ls-url URL instead of --out: the project, its images, "
                    "tasks and predictions go straight into that Label Studio server (token in "
                    "LABEL_STUDIO_API_KEY; run again, nothing is added twice; exit 3: server "
                    "unreachable, 4: token refused, 1: a request refused, with its reason).")
    exp.add_argument("labels", metavar="LABELS.json", help="the COCO file `cogseg label` wrote")
    exp.add_argument("--to", required=True, choices=["coco", "yolo", "labelstudio"],
                     help="the format to write")
    exp.add_argument("--out", metavar="DIR",
                     help="the folder to write: new, empty, or an earlier export (replaced); "
                          "needed unless --ls-url")
    exp.add_argument("--decisions", metavar="FILE",
                     help="a review decisions file (from `cogseg review`): write only the "
                          "accepted masks")
    exp.add_argument("--undecided", choices=["drop", "keep"], default="drop",
                     help="with --decisions: drop (default) or keep masks without a decision")
    exp.add_argument("--cache", default=None,
                     help="the mask cache the labelling used (default: the user cache); it "
                          "must exist")
    exp.add_argument("--segmentation", choices=["rle", "polygon"], default=None,
                     help="--to coco: compressed RLE (default) or polygons that keep holes")
    exp.add_argument("--val-fraction", type=_fraction, default=None, metavar="F",
                     help="--to yolo: share of images for the val split (default 0: val is "
                          "the training images)")
    exp.add_argument("--yolo-parts", dest="parts", choices=["separate", "joined"], default=None,
                     help="--to yolo: an object in several pieces as one line per piece "
                          "(separate, default: exact in Ultralytics) or one line with cuts "
                          "between the pieces (joined: Ultralytics paints each cut as a line)")
    exp.add_argument("--image-prefix", default=None, metavar="URL_OR_PATH",
                     help="--to labelstudio: put before each image file name in data.image "
                          "(default images/; e.g. /data/local-files/?d=site-a/images/)")
    exp.add_argument("--model-version", default=None,
                     help="--to labelstudio: the predictions' model_version (default: the "
                          "backends that made the masks)")
    exp.add_argument("--ls-url", default=None, metavar="URL",
                     help="--to labelstudio: instead of --out, put the labels into the Label "
                          "Studio server at URL (e.g. http://localhost:8080): project, "
                          "uploaded images, tasks with the masks as predictions; run again, "
                          "nothing is added twice")
    exp.add_argument("--ls-token", default=None, metavar="TOKEN",
                     help="with --ls-url: the Label Studio access token (default: "
                          "$LABEL_STUDIO_API_KEY, better: a command line is seen by other "
                          "users of the machine)")
    exp.add_argument("--ls-project", default=None, metavar="TITLE_OR_ID",
                     help="with --ls-url: a project id, or a title (the project is made when "
                          "none has it; default: the labels file's name without .json)")
    exp.set_defaults(func=run)
