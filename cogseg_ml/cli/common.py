"""What every ``cogseg`` command shares: exit codes, one-line messages, path checks made before
any work starts, the local model of ``--model DIR``."""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import cogseg_ml.strict_json as strict_json
from cogseg_ml.errors import ValidationError
from cogseg_ml.outputs.owned_files import check_replaceable

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
PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC),
                errno.EADDRINUSE, errno.EADDRNOTAVAIL}


def say(text: str) -> None:
    """One line on stderr, prefixed ``cogseg:``."""
    print("cogseg: " + " ".join(str(text).splitlines()), file=sys.stderr, flush=True)


def hinted(message: str, hint: str) -> str:
    """``message`` and the hint in the command line's terms (its environment variables),
    unless the message already names them."""
    return message if "COGNITE_" in message else f"{message}; {hint}"


@contextmanager
def signals_stop_the_run() -> Iterator[list[str]]:
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
            say(f"{name} again: stopping at once")
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


def stopped(received: list[str], out: str) -> int:
    """One line and the exit code for a command stopped by SIGINT or SIGTERM while writing
    its output folder (which is left whole: as it was, or complete)."""
    name = received[-1] if received else "SIGINT"
    say(f"stopped by {name}: nothing half-written was left in --out {out}")
    return EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT


# --- paths: checked before any work starts -----------------------------------------------------

def input_file(path: str, flag: str) -> Path:
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


def input_folder(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ValidationError(f"{flag} {path}: no such folder; check the path")
    if not p.is_dir():
        raise ValidationError(f"{flag} {path} is a file, not a folder")
    return p


def output_file(path: str, flag: str) -> Path:
    """A file to write later: its folder exists and takes a new file now (tried, then removed),
    so a run never does all its work to fail at the end. An empty path is refused (it would
    name the current folder), and so are a device, a pipe and a symbolic link (writing the
    file atomically would replace them)."""
    if not str(path).strip():
        raise ValidationError(f"{flag} is empty; give a file name, e.g. {flag} labels.json")
    p = Path(path)
    if p.is_symlink():
        raise ValidationError(f"{flag} {path} is a symbolic link; give a new file's path "
                              "(nothing was written: the link and its target are as they were)")
    if p.exists() and not p.is_dir() and not p.is_file():
        raise ValidationError(f"{flag} {path} is not a regular file (a device or a pipe); "
                              "give a new file's path (nothing was written)")
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


def _real(path: str | Path) -> Path:
    """``path`` with every symbolic link resolved (also for a path that does not exist yet)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _same(a: Path, b: Path) -> bool:
    """One file: the same resolved path, or (hard links) the same inode."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _inside(path: Path, folder: Path) -> bool:
    return _real(folder) in _real(path).parents


def cache_paths(cache: str | Path | None) -> tuple[list[Path], list[Path]]:
    """``(files, folders)`` a mask cache at ``cache`` (``None``: the user cache) owns: its
    SQLite file with SQLite's side files, its text-detection file, its image store, and the
    folder itself when ``cache`` names a folder."""
    from cogseg_ml.cache.mask_cache import cache_file
    from cogseg_ml.detect.detection_cache import detections_file

    db = cache_file(cache)
    files: list[Path] = []
    for base in (db, detections_file(db)):
        files += [base, *(base.with_name(base.name + s) for s in ("-wal", "-shm", "-journal"))]
    folders = [db.parent / "images"]
    if cache is None or db != Path(cache):  # a folder was named: all of it is the cache's
        folders.append(db.parent)
    return files, folders


def guard_outputs(outputs: Sequence[tuple[str, str | Path]],
                  inputs: Sequence[tuple[str, str | Path | None]] = (), *,
                  cache: str | Path | Literal[False] | None = False,
                  folders: Sequence[str] = ()) -> None:
    """Refuse, before any work, a run that would write over its own inputs or its cache.

    The one check every writing command makes. ``outputs`` and ``inputs`` are ``(flag, path)``
    pairs (an input may be a file or a folder, e.g. a model; ``None`` is skipped); ``cache`` is
    the run's mask cache path (``None``: the user cache; ``False``: the run uses none);
    ``folders`` names the output flags that are folders. Paths are compared with symbolic
    links resolved and hard links recognised. Refused: an output that is an input, is an
    existing file inside an input folder (a model's), lies inside the cache's folders, or is one
    of the cache's files; an output folder that holds an input or the cache; two outputs that
    are one file; a cache file that is not a cogseg mask cache (a user's SQLite, say: see
    :func:`~cogseg_ml.cache.mask_cache.refuse_foreign_cache`; a ``CacheError``, only read);
    an output file that exists and was not written by cogseg (see
    :mod:`cogseg_ml.outputs.owned_files`; output folders have their manifest rule instead). A new
    file beside an input folder's files is allowed.

    Raises:
        ValidationError: one line naming both paths; nothing was written.
        CacheError: the cache's file is not a cogseg mask cache (left as it was).
    """
    given = [(f, Path(p)) for f, p in inputs if p is not None and str(p) != ""]
    files, cache_folders = cache_paths(cache) if cache is not False else ([], [])
    if cache is not False:
        from cogseg_ml.cache.mask_cache import refuse_foreign_cache

        refuse_foreign_cache(cache)
    for i, (flag, out) in enumerate(outputs):
        out = Path(out)
        is_folder = flag in folders
        for other_flag, other in outputs[:i]:
            if _same(out, Path(other)):
                raise ValidationError(f"{flag} {out} and {other_flag} {other} are the same "
                                      "file; give each its own path")
        for in_flag, src in given:
            # a new file beside a model's files is harmless; one of its files is not
            if _same(out, src) or (src.is_dir() and _inside(out, src) and out.exists()):
                what = "is" if _same(out, src) else "is a file of"
                raise ValidationError(f"{flag} {out} {what} the run's input {in_flag} {src}: "
                                      "writing there would destroy it; choose another path "
                                      "(nothing was written)")
            if is_folder and _inside(src, out):
                raise ValidationError(f"{flag} {out} holds {src}, which this run reads "
                                      f"({in_flag}): writing the folder would destroy it; "
                                      "choose another folder (nothing was written)")
        if cache is not False:
            hit = next((f for f in files if _same(out, f)), None) or \
                next((d for d in cache_folders if _same(out, d) or _inside(out, d)), None)
            if hit is None and is_folder:
                hit = next((f for f in files[:1] if _inside(f, out)), None)
            if hit is not None:
                raise ValidationError(f"{flag} {out} is part of the mask cache ({hit}): "
                                      "writing there would damage the cache; choose a path "
                                      "outside it (nothing was written)")
        if not is_folder:
            check_replaceable(out, flag)


def write_atomically(path: Path, text: str) -> None:
    """Write a small file under a temporary name and move it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".incomplete", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_ids(text: str) -> list[int]:
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


def files_filter(text: str) -> dict[str, Any]:
    """``--files-filter``: a JSON object (or ``@FILE`` holding one)."""
    source = "--files-filter"
    if text.startswith("@"):
        path = input_file(text[1:], "--files-filter @FILE")
        source = f"--files-filter {text}"
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(f"{source} cannot be read as UTF-8 text ({exc})") from None
    try:
        value = strict_json.loads(text, source)
    except ValidationError as exc:
        raise ValidationError(f"{exc}; give a files/list filter object, e.g. "
                              '\'{"directoryPrefix": "/a/"}\'') from None
    if not isinstance(value, dict):
        raise ValidationError(f"{source} must be a JSON object of filter fields, got "
                              f"{type(value).__name__}")
    return value


def positive(text: str) -> int:
    """An option taking an integer >= 1 (argparse type: refused before any work)."""
    t = text.strip()
    if not t.isdigit() or len(t) > 12 or int(t) < 1:
        raise argparse.ArgumentTypeError(f"takes a positive integer, got {text!r}")
    return int(t)


def count(text: str) -> int:
    """An option taking an integer >= 0 (argparse type: refused before any work)."""
    t = text.strip()
    if not t.isdigit() or len(t) > 12:
        raise argparse.ArgumentTypeError(f"takes a whole number >= 0, got {text!r}")
    return int(t)


def _number(text: str, ok: Callable[[float], bool], wanted: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes {wanted}, got {text!r}") from None
    if not (math.isfinite(v) and ok(v)):
        raise argparse.ArgumentTypeError(f"takes {wanted}, got {text!r}")
    return v


def seconds(text: str) -> float:
    """An option taking a finite number of seconds >= 0."""
    return _number(text, lambda v: v >= 0, "seconds (a finite number >= 0)")


def fraction(text: str) -> float:
    """An option taking a number in [0, 1]."""
    return _number(text, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port takes a number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port {port}: a port is 0..65535 (0: any free one)")
    return port


def device(text: str) -> str:
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


def local_model(folder: str | None, device: str, need: str) -> Any:
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


def retired_line(error: Any) -> str:
    """One line for a retired Vision API, in the command line's terms."""
    from cogseg_ml.errors import VISION_RETIREMENT_DATE

    reason = getattr(error, "reason", None) or "its segment endpoint answered 404"
    host = getattr(error, "host", None)
    at = f" at {host}" if host else ""
    return (f"CDF's Vision API{at} appears retired ({reason}; Cognite's SDKs give "
            f"{VISION_RETIREMENT_DATE} as its retirement date): {RETIRED_HINT}")

