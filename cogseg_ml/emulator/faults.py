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
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields
from typing import Literal, get_args

__all__ = ["FAULT_KINDS", "Fault", "FaultInjector", "FaultKind", "REQUEST_FAULT_KINDS"]

FaultKind = Literal["status", "drop", "delay", "job_fail", "item_fail", "token_expiry", "body"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
REQUEST_FAULT_KINDS: frozenset[str] = frozenset({"status", "drop", "delay", "body"})


@dataclass(frozen=True)
class Fault:
    """One fault rule.

    Args:
        kind: see the module docstring.
        probability: chance per matching request (drawn from the injector's seeded stream).
        times: inject at most this many times (``None``: no limit).
        methods: HTTP methods it applies to (``None``: all).
        path_contains: only paths containing this text (``None``: all CDF paths).
        status: the status code for ``status`` faults.
        retry_after: the ``Retry-After`` header value (seconds or an HTTP date), if any.
        delay_s: seconds of delay for ``delay`` faults.
        after: for ``drop``: handle the request before dropping the connection.
        message: the error message sent with ``status``/``job_fail``/``item_fail``.
        body, content_type: the raw response of a ``body`` fault (sent with ``status``).
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
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; the kinds are "
                             f"{', '.join(FAULT_KINDS)}")
        if not (isinstance(self.probability, (int, float))
                and 0.0 <= self.probability <= 1.0):
            raise ValueError(f"Fault.probability must be a number in [0, 1], got "
                             f"{self.probability!r}")
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to a request."""
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self.path_contains is None or self.path_contains in path

    @classmethod
    def from_dict(cls, data: object) -> Fault:
        """Build from JSON (``methods`` as a list).

        Raises:
            ValueError: not an object, no or an unknown ``kind``, an unknown field, or a bad
                value; the message names it and what is allowed.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a fault rule must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown fault field(s) {', '.join(map(repr, unknown))}; the "
                             f"fields are {', '.join(known)}")
        if "kind" not in data:
            raise ValueError(f"a fault rule needs a 'kind' (one of {', '.join(FAULT_KINDS)})")
        d = dict(data)
        methods = d.get("methods")
        if methods is not None:
            if not isinstance(methods, (list, tuple)):
                raise ValueError(f"'methods' must be a list of HTTP methods, got {methods!r}")
            d["methods"] = frozenset(str(m) for m in methods)
        return cls(**d)


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
