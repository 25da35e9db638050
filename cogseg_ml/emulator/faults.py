"""Seeded, deterministic fault injection for the emulator.

A :class:`Fault` says what goes wrong, where and how often; a :class:`FaultInjector` draws from
one seeded random stream, so the same seed and the same request order give the same faults.

Kinds:
    ``status``        answer ``status`` (429, 500, 502, 503, ...) before the request is handled,
                      with ``Retry-After: retry_after`` when given.
    ``drop``          close the connection without a complete response; with ``after=True`` the
                      request is handled first (a job may have been created) and then dropped.
    ``delay``         hold the response for ``delay_s`` seconds (a slow server).
    ``job_fail``      a new segmentation job ends ``Failed`` with a job-level ``errorMessage``.
    ``item_fail``     a new job's only item fails: ``Failed`` with the item in ``failedItems``.
    ``token_expiry``  the presented token expires now: this and later requests with it get 401.
    ``body``          answer ``status`` with ``body`` as is (``content_type``): HTML error pages,
                      non-JSON, truncated or huge bodies, unknown statuses, NaN vertices...

Rules are built in Python (:class:`Fault`) or from JSON (:func:`faults_from_json`,
:func:`faults_from_data`; ``cogseg emulator --faults FILE`` and ``POST /_emulator/faults`` use
them): a list of objects with the fields of :class:`Fault`, ``methods`` as a list, e.g.
``[{"kind": "status", "status": 503, "probability": 0.1, "retry_after": "2"}]``. Every field
is checked when the rule is built, before anything is served: a value of the wrong type or
range raises :class:`FaultRuleError` (a :class:`~cogseg_ml.errors.ValidationError`) naming the
rule's index, the field and what the field allows.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NoReturn, get_args

from cogseg_ml.errors import ValidationError

__all__ = ["FAULT_KINDS", "MAX_SEED", "NO_BODY_STATUSES", "REQUEST_FAULT_KINDS", "Fault",
           "FaultInjector", "FaultKind", "FaultRuleError", "check_seed", "faults_from_data",
           "faults_from_json"]

FaultKind = Literal["status", "drop", "delay", "job_fail", "item_fail", "token_expiry", "body"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
REQUEST_FAULT_KINDS: frozenset[str] = frozenset({"status", "drop", "delay", "body"})
#: Statuses whose answers carry no body (HTTP): a ``status`` fault sends none with them.
NO_BODY_STATUSES: frozenset[int] = frozenset({204, 304})
#: Largest seed accepted (seeds are 0..MAX_SEED, the usual 32-bit range of random seeds).
MAX_SEED = 2**32 - 1

_METHOD = re.compile(r"[A-Za-z]+")


class FaultRuleError(ValidationError):
    """A fault rule that cannot be used: the message names the rule (its index, when it came
    in a list), the field and what the field allows.

    Attributes:
        field: the field at fault (``"kind"`` for a rule that is not an object).
        rule: the rule's index in its list (``None`` for a rule built on its own).
        detail: the message without the rule's place (``"'status' must be ..."``).
    """

    field: str
    rule: int | None
    detail: str

    def __init__(self, message: str, *, field: str, rule: int | None = None,
                 detail: str = "") -> None:
        super().__init__(message, field=field, rule=rule, detail=detail or message)


def _shown(value: object) -> str:
    """``value`` as a message shows it: its repr (shortened) and, for JSON, its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = {bool: "true/false", str: "text", int: "an integer", float: "a number",
            list: "a list", tuple: "a list", dict: "an object", type(None): "null"
            }.get(type(value))
    return f"{text} ({kind})" if kind else text


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if _is_int(value):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _is_text(value: object) -> bool:
    """A ``str`` that can be sent (UTF-8 encodable: no lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _header_problem(value: str) -> str | None:
    """Why ``value`` cannot be an HTTP header value, or ``None``."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "holds characters outside Latin-1"
    if any((c < " " and c != "\t") or c == "\x7f" for c in value):
        return "holds control characters (a line break?)"
    if value != value.strip(" \t"):
        return "starts or ends with a space"
    return None


_HEADER_TEXT = "Latin-1 text without control characters or surrounding spaces"

#: field -> (check, what is allowed); a check returns whether the value is allowed.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: isinstance(v, str) and v in FAULT_KINDS,
             "one of " + ", ".join(FAULT_KINDS)),
    "probability": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "times": (lambda v: v is None or (_is_int(v) and v >= 0),
              "a count, an integer >= 0 (leave it out: no limit)"),
    "path_contains": (lambda v: v is None or _is_text(v),
                      "text (leave it out: every CDF path)"),
    "status": (lambda v: _is_int(v) and 200 <= v <= 599,
               "an HTTP status, an integer in 200..599"),
    "delay_s": (lambda v: _is_number(v) and v >= 0, "seconds, a number >= 0"),
    "after": (lambda v: isinstance(v, bool), "true or false"),
    "message": (_is_text, "text"),
    "body": (_is_text, "text"),
}


def _check(rule: Fault) -> None:
    """Raise :class:`FaultRuleError` for the first field of ``rule`` that is not allowed."""
    for name, (allowed, what) in _RULES.items():
        value = getattr(rule, name)
        if not allowed(value):
            _refuse(name, f"must be {what}, got {_shown(value)}")
    if rule.kind == "body" and rule.status in NO_BODY_STATUSES and rule.body:
        _refuse("body", f"must be empty with status {rule.status} (HTTP gives "
                        f"{' and '.join(map(str, sorted(NO_BODY_STATUSES)))} answers no body)")
    methods = rule.methods
    if methods is not None and not (
            isinstance(methods, (list, tuple, set, frozenset)) and methods
            and all(isinstance(m, str) and _METHOD.fullmatch(m) for m in methods)):
        _refuse("methods", 'must be a list of HTTP methods such as ["GET", "POST"] (leave it '
                           f"out: all methods), got {_shown(methods)}")
    retry: object = rule.retry_after
    seconds = isinstance(retry, int) and not isinstance(retry, bool) and retry >= 0
    if retry is not None and not seconds:
        if not isinstance(retry, str) or not retry:
            _refuse("retry_after", "must be seconds (an integer >= 0) or an HTTP date as "
                                   f"text, got {_shown(retry)}")
        problem = _header_problem(retry)
        if problem:
            _refuse("retry_after", f"is a header value, {_HEADER_TEXT}; {retry!r} {problem}")
    ctype = rule.content_type
    if not _is_text(ctype):
        _refuse("content_type", f"must be a media type as text, got {_shown(ctype)}")
    problem = _header_problem(ctype)
    if problem:
        _refuse("content_type", f"is a header value, {_HEADER_TEXT}; {ctype!r} {problem}")


def _refuse(name: str, what: str) -> NoReturn:
    detail = f"{name!r} {what}"
    raise FaultRuleError(f"fault rule: {detail}", field=name, detail=detail)


@dataclass(frozen=True)
class Fault:
    """One fault rule.

    Every field is checked when the rule is built: a value of the wrong type or out of range
    raises :class:`FaultRuleError` (a :class:`~cogseg_ml.errors.ValidationError`) naming the
    field and what it allows.

    Args:
        kind: see the module docstring.
        probability: chance per matching request, in [0, 1] (drawn from the injector's seeded
            stream).
        times: inject at most this many times, an integer >= 0 (``None``: no limit).
        methods: HTTP methods it applies to, any case (``None``: all).
        path_contains: only paths containing this text (``None``: all CDF paths).
        status: the status code for ``status`` and ``body`` faults, 200..599 (204 and 304
            carry no body: a ``status`` fault sends none, a ``body`` fault needs ``body=""``).
        retry_after: the ``Retry-After`` header value (seconds or an HTTP date), if any; an
            integer number of seconds is taken as its text.
        delay_s: seconds of delay for ``delay`` faults (>= 0).
        after: for ``drop``: handle the request before dropping the connection.
        message: the error message sent with ``status``/``job_fail``/``item_fail``.
        body, content_type: the raw response of a ``body`` fault (sent with ``status``);
            ``content_type`` is a header value (Latin-1, no control characters).
    """

    kind: FaultKind
    probability: float = 1.0
    times: int | None = None
    methods: frozenset[str] | None = None
    path_contains: str | None = None
    status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0
    after: bool = False
    message: str = "injected fault"
    body: str = ""
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        _check(self)
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        if self.retry_after is not None and not isinstance(self.retry_after, str):
            object.__setattr__(self, "retry_after", str(self.retry_after))

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to a request."""
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self.path_contains is None or self.path_contains in path

    @classmethod
    def from_dict(cls, data: object) -> Fault:
        """Build from JSON (``methods`` as a list).

        Raises:
            FaultRuleError: not an object, no or an unknown ``kind``, an unknown field, or a
                value of the wrong type or range; the message names the field and what it
                allows (a :class:`~cogseg_ml.errors.ValidationError`, so also a ValueError).
        """
        if not isinstance(data, dict):
            detail = ('a fault rule must be a JSON object such as {"kind": "status", "status": '
                      f"503}}, got {_shown(data)}")
            raise FaultRuleError(detail, field="kind", detail=detail)
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise FaultRuleError(
                f"unknown fault field(s) {', '.join(map(repr, unknown))}; the fields are "
                f"{', '.join(known)}", field=unknown[0])
        if "kind" not in data:
            _refuse("kind", f"is needed (one of {', '.join(FAULT_KINDS)})")
        return cls(**data)


def faults_from_data(data: object, source: str = "fault rules") -> list[Fault]:
    """The fault rules of parsed JSON: a list of rule objects (see :meth:`Fault.from_dict`).

    ``source`` names the data in messages (a path, ``--faults FILE``).

    Raises:
        FaultRuleError: a rule that cannot be used; the message names ``source``, the rule's
            index and kind, the field and what it allows (``rule`` and ``field`` say the same).
        ValidationError: ``data`` is not a list.
    """
    if not isinstance(data, list):
        raise ValidationError(f"{source} must hold a JSON list of fault rules, e.g. "
                              '[{"kind": "status", "status": 503, "probability": 0.1}], got '
                              f"{_shown(data)}")
    rules = []
    for i, item in enumerate(data):
        try:
            rules.append(Fault.from_dict(item))
        except FaultRuleError as exc:
            kind = item.get("kind") if isinstance(item, dict) else None
            which = f"rule {i} (kind {kind!r})" if isinstance(kind, str) else f"rule {i}"
            raise FaultRuleError(f"{source}: {which}: {exc.detail}", field=exc.field, rule=i,
                                 detail=exc.detail) from None
    return rules


def faults_from_json(text: str | bytes, source: str = "fault rules") -> list[Fault]:
    """The fault rules of a JSON document, read strictly (:func:`cogseg_ml.strict_json.loads`:
    no hostile nesting, huge integers, NaN or lone surrogates).

    Raises:
        ValidationError: not JSON, or a rule that cannot be used (:func:`faults_from_data`).
    """
    import cogseg_ml.strict_json as strict_json

    return faults_from_data(strict_json.loads(text, source), source)


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is an integer in 0..:data:`MAX_SEED`.

    Raises:
        ValidationError: otherwise, naming ``name`` and the range.
    """
    if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED:
        return seed
    raise ValidationError(f"{name} takes an integer in 0..{MAX_SEED}, got {_shown(seed)}")


@dataclass
class FaultInjector:
    """Draws faults for requests and jobs from one seeded stream (thread-safe)."""

    faults: tuple[Fault, ...] = ()
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _counts: list[int] = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.reset(self.faults, self.seed)

    def reset(self, faults: tuple[Fault, ...] | list[Fault], seed: int | None = None) -> None:
        """Replace the rules (and optionally the seed); counts start again."""
        with self._lock:
            self.faults = tuple(faults)
            if seed is not None:
                self.seed = seed
            self._rng = random.Random(self.seed)
            self._counts = [0] * len(self.faults)

    @property
    def injected(self) -> dict[str, int]:
        """How many times each kind has fired."""
        out: dict[str, int] = {}
        with self._lock:
            for f, n in zip(self.faults, self._counts, strict=True):
                out[f.kind] = out.get(f.kind, 0) + n
        return out

    def draw(self, kinds: frozenset[str] | set[str], method: str, path: str) -> list[Fault]:
        """The faults of ``kinds`` that fire for this request (one per kind), in rule order."""
        fired: list[Fault] = []
        with self._lock:
            for i, f in enumerate(self.faults):
                if f.kind not in kinds or not f.matches(method, path):
                    continue
                if f.times is not None and self._counts[i] >= f.times:
                    continue
                # Always draw, so one rule's outcome does not shift the others' stream; at most
                # one fault of each kind fires per request (the first rule that hits).
                hit = self._rng.random() < f.probability
                if hit and all(g.kind != f.kind for g in fired):
                    self._counts[i] += 1
                    fired.append(f)
        return fired

    def first(self, kind: str, method: str, path: str) -> Fault | None:
        """The first fault of one kind that fires, if any."""
        fired = self.draw({kind}, method, path)
        return fired[0] if fired else None
