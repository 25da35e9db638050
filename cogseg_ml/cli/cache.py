"""``cogseg cache``: inspect and maintain the mask cache."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from cogseg_ml.cli.common import EXIT_OK, count, guard_outputs, output_file
from cogseg_ml.errors import CacheError, ValidationError


def run(args: argparse.Namespace) -> int:
    from cogseg_ml.cache.image_store import ImageStore
    from cogseg_ml.cache.mask_cache import MaskCache, cache_file
    from cogseg_ml.cache.merge import merge
    from cogseg_ml.coco_io import export_cache
    from cogseg_ml.detect.detection_cache import DetectionCache, detections_file

    if args.path is not None and cache_file(args.path) != Path(args.path) and \
            os.path.exists(args.path) and not os.path.isdir(args.path):
        raise ValidationError(f"--path {args.path} is a file, not a mask cache (a cache is a "
                              "folder holding masks.sqlite, or a .sqlite, .sqlite3 or .db "
                              "file); check the path (nothing was read or changed)")
    if args.action == "merge":
        if not args.sources:
            raise ValidationError("cogseg cache merge needs one or more source caches")
        _check_merge(args.path, args.sources)
        cache = MaskCache(args.path)
        ours = DetectionCache(detections_file(cache.path))  # opened on first use only
        entries = images = detections = 0
        for src in args.sources:
            got = merge(cache, src)
            entries, images = entries + got.entries, images + got.images
            theirs = detections_file(cache_file(src))
            if theirs.is_file():  # a shard that labelled from class names
                detections += ours.merge(theirs)
        also = f" and {detections} images' text detections" if detections else ""
        print(f"merged {entries} new entries and {images} images{also} into {cache.path}")
        return EXIT_OK
    if args.images and args.action != "clear":
        raise ValidationError("--images goes with cogseg cache clear")
    out = _export_out(args) if args.action == "export" else None  # before the cache is opened
    cache = MaskCache(args.path, create=False)  # inspecting never creates a cache
    dets_path = detections_file(cache.path)
    dets = DetectionCache(dets_path) if dets_path.is_file() else None
    if args.action == "stats":
        s = cache.stats()
        print(json.dumps({"path": s.path, "entries": s.entries, "bytes": s.bytes,
                          "file_bytes": s.file_bytes, "by_backend": s.by_backend,
                          "images": s.images, "image_bytes": s.image_bytes,
                          "detections": len(dets) if dets else 0}, indent=2))
    elif args.action == "ls":
        for i, (file_key, prompt, key, res) in enumerate(cache.iter_entries()):
            if args.limit and i >= args.limit:
                break
            best = res.best.score if res.best else None
            print(f"{key[:12]}  {file_key}  {prompt}  {res.backend}  {res.height}x{res.width}"
                  f"  segments={len(res.segments)} best={best}")
    elif args.action == "export":
        assert out is not None
        n = export_cache(cache, out)
        print(f"wrote {n} annotations to {out}")
    elif args.action == "clear":
        removed = cache.clear()
        if dets is not None:  # derived from the images like the masks: cleared with them
            removed_dets = dets.clear()
            print(f"removed {removed_dets} images' detections")
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



def _export_out(args: argparse.Namespace) -> Any:
    """``--out`` of an export: a file that can be written, none of the cache's, and new or
    one cogseg wrote (checked before the cache is opened)."""
    if not args.out:
        raise ValidationError("cogseg cache export needs --out FILE")
    out = output_file(args.out, "--out")
    guard_outputs([("--out", out)], cache=args.path)
    return out


def _check_merge(path: str | None, sources: list[str]) -> None:
    """Every source (and an existing target) is a sound cogseg cache, and none is the target,
    before anything is merged or created: a refusal leaves the target as it was (or absent)."""
    try:
        _check_merge_inputs(path, sources)
    except CacheError as exc:
        raise CacheError(f"{exc} (nothing was merged or created)") from None


def _check_merge_inputs(path: str | None, sources: list[str]) -> None:
    from cogseg_ml.cache.database import check_sqlite_file
    from cogseg_ml.cache.mask_cache import cache_file, check_cache_file
    from cogseg_ml.detect.detection_cache import detections_file

    target = cache_file(path)
    for src in sources:
        found = check_cache_file(src, role="cache merge: source")
        if found.resolve() == target.resolve() or (
                target.exists() and os.path.samefile(found, target)):
            raise ValidationError(f"cache merge: {src} is the target cache itself; give "
                                  "other caches (e.g. the shards') as sources")
        dets = detections_file(found)
        if dets.is_file():
            check_sqlite_file(dets, f"cache merge: the text detections of source {src}")
    if target.exists():
        check_cache_file(path, role="cache merge: target")


def register(sub: Any) -> None:
    """Add ``cache`` to the subcommands ``sub``."""
    c = sub.add_parser("cache", intermixed=True, help="inspect and maintain the mask cache",
                       description="stats: counts and sizes; ls: list entries; export: COCO "
                                   "file of every entry's best mask; clear: remove entries "
                                   "and text detections (--images: the stored images too); "
                                   "vacuum: compact the file; merge: copy entries, images "
                                   "and text detections of other caches "
                                   "(e.g. shards) into this one. Every action but merge needs "
                                   "an existing cache (none is created).")
    c.add_argument("action", choices=["stats", "ls", "export", "clear", "vacuum", "merge"])
    c.add_argument("sources", nargs="*", help="for merge: cache files or folders to copy from")
    c.add_argument("--path", default=None,
                   help="cache file or folder (default: the user cache directory)")
    c.add_argument("--out", help="for export: the COCO JSON file to write (an existing file "
                                 "is replaced only when cogseg wrote it)")
    c.add_argument("--limit", type=count, default=50,
                   help="for ls: at most this many rows (0: all)")
    c.add_argument("--images", action="store_true",
                   help="for clear: also remove the stored images (they are downloaded again "
                        "when needed)")
    c.set_defaults(func=run)
