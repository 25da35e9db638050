"""Strict JSON in and out: one reader for every file a user hands us, one writer rule.

Python's :mod:`json` accepts things other readers refuse, or fails on hostile input with
exceptions that are not ours:

- ``NaN``, ``Infinity`` and numbers like ``1e999`` (parsed as infinity) are not JSON numbers
  (RFC 8259); browsers and most readers reject them;
- a document nested thousands of levels deep raises :class:`RecursionError`;
- an integer of more than 4300 digits raises a bare :class:`ValueError`;
- a lone surrogate (``"\\ud800"``) becomes a ``str`` that cannot be encoded as UTF-8, so it fails
  later, far from the file (in the HTTP layer, in SQLite).

:func:`loads` turns every one of these into a :class:`~cogseg_ml.errors.ValidationError` that
names the source and, where one exists, the place (``annotations[3].score``, with the id of
the record it sits in). :func:`dumps` writes strict JSON only (``allow_nan=False``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from cogseg_ml.errors import ValidationError

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "check", "dumps", "loads", "locate", "raw_decode"]

#: Deepest nesting accepted. Our formats nest at most about 6 levels (COCO polygons); 100 leaves
#: room for user metadata and stays far from the interpreter's recursion limit.
MAX_DEPTH = 100
#: Longest integer accepted, in digits. CDF ids are below 2**63 (19 digits).
MAX_INT_DIGITS = 40


class _IntTooLong(Exception):
    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _IntTooLong(digits)
    return int(text)


def _step(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=True)}]"


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def locate(root: Any, path: list[Any]) -> str:
    """``path`` (keys and indexes from ``root``) as text, e.g. ``annotations[3].score``, with
    the ``id`` of the innermost object on the way that has one: ``(in the object with id 17)``.
    """
    where, node, ident = "", root, None
    for key in path:
        if isinstance(node, dict) and "id" in node and isinstance(node["id"], int | str):
            ident = node["id"]
        where = _step(where, key)
        node = node[key]
    if isinstance(node, dict) and "id" in node and isinstance(node["id"], int | str):
        ident = node["id"]
    return where + (f" (in the record with id {ident!r})" if ident is not None and path else "")


def check(value: Any, source: str) -> None:
    """Refuse (ValidationError) what :func:`loads` refuses in an already parsed ``value``:
    nesting deeper than :data:`MAX_DEPTH`, non-finite numbers, lone surrogates. Walked
    without recursion."""
    stack: list[tuple[Any, list[Any]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise ValidationError(f"{source}: nested deeper than {MAX_DEPTH} levels (at "
                                  f"{locate(value, path[:3])}...); no file of ours nests like "
                                  "that: check that this is the file you meant", path=source)
        if isinstance(node, float) and not math.isfinite(node):
            raise ValidationError(f"{source}: {locate(value, path) or 'the document'} is "
                                  f"{node!r}, not a JSON number (NaN and infinities are not "
                                  "JSON); give a finite number", path=source)
        if isinstance(node, str) and _has_lone_surrogate(node):
            raise ValidationError(f"{source}: {locate(value, path) or 'the document'} holds a "
                                  "lone UTF-16 surrogate (e.g. \\ud800), which is not text; "
                                  "fix the string", path=source)
        if isinstance(node, dict):
            for k, v in node.items():
                if _has_lone_surrogate(k):
                    under = locate(value, path) or "the top level"
                    raise ValidationError(f"{source}: a key under {under} holds a lone UTF-16 "
                                          "surrogate (e.g. \\ud800), which is not text; fix the "
                                          "key", path=source)
                stack.append((v, [*path, k]))
        elif isinstance(node, list):
            stack.extend((v, [*path, i]) for i, v in enumerate(node))


def loads(text: str | bytes, source: str) -> Any:
    """Parse ``text`` strictly; ``source`` names it in every error (a path, an option).

    Raises:
        ValidationError: not JSON (with line and column), nested deeper than
            :data:`MAX_DEPTH`, an integer longer than :data:`MAX_INT_DIGITS` digits, a
            non-finite number, or a lone surrogate in a string; never a RecursionError,
            a bare ValueError or a UnicodeError.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{source} is not UTF-8 text (byte {exc.start}); save it as "
                                  "UTF-8 JSON", path=source) from None
    try:
        start = len(text) - len(text.lstrip(_WS))
        value, end = raw_decode(text, start, source)
        if text[end:].strip(_WS):
            raise json.JSONDecodeError("Extra data", text,
                                       end + len(text[end:]) - len(text[end:].lstrip(_WS)))
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{source} is not JSON ({exc.msg} at line {exc.lineno} column "
                              f"{exc.colno})", path=source) from None
    return value


_DECODER = json.JSONDecoder(parse_int=_parse_int)
_WS = " \t\n\r"


def raw_decode(text: str, index: int, source: str) -> tuple[Any, int]:
    """One JSON value of ``text`` from ``index`` (as :meth:`json.JSONDecoder.raw_decode`),
    checked as :func:`loads` checks. For readers that track records themselves (JSON Lines,
    a list read record by record).

    Raises:
        json.JSONDecodeError: a syntax error (the caller names the record).
        ValidationError: every other refusal :func:`loads` makes.
    """
    try:
        value, end = _DECODER.raw_decode(text, index)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise ValidationError(f"{source}: nested deeper than Python can read (more than "
                              f"{MAX_DEPTH} levels is never one of our formats); check that "
                              "this is the file you meant", path=source) from None
    except _IntTooLong as exc:
        raise ValidationError(f"{source}: an integer of {exc.digits} digits (at most "
                              f"{MAX_INT_DIGITS} are accepted); check the numbers in the file",
                              path=source) from None
    except ValueError as exc:  # anything else the decoder refuses
        raise ValidationError(f"{source} is not JSON ({exc})", path=source) from None
    check(value, source)
    return value, end


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN and infinities (strict JSON, readable by browsers)."""
    kwargs.setdefault("allow_nan", False)
    return json.dumps(value, **kwargs)
