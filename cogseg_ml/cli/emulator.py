"""``cogseg emulator``: serve the local CDF emulator on loopback.

Once it listens it prints one JSON line (``base_url``, ``project``, ...), or with
``--print-env`` the ``export COGNITE_...=...`` lines a shell evaluates, after which it closes its
standard output, so ``eval "$(cogseg emulator --print-env &)"`` returns as soon as it serves.
``--write-boxes FILE`` writes a COCO file of boxes around the synthetic images' objects first.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import threading
from typing import Any

from cogseg_ml.cli.common import (
    EXIT_OK,
    MODEL_HELP,
    device,
    guard_outputs,
    input_file,
    input_folder,
    local_model,
    output_file,
    port,
)
from cogseg_ml.errors import ValidationError


def _faults(path: str) -> list[Any]:
    """The fault rules of a ``--faults`` file, read strictly and each checked (the message
    names the rule, its field and what the field allows)."""
    from cogseg_ml.emulator.faults import faults_from_json

    source = f"--faults {path}"
    data = input_file(path, "--faults").read_bytes()
    return faults_from_json(data, source)


def _engine(args: argparse.Namespace) -> Any:
    """The emulator's segmentation engine (``None``: the default region growing)."""
    if args.model and args.engine != "sam2":
        raise ValidationError(f"--model goes with --engine sam2 (got --engine {args.engine})")
    if args.checkpoint and args.engine != "sam":
        raise ValidationError("--checkpoint (a SAM 1 .pth file) goes with --engine sam; for "
                              "--engine sam2 give --model DIR")
    if args.engine == "region-growing":
        return None
    from cogseg_ml.emulator.segmentation_engines import SamEngine

    if args.engine == "sam2":
        return SamEngine(local_model(args.model, args.device, "--engine sam2"))
    from cogseg_ml.backends.local_sam import LocalSamBackend

    if not args.checkpoint:
        raise ValidationError("--engine sam needs --checkpoint PATH (a SAM .pth file)")
    input_file(args.checkpoint, "--checkpoint")
    return SamEngine(LocalSamBackend(args.checkpoint, model_type=args.model_type,
                                     device=args.device))


def emulator_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~cogseg_ml.emulator.server.Emulator` ``cogseg emulator`` serves (not
    started); every argument checked (exit 2 material: a ValidationError)."""
    from cogseg_ml.emulator.faults import check_seed
    from cogseg_ml.emulator.server import Emulator, check_host
    from cogseg_ml.emulator.synthetic_images import make_dataset

    host = check_host(args.host, "--host")
    seed = check_seed(args.seed, "--seed")
    folder = input_folder(args.images, "--images") if args.images else None
    faults = _faults(args.faults) if args.faults else []
    if args.synthetic < 0:
        raise ValidationError(f"--synthetic takes a count >= 0, got {args.synthetic}")
    if args.concurrency < 1:
        raise ValidationError(f"--concurrency is the jobs processed at once: >= 1, got "
                              f"{args.concurrency} (with 0 no job would ever finish)")
    if not args.processing_time >= 0:
        raise ValidationError(f"--processing-time takes seconds >= 0, got "
                              f"{args.processing_time:g}")
    if args.rate_limit is not None and not args.rate_limit > 0:
        raise ValidationError(f"--rate-limit takes requests/s > 0 (leave it out for no "
                              f"limit), got {args.rate_limit:g}")
    if args.write_boxes is not None:
        _check_boxes_file(args)
    engine = _engine(args)
    images = make_dataset(args.synthetic, seed=seed) if args.synthetic else None
    if folder is not None:
        taken = {im.name for im in images or ()}
        clash = sorted(p.name for p in folder.iterdir() if p.name in taken)
        if clash:
            raise ValidationError(
                f"--images {folder}: {', '.join(clash[:3])} has the name (and external id) of "
                f"a synthetic image from --synthetic {args.synthetic}; rename the file or "
                "serve fewer synthetic images")
    emu = Emulator(images=images, project=args.project, processing_time_s=args.processing_time,
                   concurrency=args.concurrency, rate_limit_rps=args.rate_limit, faults=faults,
                   seed=seed, host=host, port=args.port, engine=engine,
                   retired=args.retired)
    if folder is not None:
        emu.add_folder(folder)
    return emu


#: Lifetime of the token ``--print-env`` hands out: a working day and then some, since the
#: emulator's credentials are throwaway and a shell keeps its variables.
ENV_TOKEN_TTL_S = 7 * 24 * 3600.0


def _check_boxes_file(args: argparse.Namespace) -> None:
    """``--write-boxes FILE``: a new file in a writable folder, none of the run's inputs, and
    images with known objects to box (exit 2 material otherwise; checked before serving)."""
    flag = "--write-boxes"
    if not args.synthetic:
        raise ValidationError(f"{flag} {args.write_boxes}: only the synthetic images have "
                              "known objects to box; add --synthetic N")
    if os.path.lexists(args.write_boxes) and not os.path.isdir(args.write_boxes):
        raise ValidationError(f"{flag} {args.write_boxes} already exists: cogseg never writes "
                              "over a file; remove it or choose another name")
    path = output_file(args.write_boxes, flag)
    guard_outputs([(flag, path)], [("--images", args.images), ("--faults", args.faults),
                                   ("--model", args.model), ("--checkpoint", args.checkpoint)])


def _write_boxes(emu: Any, path: str) -> None:
    try:
        emu.write_boxes(path)
    except FileExistsError:  # created since it was checked: still never overwritten
        raise ValidationError(f"--write-boxes {path} already exists: cogseg never writes over "
                              "a file; remove it or choose another name") from None


def _print_env(emu: Any) -> None:
    """The ``export`` lines, then standard output closed (a ``$(...)`` capture ends there)."""
    from cogseg_ml.emulator.server import shell_env

    variables = emu.env(ENV_TOKEN_TTL_S)
    variables["COGSEG_EMULATOR_PID"] = str(os.getpid())
    print(shell_env(variables), end="", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
    finally:
        os.close(devnull)


def _listen_error(exc: OSError, host: str, port: int) -> ValidationError:
    """What to fix when the emulator cannot listen on ``host``:``port``: the flag at fault."""
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc  # the system's words
    reason = cause.strerror or str(cause)
    if isinstance(exc, socket.gaierror):
        return ValidationError(f"--host {host}: no such host ({reason}); give an address of "
                               "this machine, e.g. 127.0.0.1 (the default) or ::1")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ValidationError(f"--host {host}: not an address of this machine ({reason}); "
                               "give one of its addresses, e.g. 127.0.0.1 (the default) or ::1")
    if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
        return ValidationError(f"--host {host}: this machine cannot listen on that kind of "
                               f"address ({reason}; IPv6 switched off?); try 127.0.0.1")
    url_host = f"[{host}]" if ":" in host else host
    if exc.errno == errno.EADDRINUSE:
        return ValidationError(f"--port {port}: {url_host}:{port} is already in use; stop what "
                               "listens there or choose another port (--port 0: any free one)")
    if exc.errno == errno.EACCES:
        return ValidationError(f"--port {port}: listening on {url_host}:{port} is not "
                               f"permitted ({reason}); ports below 1024 need privileges, "
                               "choose a higher one (--port 0: any free one)")
    return ValidationError(f"--host {host} --port {port}: cannot listen on {url_host}:{port} "
                           f"({reason})")


def run(args: argparse.Namespace) -> int:
    emu = emulator_from_args(args)
    try:
        emu.start()
    except OSError as exc:
        raise _listen_error(exc, emu.host, args.port) from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.write_boxes is not None:
            _write_boxes(emu, args.write_boxes)
        if args.print_env:
            _print_env(emu)
        else:
            info = {"base_url": emu.base_url, "project": emu.project,
                    "token_url": emu.token_url, "client_id": emu.state.client_id,
                    "files": len(emu.state.files), "engine": emu.answers.engine.name,
                    "vision_retired": emu.retired}
            # The secret is printed only when asked for: it is what a local client needs.
            if args.print_secret:
                info["client_secret"] = emu.client_secret.reveal()
            print(json.dumps(info), flush=True)
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        emu.stop()
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``emulator`` to the subcommands ``sub``."""
    e = sub.add_parser("emulator", help="serve the local CDF emulator on loopback",
                       description="Serve the CDF emulator until interrupted. Prints one JSON "
                                   "line with base_url, project and token_url once ready, or "
                                   "with --print-env the shell's export lines: "
                                   'eval "$(cogseg emulator --synthetic 4 --print-env &)" '
                                   "serves in the background and sets COGNITE_PROJECT, "
                                   "COGNITE_BASE_URL and COGNITE_TOKEN in this shell "
                                   "(kill $COGSEG_EMULATOR_PID stops it).")
    e.add_argument("--port", type=port, default=8765, help="port (0: an ephemeral one)")
    e.add_argument("--host", default="127.0.0.1",
                   help="address to listen on: IPv4, IPv6 (e.g. ::1) or a host name "
                        "(default 127.0.0.1, loopback)")
    e.add_argument("--project", default="emulated-project")
    e.add_argument("--images", help="folder of .png/.jpg/.jpeg files to serve")
    e.add_argument("--synthetic", type=int, default=0,
                   help="also serve N synthetic images with ground truth")
    e.add_argument("--processing-time", type=float, default=0.05,
                   help="seconds each job takes (default 0.05)")
    e.add_argument("--concurrency", type=int, default=8, help="jobs processed at once")
    e.add_argument("--rate-limit", type=float, default=None, help="requests/s before 429")
    e.add_argument("--faults", metavar="FILE",
                   help='JSON file with a list of fault rules, e.g. [{"kind": "status", '
                        '"status": 503, "probability": 0.1}]; every rule is checked before '
                        "serving (kinds and fields: the cogseg_ml.emulator.faults module)")
    e.add_argument("--seed", type=int, default=0,
                   help=f"seed of the synthetic images and of the faults drawn, 0..{2**32 - 1} "
                        "(default 0)")
    e.add_argument("--engine", choices=["region-growing", "sam", "sam2"],
                   default="region-growing",
                   help="segmentation engine (sam: Meta's SAM 1 .pth file from --checkpoint; "
                        "sam2: a SAM 2.1 folder in transformers' format from --model)")
    e.add_argument("--checkpoint", help="with --engine sam: the SAM checkpoint file")
    e.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    e.add_argument("--model", metavar="DIR", help=f"with --engine sam2: {MODEL_HELP}")
    e.add_argument("--device", type=device, default="auto",
                   help="where a SAM engine runs: auto (CUDA when available), cpu, cuda, cuda:N")
    e.add_argument("--retired", action="store_true",
                   help="serve a retired Vision API: the segment routes answer 404 (files, "
                        "tokens and annotations keep working)")
    ready = e.add_mutually_exclusive_group()
    ready.add_argument("--print-secret", action="store_true",
                       help="include the client secret in the ready line")
    ready.add_argument("--print-env", action="store_true",
                       help="once listening, print 'export NAME=VALUE' lines instead of the "
                            "JSON line (COGNITE_PROJECT, COGNITE_BASE_URL, COGNITE_TOKEN: a "
                            "static token valid for 7 days; COGSEG_EMULATOR_PID), then close "
                            "standard output")
    e.add_argument("--write-boxes", metavar="FILE",
                   help="once listening, write a COCO file of boxes around the objects of the "
                        "--synthetic images (for cogseg label --coco-boxes FILE); FILE must "
                        "not exist")
    e.set_defaults(func=run)
