"""``cogseg export LABELS.json --to labelstudio --ls-url URL``: the labels into a Label Studio
project in one command (see :mod:`cogseg_ml.exports.labelstudio_server`).

``--out`` is refused with ``--ls-url``: the folder export is all or nothing, with image paths
for a server set up to serve that folder, while a push uploads the images into Label Studio and
goes on from where a stopped run left off; one command doing both would give a folder whose
``tasks.json`` does not match the project. Run the command twice for both.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cogseg_ml.cli.common import (
    EXIT_AUTH,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    input_file,
    say,
    signals_stop_the_run,
)

#: Options of ``export`` that write files (or shape them) and so do not go with ``--ls-url``.
FOLDER_ONLY = (("--out", "out"), ("--image-prefix", "image_prefix"))


def check_server_options(args: argparse.Namespace) -> None:
    """Refuse ``--ls-token``/``--ls-project`` without ``--ls-url`` (a folder export)."""
    from cogseg_ml.errors import ValidationError

    for flag, name in (("--ls-token", "ls_token"), ("--ls-project", "ls_project")):
        if getattr(args, name) is not None:
            raise ValidationError(f"{flag} goes with --ls-url URL (a push to a Label Studio "
                                  "server), not with --out")


def push(args: argparse.Namespace, format_options: Sequence[tuple[str, str, str]]) -> int:
    """Run the push; ``format_options`` are export's (flag, format, option) rows."""
    with signals_stop_the_run() as received:
        try:
            return _push(args, format_options)
        except KeyboardInterrupt:
            name = received[-1] if received else "SIGINT"
            say(f"stopped by {name}: the tasks imported so far stay in Label Studio; run the "
                "same command again to go on (nothing is imported twice)")
            return EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT


def _push(args: argparse.Namespace, format_options: Sequence[tuple[str, str, str]]) -> int:
    from cogseg_ml.errors import ValidationError
    from cogseg_ml.exports.labelstudio_client import (
        LabelStudioAuthError,
        LabelStudioError,
        LabelStudioProjectError,
        LabelStudioUnreachable,
    )
    from cogseg_ml.exports.labelstudio_server import push_labelstudio
    from cogseg_ml.store.image_fetcher import existing_cache

    if args.to != "labelstudio":
        raise ValidationError(f"--ls-url goes with --to labelstudio, not --to {args.to}")
    for flag, name in FOLDER_ONLY:
        if getattr(args, name) is not None:
            raise ValidationError(f"{flag} is for the folder export; with --ls-url the images "
                                  "are uploaded into Label Studio (run the command twice for "
                                  "a folder too)")
    for flag, fmt, name in format_options:
        if fmt != "labelstudio" and getattr(args, name, None) is not None:
            raise ValidationError(f"{flag} goes with --to {fmt}, not --to labelstudio")
    labels = input_file(args.labels, "LABELS")
    decisions = input_file(args.decisions, "--decisions") if args.decisions else None
    if args.undecided != "drop" and decisions is None:
        raise ValidationError("--undecided goes with --decisions FILE (a review decisions file)")
    cache = existing_cache(args.cache)
    try:
        report = push_labelstudio(labels, args.ls_url, token=args.ls_token,
                                  project=args.ls_project, model_version=args.model_version,
                                  decisions=decisions, undecided=args.undecided, cache=cache)
    except LabelStudioError as exc:
        say(f"Label Studio: {exc}")
        if isinstance(exc, LabelStudioUnreachable):
            return EXIT_UNAVAILABLE
        if isinstance(exc, LabelStudioAuthError):
            return EXIT_AUTH
        return EXIT_USAGE if isinstance(exc, LabelStudioProjectError) else EXIT_PARTIAL
    print(report.summary(), file=sys.stderr)
    print(f"open {report.project_url}", file=sys.stderr)
    return EXIT_OK
