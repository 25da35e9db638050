"""Output folders written whole, and never over what cogseg did not write.

``cogseg export``, ``cogseg review`` and ``cogseg demo`` (and their functions:
:func:`~cogseg_ml.exports.to_coco` and the other exports,
:func:`~cogseg_ml.review.page.write_review_page`, :func:`~cogseg_ml.demo.run_demo`) write their
folder through :func:`output_folder`:

1. **Checked before any work** (:func:`check_out`): the path is not empty, not a file, not the
   current folder or one holding it; its parent exists and takes a new folder; no input of the
   run lies inside it; and the folder is missing, empty, or an earlier output of the same
   command: it holds the manifest :data:`MANIFEST` and nothing but what that manifest lists,
   each file unchanged since (same size and modification time). Anything else is refused,
   naming the first file cogseg did not write (or that changed since).
2. **Built aside**, in a new sibling folder ``.NAME.XXXXXXXX.incomplete``. The manifest, written
   last, lists the command and every folder and file written.
3. **Put in place at once**: renamed onto a missing or empty folder, or exchanged with the
   earlier output in one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames),
   which is then removed. The folder is checked again just before, so one filled by someone
   else meanwhile is left alone. SIGINT and SIGTERM wait until the folder is in place.

On an error or a stop the temporary folder is removed and the folder is left as it was: a
reader sees the earlier output or the new one, whole, never a mix, and no file that cogseg did
not write is ever overwritten or removed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import cogseg_ml.strict_json as strict_json
from cogseg_ml.errors import ValidationError
from cogseg_ml.version import __version__

__all__ = ["MANIFEST", "check_out", "output_folder"]

#: The manifest an output folder carries: ``{"format": "cogseg-output", "version": 1,
#: "command": ..., "folders": [...], "files": {path: {"size": ..., "mtime_ns": ...}}}``.
MANIFEST = "cogseg-output.json"
MANIFEST_FORMAT = "cogseg-output"
MANIFEST_VERSION = 1

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: errors of a write that found no room (a full disk, a quota, a file-size limit): the
#: output's, even where the error names no file
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


@dataclass
class _Listing:
    """What a folder holds, by relative POSIX path (its top-level manifest left out)."""

    folders: set[str] = field(default_factory=set)
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # size, mtime_ns
    other: set[str] = field(default_factory=set)  # links, pipes, devices: never ours

    def paths(self) -> list[str]:
        return sorted(self.folders | set(self.files) | self.other)


def _listing(root: Path) -> _Listing:
    found = _Listing()
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = Path(entry.path).relative_to(root).as_posix()
                if entry.is_dir(follow_symlinks=False):
                    found.folders.add(rel)
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.files[rel] = (st.st_size, st.st_mtime_ns)
                else:
                    found.other.add(rel)
    found.files.pop(MANIFEST, None)
    return found


def _write_manifest(folder: Path, command: str) -> None:
    listing = _listing(folder)
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "command": command,
                "written_by": f"cogseg_ml {__version__}",
                "folders": sorted(listing.folders),
                "files": {rel: {"size": size, "mtime_ns": mtime}
                          for rel, (size, mtime) in sorted(listing.files.items())}}
    (folder / MANIFEST).write_text(strict_json.dumps(manifest, indent=1) + "\n",
                                   encoding="utf-8")


def _read_manifest(folder: Path) -> tuple[str, set[str], dict[str, tuple[int, int]]] | str:
    """The manifest's command, folders and files; or why it is not one cogseg wrote."""
    path = folder / MANIFEST
    try:
        data = strict_json.loads(path.read_bytes(), MANIFEST)
    except (OSError, ValidationError) as exc:
        return f"its {MANIFEST} cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if not (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
            and data.get("version") == MANIFEST_VERSION and isinstance(data.get("command"), str)
            and isinstance(data.get("folders"), list) and isinstance(data.get("files"), dict)):
        return f"its {MANIFEST} is not one cogseg wrote"
    files: dict[str, tuple[int, int]] = {}
    for rel, stat in data["files"].items():
        if not (isinstance(stat, dict) and isinstance(stat.get("size"), int)
                and isinstance(stat.get("mtime_ns"), int)):
            return f"its {MANIFEST} is not one cogseg wrote"
        files[rel] = (stat["size"], stat["mtime_ns"])
    return data["command"], {str(f) for f in data["folders"]}, files


def _not_ours(folder: Path, command: str, flag: str, out: str | Path) -> str | None:
    """``None`` when ``folder`` is empty or an unchanged earlier output of ``command``; else
    the refusal, naming the first thing cogseg did not write."""
    listing = _listing(folder)
    manifest = folder / MANIFEST
    if not (manifest.is_file() and not manifest.is_symlink()):
        paths = listing.paths()
        if not paths:
            return None
        return (f"{flag} {out} exists and is not empty: {paths[0]} is not a file cogseg wrote "
                "there; give a new folder (cogseg replaces only its own earlier output, whole)")
    read = _read_manifest(folder)
    if isinstance(read, str):
        return f"{flag} {out} exists and is not empty, and {read}; give a new folder"
    theirs, folders, files = read
    if theirs != command:
        return (f"{flag} {out} holds the output of `cogseg {theirs}`, not of `cogseg "
                f"{command}`; give another folder (cogseg replaces only an earlier output of "
                "the same command)")
    for rel in listing.paths():
        if rel in listing.files and rel in files:
            if listing.files[rel] != files[rel]:
                return (f"{flag} {out} exists and is not empty: {rel} changed since cogseg "
                        f"{command} wrote it; give a new folder, or move {rel} out of it")
        elif rel not in listing.folders or rel not in folders:
            return (f"{flag} {out} exists and is not empty: {rel} is not a file cogseg "
                    f"{command} wrote there; give a new folder, or move {rel} out of it")
    return None


def _absolute(out: str | Path) -> Path:
    return Path(os.path.abspath(out))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(out: str | Path, command: str, *, flag: str = "out",
              inputs: Iterable[str | Path | None] = ()) -> Path:
    """The folder ``command`` will write: refused unless it is missing, empty, or that
    command's own unchanged earlier output (see the module docstring).

    Args:
        out: the folder.
        command: the command writing it (``"export"``, ``"review"``, ``"demo"``): an earlier
            output of another command is not replaced.
        flag: how messages name the folder (``"--out"`` on the command line).
        inputs: files and folders the run reads; none may lie inside ``out``.

    Raises:
        ValidationError: an empty path, a file, the current folder, a missing or unwritable
            parent, an input inside ``out``, or a folder holding anything cogseg did not write
            there (named); the message says what to do.
    """
    if not isinstance(out, (str, Path)) or not str(out).strip():
        raise ValidationError(f"{flag} is empty; give the folder to write, e.g. {flag} "
                              f"{command}_out")
    if "\0" in str(out):
        raise ValidationError(f"{flag} {out!r} holds a NUL character; give a folder name")
    try:
        target = _absolute(out)
        here = Path.cwd().resolve()
        if _inside(here, target.resolve()):
            raise ValidationError(f"{flag} {out} is the current folder or holds it; give a new "
                                  f"folder, e.g. {flag} {command}_out (cogseg replaces its "
                                  "output folder whole)")
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise ValidationError(f"{flag} {out} exists and is not a folder; give a new folder "
                                  "name")
        parent = target.parent
        if not parent.is_dir():
            raise ValidationError(f"{flag} {out}: the folder {parent} does not exist; create it "
                                  "or choose another path")
        for given in inputs:
            if given is not None and _inside(_absolute(given).resolve(), target.resolve()):
                raise ValidationError(f"{flag} {out} holds {given}, which this run reads; give "
                                      "another folder (cogseg replaces its output folder whole)")
        if target.is_dir():
            refusal = _not_ours(target, command, flag, out)
            if refusal is not None:
                raise ValidationError(refusal)
        os.rmdir(_new_sibling(target, flag, out))  # the parent takes a new folder
    except OSError as exc:
        raise ValidationError(f"{flag} {out} cannot be used ({exc.strerror or exc}); choose "
                              "another folder") from None
    return Path(out)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (in the main thread) until the block is done, then are
    delivered to the handlers they were meant for."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None and handler != signal.SIG_IGN:
            previous[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux); ``False`` where the system cannot (nothing moved)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _swap_in(new: Path, target: Path, flag: str, out: str | Path) -> Path:
    """Put ``new`` in place of ``target`` (an earlier output); where the earlier one is now."""
    if _exchange(new, target):
        return new
    aside = _new_sibling(target, flag, out, suffix="replaced")
    os.replace(target, aside)  # onto the empty folder just made
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    return aside


def _put_in_place(new: Path, target: Path, command: str, flag: str, out: str | Path) -> None:
    def filled(why: str) -> ValidationError:
        return ValidationError(f"{flag} {out} was created or filled while the {command} ran "
                               f"({why}); nothing was written there")

    old: Path | None = None
    try:
        with _signals_held():
            if target.is_dir() and not target.is_symlink() and any(target.iterdir()):
                refusal = _not_ours(target, command, flag, out)
                if refusal is not None:
                    raise filled(refusal)
                old = _swap_in(new, target, flag, out)
            else:
                try:
                    os.replace(new, target)  # onto a missing or empty folder only
                except OSError as exc:
                    raise filled(str(exc.strerror or exc)) from None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise ValidationError(f"{flag} {out} cannot be replaced ({exc.strerror or exc}); it "
                              "was left as it was") from None


def _written_inside(exc: OSError, folder: Path) -> Path | None:
    """The path under ``folder`` that ``exc`` is about, if any."""
    for name in (exc.filename, exc.filename2):
        if isinstance(name, (str, bytes)):
            path = _absolute(os.fsdecode(name))
            if _inside(path, folder):
                return path
    return None


@contextmanager
def output_folder(out: str | Path, command: str, *, flag: str = "out",
                  inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a new empty folder beside ``out`` to write in; on success it becomes ``out``
    (replacing ``command``'s earlier output there), with its manifest.

    Args:
        out, command, flag, inputs: as for :func:`check_out`, which runs first.

    Raises:
        ValidationError: see :func:`check_out`; a write into the folder that fails (a full
            disk, a file-size limit), naming it; ``out`` filled by someone else while the
            command ran. ``out`` is left as it was, and the temporary folder removed.
    """
    inputs = list(inputs)
    check_out(out, command, flag=flag, inputs=inputs)
    target = _absolute(out)
    new = _new_sibling(target, flag, out)
    try:
        try:
            yield new
            _write_manifest(new, command)
        except OSError as exc:
            where = _written_inside(exc, new)
            if where is None and exc.errno not in _NO_ROOM:
                raise  # not about the output (e.g. an input that cannot be read)
            what = f"{where.relative_to(new)} there" if where is not None else "there"
            raise ValidationError(f"{flag} {out}: cannot write {what} ({exc.strerror or exc}); "
                                  "nothing was written") from None
        _put_in_place(new, target, command, flag, out)
    finally:
        if os.path.lexists(new):
            with _signals_held():
                shutil.rmtree(new, ignore_errors=True)


def _new_sibling(target: Path, flag: str, out: str | Path, suffix: str = "incomplete") -> Path:
    """A new, empty folder beside ``target`` (made as ``mkdir`` would: the umask applies)."""
    for _ in range(100):
        tmp = target.parent / f".{target.name[:64]}.{secrets.token_hex(4)}.{suffix}"
        try:
            os.mkdir(tmp)
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise ValidationError(f"{flag} {out}: cannot write in {target.parent} "
                                  f"({exc.strerror or exc}); choose a writable location") from None
    raise ValidationError(f"{flag} {out}: cannot find a free temporary name in {target.parent}")
