"""An export's output folder, all or nothing.

The folder is checked before any work (it must not exist, or be empty; its parent must exist
and take new files), built under a temporary sibling name (``.NAME.XXXX.incomplete``), and
renamed into place when complete. On an error, or when the run is stopped, the temporary folder
is removed and ``out`` is left as it was: a reader never sees half an export.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cogseg_ml.errors import ValidationError

__all__ = ["check_out", "output_folder"]


def check_out(out: str | Path, flag: str = "out") -> Path:
    """The folder an export will create: refused when it holds anything, or cannot be made.

    Raises:
        ValidationError: ``out`` is a file, a folder that is not empty, or its parent is
            missing or not writable; the message says what to do.
    """
    p = Path(out)
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        raise ValidationError(f"{flag} {out} exists and is not a folder; give a new folder name")
    if p.is_dir():
        try:
            empty = next(p.iterdir(), None) is None
        except OSError as exc:
            raise ValidationError(f"{flag} {out} cannot be read ({exc.strerror or exc})") from None
        if not empty:
            raise ValidationError(f"{flag} {out} exists and is not empty; give a new folder (an "
                                  "export never writes into an existing one)")
    parent = p.absolute().parent
    if not parent.is_dir():
        raise ValidationError(f"{flag} {out}: the folder {parent} does not exist; create it or "
                              "choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValidationError(f"{flag} {out}: cannot write in {parent}; choose a writable "
                              "location")
    return p


@contextmanager
def output_folder(out: str | Path, flag: str = "out") -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out``.

    Raises:
        ValidationError: see :func:`check_out`; also when ``out`` was filled by someone else
            while the export ran (nothing is overwritten).
    """
    target = check_out(out, flag).absolute()
    tmp = _new_sibling(target, flag, out)
    try:
        yield tmp
        try:
            os.replace(tmp, target)  # onto a missing or empty folder only
        except OSError as exc:
            raise ValidationError(f"{flag} {out} was created or filled while the export ran "
                                  f"({exc.strerror or exc}); nothing was written there") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _new_sibling(target: Path, flag: str, out: str | Path) -> Path:
    """A new, empty folder beside ``target`` (made as ``mkdir`` would: the umask applies)."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.incomplete"
        try:
            os.mkdir(tmp)
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise ValidationError(f"{flag} {out}: cannot write in {target.parent} "
                                  f"({exc.strerror or exc}); choose a writable location") from None
    raise ValidationError(f"{flag} {out}: cannot find a free temporary name in {target.parent}")
