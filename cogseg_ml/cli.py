"""The ``cogseg`` command line.

Subcommands: ``emulator`` (serve the local CDF emulator), ``demo`` (README's main job),
``cache`` (inspect and maintain the mask cache). Exit codes: 0 success, 1 the work ran but some
items failed, 2 bad usage or input, 3 the service could not be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from cogseg_ml.errors import ValidationError

__all__ = ["main"]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _emulator(args: argparse.Namespace) -> int:
    from cogseg_ml.emulator.faults import Fault
    from cogseg_ml.emulator.server import Emulator
    from cogseg_ml.emulator.synthetic_images import make_dataset

    faults = []
    if args.faults:
        data = json.loads(Path(args.faults).read_text())
        faults = [Fault.from_dict(d) for d in data]
    images = make_dataset(args.synthetic, seed=args.seed) if args.synthetic else None
    engine = None
    if args.engine == "sam":
        from cogseg_ml.backends.local_sam import LocalSamBackend
        from cogseg_ml.emulator.segmentation_engines import SamEngine

        if not args.checkpoint:
            raise ValidationError("--engine sam needs --checkpoint PATH (a SAM .pth file)")
        engine = SamEngine(LocalSamBackend(args.checkpoint, model_type=args.model_type))
    emu = Emulator(images=images, project=args.project, processing_time_s=args.processing_time,
                   concurrency=args.concurrency, rate_limit_rps=args.rate_limit, faults=faults,
                   seed=args.seed, host=args.host, port=args.port, engine=engine)
    if args.images:
        emu.add_folder(args.images)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with emu:
        info = {"base_url": emu.base_url, "project": emu.project, "token_url": emu.token_url,
                "client_id": emu.state.client_id, "files": len(emu.state.files)}
        # The secret is printed only when asked for: it is what a local client needs.
        if args.print_secret:
            info["client_secret"] = emu.client_secret.reveal()
        print(json.dumps(info), flush=True)
        stop.wait()
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from cogseg_ml.demo import run_demo

    return run_demo(Path(args.out), n_images=args.images, quiet=args.quiet)


def _cache(args: argparse.Namespace) -> int:
    from cogseg_ml.cache.mask_cache import MaskCache
    from cogseg_ml.coco_io import export_cache

    cache = MaskCache(args.path)
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
        n = export_cache(cache, args.out)
        print(f"wrote {n} annotations to {args.out}")
    elif args.action == "clear":
        print(f"removed {cache.clear()} entries")
    elif args.action == "vacuum":
        cache.vacuum()
        print(f"vacuumed {cache.path}")
    elif args.action == "merge":
        if not args.sources:
            raise ValidationError("cogseg cache merge needs one or more source caches")
        total = sum(cache.merge_from(src) for src in args.sources)
        print(f"merged {total} new entries into {cache.path}")
    return EXIT_OK


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def _label(args: argparse.Namespace) -> int:
    from cogseg_ml.api.client import SegmentationClient
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.labeler import SegmentationLabeler
    from cogseg_ml.samples import (
        load_records,
        samples_from_annotations,
        samples_from_coco,
        samples_from_records,
    )

    config = CdfConfig.from_env()
    if args.prompts:
        samples = samples_from_records(load_records(args.prompts))
    elif args.coco_boxes:
        samples = samples_from_coco(args.coco_boxes, file_key=args.coco_file_key)
    else:
        ids = [int(v) for v in args.from_annotations.replace(",", " ").split()]
        with SegmentationClient(config) as client:
            samples = samples_from_annotations(client, ids, status=args.annotation_status)
    labeler = SegmentationLabeler(config, cache=args.cache, min_score=args.min_score,
                                  min_area=args.min_area, keep=args.keep,
                                  concurrency=args.concurrency, shard=args.shard,
                                  progress=not args.no_progress)
    report = labeler.label(samples)
    labeler.to_coco(args.out, segmentation=args.segmentation)
    if args.write_back:
        wb = labeler.write_back(creating_app=args.creating_app)
        print(f"write-back: {wb.created} created, {wb.already_present} already present, "
              f"{wb.skipped} skipped", file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=2))
    print(report.summary(), file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
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
    e.add_argument("--port", type=int, default=8765, help="port (0: an ephemeral one)")
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
    e.add_argument("--engine", choices=["region-growing", "sam"], default="region-growing",
                   help="segmentation engine (sam: a local Segment-Anything checkpoint)")
    e.add_argument("--checkpoint", help="with --engine sam: the SAM checkpoint file")
    e.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    e.add_argument("--print-secret", action="store_true",
                   help="include the client secret in the ready line")
    e.set_defaults(func=_emulator)

    lab = sub.add_parser(
        "label", help="label images from prompts into a COCO file",
        description="Segment every prompt through the CDF API (credentials from COGNITE_* "
                    "variables), keep results in the mask cache (a re-run resumes), and write "
                    "a COCO instance-segmentation file. Exit 0: all labelled; 1: some "
                    "prompts failed (see the summary); 2: bad input; 3: CDF unreachable.")
    src = lab.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="JSON list or JSONL of {file, points, box, category}")
    src.add_argument("--coco-boxes", help="COCO detection file: its boxes become prompts")
    src.add_argument("--from-annotations", metavar="FILE_IDS",
                     help="CDF file ids (comma separated): their ObjectDetection boxes")
    lab.add_argument("--coco-file-key", default="file_name",
                     help="COCO image field naming the CDF file (file_name = external id)")
    lab.add_argument("--annotation-status", default="approved",
                     help="with --from-annotations: only annotations of this status")
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
                                   "file of every entry's best mask; clear: remove entries; "
                                   "vacuum: compact the file; merge: copy entries of other "
                                   "caches (e.g. shards) into this one.")
    c.add_argument("action", choices=["stats", "ls", "export", "clear", "vacuum", "merge"])
    c.add_argument("sources", nargs="*", help="for merge: cache files or folders to copy from")
    c.add_argument("--path", default=None,
                   help="cache file or folder (default: the user cache directory)")
    c.add_argument("--out", help="for export: the COCO JSON file to write")
    c.add_argument("--limit", type=int, default=50, help="for ls: at most this many rows")
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
    """Entry point of ``cogseg``; returns the exit code."""
    from cogseg_ml.errors import ApiUnavailableError, CogsegError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ValidationError as exc:
        print(f"cogseg: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiUnavailableError as exc:
        print(f"cogseg: service unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except CogsegError as exc:
        print(f"cogseg: {exc}", file=sys.stderr)
        return EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
