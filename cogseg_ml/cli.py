"""The ``cogseg`` command line.

Subcommands: ``label`` (prompts in, a COCO file out), ``emulator`` (serve the local CDF
emulator), ``demo`` (README's main job), ``cache`` (inspect and maintain the mask cache).

Exit codes: 0 all done; 1 the work ran but some items failed (summarized); 2 bad usage or
input, a path that cannot be used, a cache that cannot be written (full disk, read-only), a
local model folder that cannot be used: one line saying what to fix; 3 CDF unreachable, or its
Vision API retired (``--backend api``); 4 credentials refused; 130/143 stopped by
SIGINT/SIGTERM (finished work is kept: run the same command again to resume).

Where masks come from (``cogseg label --backend``): ``api`` (default) the CDF Vision API;
``local`` a local SAM 2.1 (or SAM) model from ``--model DIR``, images still read from CDF files;
``fallback`` the API, and the local model when the API is unavailable (for good once it is
retired).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from cogseg_ml.errors import ValidationError

if TYPE_CHECKING:
    from cogseg_ml.labeler import LabelingReport

__all__ = ["main"]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_AUTH = 0, 1, 2, 3, 4
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143
UNREACHABLE_HINT = "check COGNITE_BASE_URL (or COGNITE_CLUSTER), the network and any proxy"
AUTH_HINT = ("check COGNITE_TOKEN, or COGNITE_CLIENT_ID, COGNITE_CLIENT_SECRET, "
             "COGNITE_TOKEN_URL and COGNITE_TOKEN_SCOPES")
RESUME_HINT = "run the same command again to resume; finished items are cached"
MODEL_HELP = ("a SAM 2.1 (or SAM) checkpoint folder in transformers' format, e.g. from "
              "`hf download facebook/sam2.1-hiera-tiny --local-dir DIR`")
RETIRED_HINT = (f"label with a local model instead: --backend local --model DIR ({MODEL_HELP}), "
                "or --backend fallback --model DIR; images are still read from CDF files")
_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC),
                errno.EADDRINUSE, errno.EADDRNOTAVAIL}


def _say(text: str) -> None:
    """One line on stderr, prefixed ``cogseg:``."""
    print("cogseg: " + " ".join(str(text).splitlines()), file=sys.stderr, flush=True)


def _hinted(message: str, hint: str) -> str:
    """``message`` and the hint in the command line's terms (its environment variables),
    unless the message already names them."""
    return message if "COGNITE_" in message else f"{message}; {hint}"


# --- paths: checked before any work starts -----------------------------------------------------

def _input_file(path: str, flag: str) -> Path:
    """A file to read: it exists, is a file, and can be opened."""
    p = Path(path)
    if not p.exists():
        raise ValidationError(f"{flag} {path}: no such file; check the path")
    if p.is_dir():
        raise ValidationError(f"{flag} {path} is a folder; give the file inside it")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise ValidationError(f"{flag} {path} cannot be read ({exc.strerror or exc})") from None
    return p


def _input_folder(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ValidationError(f"{flag} {path}: no such folder; check the path")
    if not p.is_dir():
        raise ValidationError(f"{flag} {path} is a file, not a folder")
    return p


def _output_file(path: str, flag: str) -> Path:
    """A file to write later: its folder exists and takes a new file now (tried, then removed),
    so a run never does all its work to fail at the end."""
    p = Path(path)
    if p.is_dir():
        raise ValidationError(f"{flag} {path} is a folder; give a file name, e.g. "
                              f"{p / 'labels.json'}")
    folder = p.parent
    if not folder.exists():
        raise ValidationError(f"{flag} {path}: the folder {folder} does not exist; create it "
                              "or choose another path")
    if not folder.is_dir():
        raise ValidationError(f"{flag} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValidationError(f"{flag} {path}: cannot write in {folder} "
                              f"({exc.strerror or exc}); choose a writable location") from None
    return p


def _write_atomically(path: Path, text: str) -> None:
    """Write a small file under a temporary name and move it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".incomplete", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _file_ids(text: str) -> list[int]:
    """``--from-annotations``: comma or space separated internal ids."""
    ids = []
    for v in text.replace(",", " ").split():
        if not v.isdigit() or int(v) < 1:
            raise ValidationError(
                f"--from-annotations takes numeric CDF file ids (internal ids, comma "
                f"separated), got {v!r}; for files named by external id use --prompts")
        ids.append(int(v))
    if not ids:
        raise ValidationError("--from-annotations needs one or more numeric CDF file ids")
    return ids


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port takes a number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port {port}: a port is 0..65535 (0: any free one)")
    return port


def _device(text: str) -> str:
    """``--device``: ``auto`` or a torch device (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    if text == "auto":
        return text
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"--device takes auto, cpu, cuda or cuda:N, got "
                                         f"{text!r}") from None
    return text


def _local_model(folder: str | None, device: str, need: str) -> Any:
    """The local model of ``--model DIR`` (loaded, so a bad folder stops before any request).

    Raises:
        ValidationError: no ``--model`` (``need`` says for what), no usable device, or the
            ``sam2`` extra is missing; :class:`~cogseg_ml.errors.SamCheckpointError` (also a
            ValidationError) for a folder that is not a SAM checkpoint.
    """
    if not folder:
        raise ValidationError(f"{need} needs --model DIR: {MODEL_HELP}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValidationError(f"--device {device}: no CUDA device is available here; use "
                                  "--device cpu (or auto)")
    try:
        from cogseg_ml.backends.local_sam import LocalSamBackend

        return LocalSamBackend.from_pretrained(folder, device=device)
    except ImportError as exc:  # the optional extra is not installed
        raise ValidationError(f"--model {folder}: {exc}") from None


def _retired_line(error: Any) -> str:
    """One line for a retired Vision API, in the command line's terms."""
    from cogseg_ml.errors import VISION_RETIREMENT_DATE

    reason = getattr(error, "reason", None) or "its segment endpoint answered 404"
    host = getattr(error, "host", None)
    at = f" at {host}" if host else ""
    return (f"CDF's Vision API{at} appears retired ({reason}; Cognite's SDKs give "
            f"{VISION_RETIREMENT_DATE} as its retirement date): {RETIRED_HINT}")


# --- emulator ----------------------------------------------------------------------------------

def _faults(path: str) -> list[Any]:
    """The fault rules of a ``--faults`` file, each checked (the message names the rule)."""
    from cogseg_ml.emulator.faults import Fault

    text = _input_file(path, "--faults").read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"--faults {path} is not valid JSON: {exc.msg} at line "
                              f"{exc.lineno} column {exc.colno}") from None
    if not isinstance(data, list):
        raise ValidationError(f"--faults {path} must hold a JSON list of fault rules, e.g. "
                              '[{"kind": "status", "status": 503, "probability": 0.1}]')
    faults = []
    for i, rule in enumerate(data):
        try:
            faults.append(Fault.from_dict(rule))
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"--faults {path}: rule {i}: {exc}") from None
    return faults


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
        return SamEngine(_local_model(args.model, args.device, "--engine sam2"))
    from cogseg_ml.backends.local_sam import LocalSamBackend

    if not args.checkpoint:
        raise ValidationError("--engine sam needs --checkpoint PATH (a SAM .pth file)")
    _input_file(args.checkpoint, "--checkpoint")
    return SamEngine(LocalSamBackend(args.checkpoint, model_type=args.model_type,
                                     device=args.device))


def emulator_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~cogseg_ml.emulator.server.Emulator` ``cogseg emulator`` serves (not
    started); every argument checked (exit 2 material: a ValidationError)."""
    from cogseg_ml.emulator.server import Emulator
    from cogseg_ml.emulator.synthetic_images import make_dataset

    folder = _input_folder(args.images, "--images") if args.images else None
    faults = _faults(args.faults) if args.faults else []
    if args.synthetic < 0:
        raise ValidationError(f"--synthetic takes a count >= 0, got {args.synthetic}")
    engine = _engine(args)
    images = make_dataset(args.synthetic, seed=args.seed) if args.synthetic else None
    emu = Emulator(images=images, project=args.project, processing_time_s=args.processing_time,
                   concurrency=args.concurrency, rate_limit_rps=args.rate_limit, faults=faults,
                   seed=args.seed, host=args.host, port=args.port, engine=engine,
                   retired=args.retired)
    if folder is not None:
        emu.add_folder(folder)
    return emu


def _emulator(args: argparse.Namespace) -> int:
    emu = emulator_from_args(args)
    try:
        emu.start()
    except OSError as exc:
        what = ("is already in use; stop what listens there or choose another port (--port 0: "
                "any free one)" if exc.errno == errno.EADDRINUSE else f"cannot be used: {exc}")
        raise ValidationError(f"--port {args.port}: {args.host}:{args.port} {what}") from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        info = {"base_url": emu.base_url, "project": emu.project, "token_url": emu.token_url,
                "client_id": emu.state.client_id, "files": len(emu.state.files),
                "engine": emu.jobs.engine.name, "vision_retired": emu.retired}
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


def _demo(args: argparse.Namespace) -> int:
    from cogseg_ml.demo import run_demo

    return run_demo(Path(args.out), n_images=args.images, quiet=args.quiet)


# --- cache -------------------------------------------------------------------------------------

def _cache(args: argparse.Namespace) -> int:
    from cogseg_ml.cache.image_store import ImageStore
    from cogseg_ml.cache.mask_cache import MaskCache, cache_file
    from cogseg_ml.coco_io import export_cache

    if args.action == "merge":
        if not args.sources:
            raise ValidationError("cogseg cache merge needs one or more source caches")
        target = cache_file(args.path)
        for src in args.sources:  # every source exists before the target is touched
            found = cache_file(src)
            if not found.is_file():
                where = f" ({found})" if found != Path(src) else ""
                raise ValidationError(f"cache merge: there is no mask cache at {src}{where}; "
                                      "check the path (nothing was merged or created)")
            if found.resolve() == target.resolve() or (
                    target.exists() and os.path.samefile(found, target)):
                raise ValidationError(f"cache merge: {src} is the target cache itself; give "
                                      "other caches (e.g. the shards') as sources")
        cache = MaskCache(args.path)
        entries = images = 0
        for src in args.sources:
            got = cache.merge(src)
            entries, images = entries + got.entries, images + got.images
        print(f"merged {entries} new entries and {images} images into {cache.path}")
        return EXIT_OK
    if args.images and args.action != "clear":
        raise ValidationError("--images goes with cogseg cache clear")
    cache = MaskCache(args.path, create=False)  # inspecting never creates a cache
    if args.action == "stats":
        s = cache.stats()
        print(json.dumps({"path": s.path, "entries": s.entries, "bytes": s.bytes,
                          "file_bytes": s.file_bytes, "by_backend": s.by_backend,
                          "images": s.images, "image_bytes": s.image_bytes}, indent=2))
    elif args.action == "ls":
        for i, (file_key, prompt, key, res) in enumerate(cache.iter_entries()):
            if args.limit and i >= args.limit:
                break
            best = res.best.score if res.best else None
            print(f"{key[:12]}  {file_key}  {prompt}  {res.backend}  {res.height}x{res.width}"
                  f"  segments={len(res.segments)} best={best}")
    elif args.action == "export":
        if not args.out:
            raise ValidationError("cogseg cache export needs --out FILE")
        out = _output_file(args.out, "--out")
        n = export_cache(cache, out)
        print(f"wrote {n} annotations to {out}")
    elif args.action == "clear":
        removed = cache.clear()
        if args.images:
            gone = ImageStore(cache).clear()
            print(f"removed {removed} entries and {gone.images} images ({gone.bytes} bytes)")
        else:
            s = cache.stats()
            print(f"removed {removed} entries; kept {s.images} images ({s.image_bytes} bytes; "
                  "add --images to remove them too)")
    elif args.action == "vacuum":
        cache.vacuum()
        print(f"vacuumed {cache.path}")
    return EXIT_OK


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


# --- label ---------------------------------------------------------------------------------------

@contextmanager
def _signals_stop_the_run() -> Iterator[list[str]]:
    """SIGTERM (and SIGINT) raise ``KeyboardInterrupt("SIGTERM")`` in the main thread, so a
    run stops the same way for both; the names received are collected. A second signal while
    stopping ends the process at once. Outside the main thread nothing is installed."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        if len(received) > 1:
            _say(f"{name} again: stopping at once")
            os._exit(128 + signum)
        raise KeyboardInterrupt(name)

    previous: dict[int, Any] = {}
    for sig, default in ((signal.SIGINT, signal.default_int_handler),
                         (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) is default:  # leave an ignored or custom handler alone
            previous[sig] = signal.signal(sig, stop)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stopped(summary: str | None, name: str) -> int:
    if summary:
        print(summary, file=sys.stderr)
    _say(f"stopped by {name}: {RESUME_HINT}")
    return EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT


def _failure_kinds(report: LabelingReport) -> set[str]:
    return {reason.split(":", 1)[0] for reason in report.failure_reasons}


def _cdf_unusable(report: LabelingReport, retired: Any = None) -> int | None:
    """When nothing was labelled and every failure says CDF could not be reached (or refused
    the credentials, or its Vision API is retired: ``retired``, the error if known), the run
    as a whole failed: say so once (exit 3 or 4), write nothing."""
    if report.labelled or not report.failed or not report.failures:
        return None
    kinds = _failure_kinds(report)
    unreachable = {"ApiUnavailableError", "CdfUnreachableError", "TokenEndpointUnavailable"}
    reason = str(report.failures[0]["reason"]).split(": ", 1)[-1]
    if kinds == {"ApiRetiredError"}:
        _say(_retired_line(retired))
        return EXIT_UNAVAILABLE
    if kinds == {"AuthenticationError"}:
        _say("credentials refused: " + _hinted(reason, AUTH_HINT))
        return EXIT_AUTH
    if kinds <= unreachable:
        _say("CDF unreachable: " + _hinted(reason, UNREACHABLE_HINT))
        return EXIT_UNAVAILABLE
    return None


def _label_backend(args: argparse.Namespace, config: Any) -> tuple[Any, Any]:
    """``(backend, api)`` for ``--backend``: what the labeler runs, and the API backend in it
    (``None`` for ``local``). The local model is loaded here, before any request."""
    from cogseg_ml.backends.api_backend import ApiBackend
    from cogseg_ml.backends.fallback import FallbackBackend

    if args.backend == "api":
        if args.model:
            raise ValidationError("--model goes with --backend local or --backend fallback "
                                  "(--backend api segments through CDF's Vision API)")
        api = ApiBackend(config, concurrency=args.concurrency)
        return api, api
    local = _local_model(args.model, args.device, f"--backend {args.backend}")
    if args.backend == "local":
        return local, None
    api = ApiBackend(config, concurrency=args.concurrency)
    return FallbackBackend(api, local), api


def _label(args: argparse.Namespace) -> int:
    from cogseg_ml.api.client import SegmentationClient
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.errors import RunInterrupted
    from cogseg_ml.labeler import SegmentationLabeler
    from cogseg_ml.samples import (
        load_records,
        samples_from_annotations,
        samples_from_coco,
        samples_from_records,
    )

    # Every path is checked before any request: a run never fails at its end on a typo.
    prompts = _input_file(args.prompts, "--prompts") if args.prompts else None
    coco = _input_file(args.coco_boxes, "--coco-boxes") if args.coco_boxes else None
    ids = _file_ids(args.from_annotations) if prompts is None and coco is None else []
    out = _output_file(args.out, "--out")
    report_path = _output_file(args.report, "--report") if args.report else None
    config = CdfConfig.from_env()
    backend, api = _label_backend(args, config)
    retired = None
    t0 = time.perf_counter()
    labeler: SegmentationLabeler | None = None
    with _signals_stop_the_run() as received:
        try:
            if prompts is not None:
                samples = samples_from_records(load_records(prompts),
                                               on_bad_prompt=args.on_bad_prompt)
            elif coco is not None:
                samples = samples_from_coco(coco, file_key=args.coco_file_key,
                                            on_bad_prompt=args.on_bad_prompt)
            else:
                with SegmentationClient(config) as client:
                    samples = samples_from_annotations(client, ids,
                                                       status=args.annotation_status,
                                                       on_bad_prompt=args.on_bad_prompt)
            labeler = SegmentationLabeler(backend, config=config, cache=args.cache,
                                          min_score=args.min_score, min_area=args.min_area,
                                          keep=args.keep, concurrency=args.concurrency,
                                          shard=args.shard, progress=not args.no_progress)
            report = labeler.label(samples)
            retired = api.retired if api is not None and \
                "ApiRetiredError" in _failure_kinds(report) else None
            failed_run = _cdf_unusable(report, retired)
            if failed_run is not None:
                return failed_run  # --out is left as it was
            labeler.to_coco(out, segmentation=args.segmentation)  # atomic: all or nothing
            if args.write_back:
                wb = labeler.write_back(creating_app=args.creating_app)
                print(f"write-back: {wb.created} created, {wb.already_present} already "
                      f"present, {wb.skipped} skipped", file=sys.stderr)
        except RunInterrupted as exc:
            return _stopped(exc.summary, received[0] if received else exc.signal_name)
        except KeyboardInterrupt as exc:
            name = received[0] if received else (str(exc.args[0]) if exc.args else "SIGINT")
            summary = None
            if labeler is not None:
                labeler.report.seconds = time.perf_counter() - t0
                summary = labeler.report.summary()
            return _stopped(summary, name)
    if report_path is not None:
        _write_atomically(report_path, json.dumps(report.as_dict(), indent=2))
    print(report.summary(), file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    if retired is not None:  # some items failed on it, others were labelled (e.g. cached)
        _say(_retired_line(retired))
    return EXIT_OK if report.failed == 0 else EXIT_PARTIAL


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(prog="cogseg", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("emulator", help="serve the local CDF emulator on loopback",
                       description="Serve the CDF emulator until interrupted. Prints one JSON "
                                   "line with base_url, project and token_url once ready.")
    e.add_argument("--port", type=_port, default=8765, help="port (0: an ephemeral one)")
    e.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    e.add_argument("--project", default="emulated-project")
    e.add_argument("--images", help="folder of .png/.jpg/.jpeg files to serve")
    e.add_argument("--synthetic", type=int, default=0,
                   help="also serve N synthetic images with ground truth")
    e.add_argument("--processing-time", type=float, default=0.05,
                   help="seconds each job takes (default 0.05)")
    e.add_argument("--concurrency", type=int, default=8, help="jobs processed at once")
    e.add_argument("--rate-limit", type=float, default=None, help="requests/s before 429")
    e.add_argument("--faults", help="JSON file with a list of fault rules")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--engine", choices=["region-growing", "sam", "sam2"],
                   default="region-growing",
                   help="segmentation engine (sam: Meta's SAM 1 .pth file from --checkpoint; "
                        "sam2: a SAM 2.1 folder in transformers' format from --model)")
    e.add_argument("--checkpoint", help="with --engine sam: the SAM checkpoint file")
    e.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    e.add_argument("--model", metavar="DIR", help=f"with --engine sam2: {MODEL_HELP}")
    e.add_argument("--device", type=_device, default="auto",
                   help="where a SAM engine runs: auto (CUDA when available), cpu, cuda, cuda:N")
    e.add_argument("--retired", action="store_true",
                   help="serve a retired Vision API: the segment routes answer 404 (files, "
                        "tokens and annotations keep working)")
    e.add_argument("--print-secret", action="store_true",
                   help="include the client secret in the ready line")
    e.set_defaults(func=_emulator)

    lab = sub.add_parser(
        "label", help="label images from prompts into a COCO file",
        description="Segment every prompt through the CDF API, or a local model (--backend "
                    "local --model DIR; images are still read from CDF files), keep results in "
                    "the mask cache (a re-run resumes), and write a COCO instance-segmentation "
                    "file (written only when the run ends, atomically). Credentials come from "
                    "COGNITE_* variables. Exit 0: all labelled; 1: some prompts failed (see the "
                    "summary); 2: bad input, a path or model folder that cannot be used; 3: CDF "
                    "unreachable, or its Vision API retired (with --backend api); 4: "
                    "credentials refused; 130/143: stopped by SIGINT/SIGTERM (run the same "
                    "command again to resume).")
    src = lab.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="JSON list or JSONL of {file, points, box, category}")
    src.add_argument("--coco-boxes", help="COCO detection file: its boxes become prompts")
    src.add_argument("--from-annotations", metavar="FILE_IDS",
                     help="CDF file ids (comma separated): their ObjectDetection boxes")
    lab.add_argument("--on-bad-prompt", choices=["fail", "skip", "clip"], default="fail",
                     help="a malformed prompt (e.g. a zero-width box): fail the run listing "
                          "them all (default), skip them, or clip boxes into the image")
    lab.add_argument("--coco-file-key", default="file_name",
                     help="COCO image field naming the CDF file (file_name = external id)")
    lab.add_argument("--annotation-status", default="approved",
                     help="with --from-annotations: only annotations of this status")
    lab.add_argument("--backend", choices=["api", "local", "fallback"], default="api",
                     help="where masks come from: api (CDF's Vision API, default), local (the "
                          "model of --model only), fallback (the API, the local model when the "
                          "API is unavailable, for good once it is retired)")
    lab.add_argument("--model", metavar="DIR",
                     help=f"with --backend local or fallback: {MODEL_HELP}")
    lab.add_argument("--device", type=_device, default="auto",
                     help="where the local model runs: auto (CUDA when available), cpu, cuda, "
                          "cuda:N")
    lab.add_argument("--out", required=True, help="the COCO JSON file to write")
    lab.add_argument("--segmentation", choices=["rle", "polygon"], default="rle")
    lab.add_argument("--concurrency", type=int, default=32, help="jobs in flight")
    lab.add_argument("--min-score", type=float, default=0.0, help="drop segments below")
    lab.add_argument("--min-area", type=int, default=0, help="drop segments under N pixels")
    lab.add_argument("--keep", choices=["best", "all"], default="best",
                     help="best segment per prompt, or all")
    lab.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                     help="label only shard I of N (merge caches with 'cogseg cache merge')")
    lab.add_argument("--cache", default=None, help="mask cache path (default: user cache)")
    lab.add_argument("--write-back", action="store_true",
                     help="also create 'suggested' ObjectDetection polygon annotations in CDF")
    lab.add_argument("--creating-app", default="cogseg-ml")
    lab.add_argument("--report", help="also write the run's report as JSON here")
    lab.add_argument("--no-progress", action="store_true")
    lab.set_defaults(func=_label)

    c = sub.add_parser("cache", help="inspect and maintain the mask cache",
                       description="stats: counts and sizes; ls: list entries; export: COCO "
                                   "file of every entry's best mask; clear: remove entries "
                                   "(--images: the stored images too); vacuum: compact the "
                                   "file; merge: copy entries and images of other caches "
                                   "(e.g. shards) into this one. Every action but merge needs "
                                   "an existing cache (none is created).")
    c.add_argument("action", choices=["stats", "ls", "export", "clear", "vacuum", "merge"])
    c.add_argument("sources", nargs="*", help="for merge: cache files or folders to copy from")
    c.add_argument("--path", default=None,
                   help="cache file or folder (default: the user cache directory)")
    c.add_argument("--out", help="for export: the COCO JSON file to write")
    c.add_argument("--limit", type=int, default=50, help="for ls: at most this many rows")
    c.add_argument("--images", action="store_true",
                   help="for clear: also remove the stored images (they are downloaded again "
                        "when needed)")
    c.set_defaults(func=_cache)

    d = sub.add_parser("demo", help="label bundled images through the emulator (README's job)",
                       description="Start the emulator on bundled images, segment them through "
                                   "the real client, and write results and a report to --out.")
    d.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    d.add_argument("--images", type=int, default=12, help="synthetic images to label")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_demo)
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
        _say(str(exc))
        return EXIT_USAGE
    except AuthenticationError as exc:  # an ApiError: before the generic handlers
        _say("credentials refused: " + _hinted(str(exc), AUTH_HINT))
        return EXIT_AUTH
    except ApiRetiredError as exc:  # an ApiUnavailableError: before it
        _say(_retired_line(exc))
        return EXIT_UNAVAILABLE
    except ApiUnavailableError as exc:
        _say("CDF unreachable: " + _hinted(str(exc), UNREACHABLE_HINT))
        return EXIT_UNAVAILABLE
    except CogsegError as exc:
        _say(str(exc))
        return EXIT_PARTIAL
    except OSError as exc:  # the environment, not a bug: a path, a full disk, a port
        if exc.errno not in _PATH_ERRNOS:
            raise
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        _say(f"disk is full: {exc}" if full else str(exc))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
