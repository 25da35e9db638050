"""The ``cogseg`` command line.

Subcommands: ``label`` (prompts or class names in, a COCO file out), ``export`` (a labels
file to COCO, YOLO or Label Studio, optionally filtered by review decisions), ``review`` (a
static review page for a labels file), ``emulator`` (serve the local CDF emulator), ``demo``
(README's main job), ``cache`` (inspect and maintain the mask cache), ``serve`` (CDF's
segment API on a local model, for a team).

Exit codes: 0 all done; 1 the work ran but some items failed (summarized); 2 bad usage or
input, a path that cannot be used, a cache that cannot be written (full disk, read-only), a
local model folder that cannot be used: one line saying what to fix; 3 CDF unreachable, or its
Vision API retired (``--backend api``); 4 credentials refused; 130/143 stopped by
SIGINT/SIGTERM (finished work is kept: run the same command again to resume; export,
review and demo leave nothing half-written).

Where masks come from (``cogseg label --backend``): ``api`` (default) the CDF Vision API;
``local`` a local SAM 2.1 (or SAM) model from ``--model DIR``, images still read from CDF files;
``fallback`` the API, and the local model when the API is unavailable (for good once it is
retired).
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from cogseg_ml.cli import cache, demo, emulator, export, label, review, serve
from cogseg_ml.cli.common import (
    AUTH_HINT,
    EXIT_AUTH,
    EXIT_PARTIAL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PATH_ERRNOS,
    UNREACHABLE_HINT,
    hinted,
    retired_line,
    say,
)
from cogseg_ml.cli.emulator import emulator_from_args
from cogseg_ml.errors import ValidationError

__all__ = ["build_parser", "emulator_from_args", "main", "plain"]

# One module per subcommand, each with ``register(subparsers)``; the order is --help's order.
COMMANDS = (emulator, label, cache, export, review, demo, serve)


_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]*\.)?([^`]+)`")


def plain(text: str) -> str:
    """Docstring text as a terminal shows it: reStructuredText's ``literal`` and
    :role:`target` markup reduced to the words."""
    return _ROLE.sub(r"\1", text).replace("``", "")


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one ``cogseg: ...`` line (exit 2), like every other refusal, instead
    of argparse's usage block; ``--help`` still prints the whole usage.

    ``intermixed=True`` (a subcommand passes it to ``add_parser``): options may come before,
    between or after the positional arguments, e.g. ``cogseg cache merge --path C A B`` as
    well as ``cogseg cache merge A B --path C`` (argparse alone takes every positional at its
    first run of them, so a list after an option would be refused)."""

    def __init__(self, *args: Any, intermixed: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._intermixed = intermixed
        self._in_pass = False

    def parse_known_args(self, args: Iterable[str] | None = None,
                         namespace: Any = None) -> tuple[Any, list[str]]:
        if not self._intermixed or self._in_pass:
            return super().parse_known_args(args, namespace)
        self._in_pass = True  # the intermixed parse calls this method for each of its passes
        try:
            return self.parse_known_intermixed_args(None if args is None else list(args),
                                                    namespace)
        finally:
            self._in_pass = False

    def error(self, message: str) -> NoReturn:
        say(f"{self.prog}: {message} (see {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = _OneLineParser(prog="cogseg", description=plain(__doc__ or ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cogseg``; returns the exit code (see the module docstring)."""
    from cogseg_ml.errors import (
        ApiRetiredError,
        ApiUnavailableError,
        AuthenticationError,
        CacheError,
        CogsegError,
    )

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ValidationError, CacheError) as exc:
        say(str(exc))
        return EXIT_USAGE
    except AuthenticationError as exc:  # an ApiError: before the generic handlers
        say("credentials refused: " + hinted(str(exc), AUTH_HINT))
        return EXIT_AUTH
    except ApiRetiredError as exc:  # an ApiUnavailableError: before it
        say(retired_line(exc))
        return EXIT_UNAVAILABLE
    except ApiUnavailableError as exc:
        say("CDF unreachable: " + hinted(str(exc), UNREACHABLE_HINT))
        return EXIT_UNAVAILABLE
    except CogsegError as exc:
        say(str(exc))
        return EXIT_PARTIAL
    except OSError as exc:  # the environment, not a bug: a path, a full disk, a port
        if exc.errno not in PATH_ERRNOS:
            raise
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        say(f"disk is full: {exc}" if full else str(exc))
        return EXIT_USAGE

