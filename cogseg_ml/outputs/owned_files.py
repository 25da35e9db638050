"""Which single output files cogseg may replace: only files cogseg wrote.

Every writer of one file replaces an existing file at its path only when the file carries
cogseg's marker at its very start, as every file cogseg writes does: the commands
(``cogseg label --out`` and ``--report``, ``cogseg cache export --out``) check their paths
before any work, and :class:`~cogseg_ml.coco_io.CocoWriter` (so ``SegmentationLabeler.to_coco``
and ``export_cache`` too) checks its path when it starts and again just before it moves the
finished file there. The marker:

- a COCO file (``cogseg label``, ``cogseg cache export``, ``SegmentationLabeler.to_coco``)
  opens with ``{"info": {"description": "cogseg_ml ...", ...}``;
- a run's JSON report (``cogseg label --report``) opens with
  ``{"written_by": "cogseg_ml <version>", ...}``.

Only the first :data:`PREFIX_BYTES` bytes are read, and only the object's first member is
parsed, so a file of any size is checked at once. Anything else is not ours: another tool's
COCO file, a file whose marker is not its first member, a text or binary file, an empty file
(cogseg writes atomically and never leaves one behind, so an empty file was made by someone
else, e.g. ``touch`` or ``mktemp``), a file that cannot be read, and anything not a regular
file. Output folders follow their own rule (a ``cogseg-output.json`` manifest, see
``cogseg_ml.exports``).
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from pathlib import Path
from typing import Any

import cogseg_ml.strict_json as strict_json
from cogseg_ml.errors import ForeignOutputError, ValidationError
from cogseg_ml.version import __version__

__all__ = ["PREFIX_BYTES", "REPORT_MARKER", "check_replaceable", "not_ours_because",
           "written_by"]

#: How much of an existing file is read to recognise it (our markers sit in its first bytes).
PREFIX_BYTES = 64 * 1024
#: The first key of every JSON report cogseg writes; its value is :func:`written_by`.
REPORT_MARKER = "written_by"
_OURS = re.compile(r"cogseg_ml(\s|$)")
_WS = " \t\n\r"


def written_by() -> str:
    """The marker value of the files written now: ``"cogseg_ml <version>"``."""
    return f"cogseg_ml {__version__}"


def _first_member(text: str, source: str) -> tuple[Any, Any]:
    """The first ``(key, value)`` of the JSON object ``text`` opens (``text`` may stop
    anywhere after it).

    Raises:
        ValueError: ``text`` does not open with an object whose first member is complete.
    """
    i = len(text) - len(text.lstrip(_WS))
    if not text.startswith("{", i):
        raise ValueError("not a JSON object")
    i += 1
    i += len(text[i:]) - len(text[i:].lstrip(_WS))
    key, i = strict_json.raw_decode(text, i, source)
    i += len(text[i:]) - len(text[i:].lstrip(_WS))
    if not text.startswith(":", i):
        raise ValueError("no member")
    i += 1
    i += len(text[i:]) - len(text[i:].lstrip(_WS))
    value, _ = strict_json.raw_decode(text, i, source)
    return key, value


def _marked(key: Any, value: Any) -> bool:
    if key == "info" and isinstance(value, dict):
        value = value.get("description")
    elif key != REPORT_MARKER:
        return False
    return isinstance(value, str) and _OURS.match(value) is not None


def not_ours_because(path: str | Path) -> str | None:
    """Why the existing ``path`` is not a file cogseg wrote, or ``None`` when it is one (or
    when nothing is there). Reads at most :data:`PREFIX_BYTES` bytes; never raises."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be checked ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_size == 0:
        return "it is empty, and cogseg never leaves an empty file"
    try:
        with open(p, "rb") as f:
            head = f.read(PREFIX_BYTES)
    except OSError as exc:
        return f"it cannot be read to check who wrote it ({exc.strerror or exc})"
    try:  # an incomplete last character (the prefix cut it) is left out, not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        key, value = _first_member(text, str(p))
    except (ValueError, ValidationError):  # json.JSONDecodeError is a ValueError
        return "it does not start with cogseg's marker"
    if not _marked(key, value):
        return "it does not start with cogseg's marker"
    return None


def check_replaceable(path: str | Path, flag: str, *,
                      note: str = "nothing was written") -> None:
    """Refuse an output path holding a file cogseg did not write (see the module's rule).

    Raises:
        ForeignOutputError: (a ``ValidationError``) one line naming ``flag`` and the file, why
            it is not ours and what to do; ``note`` (in parentheses at its end) says what
            became of the run's work.
    """
    why = not_ours_because(path)
    if why is not None:
        raise ForeignOutputError(
            f"{flag} {path} already exists and is not a file cogseg wrote ({why}), so it is "
            f"never replaced; choose another path, or move or remove that file ({note})",
            path=str(path), reason=why)
