"""Client configuration: where CDF is, how to authenticate, how hard to retry.

:class:`CdfConfig` is frozen and holds no live connection, so it pickles into DataLoader workers
(each builds its own client). Secrets are wrapped in :class:`Secret`, which prints as stars.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from cogseg_ml.errors import ValidationError

__all__ = [
    "CdfConfig",
    "ClientCredentials",
    "Credentials",
    "PollConfig",
    "RetryConfig",
    "Secret",
    "StaticToken",
    "TokenProvider",
]


class Secret:
    """A string that never shows itself in ``repr``/``str``; call :meth:`reveal` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str) or not value:
            raise ValidationError("a secret must be a non-empty string")
        self._value = value

    def reveal(self) -> str:
        """The secret itself. Pass it on; never log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


@dataclass(frozen=True)
class StaticToken:
    """A ready bearer token (for example from a notebook login); it is never refreshed."""

    token: Secret

    def __init__(self, token: str | Secret) -> None:
        object.__setattr__(self, "token", Secret(token) if isinstance(token, str) else token)


@dataclass(frozen=True)
class TokenProvider:
    """A callable returning a fresh bearer token; called again after a 401.

    The callable must be picklable (a module-level function) for DataLoader workers under spawn.
    """

    provider: Callable[[], str]


@dataclass(frozen=True)
class ClientCredentials:
    """OAuth 2.0 client credentials (RFC 6749 section 4.4) against the IdP's token URL.

    The token is cached and fetched again when less than ``leeway_s`` of its life remains, and
    once more after a 401.
    """

    token_url: str
    client_id: str
    client_secret: Secret
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    leeway_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.client_secret, str):
            object.__setattr__(self, "client_secret", Secret(self.client_secret))
        if not self.token_url.startswith(("https://", "http://")):
            raise ValidationError(f"token_url must be an http(s) URL, got {self.token_url!r}")
        if not self.client_id:
            raise ValidationError("client_id must not be empty")
        object.__setattr__(self, "scopes", tuple(self.scopes))


Credentials = StaticToken | TokenProvider | ClientCredentials


@dataclass(frozen=True)
class RetryConfig:
    """Retry budgets, and how the session recognizes outages, storms and stuck jobs (the
    per-call budget's defaults follow the official SDK).

    Attributes:
        max_attempts: attempts in all, the first included.
        max_backoff_s: cap of one wait (also caps an honoured Retry-After).
        total_timeout_s: stop retrying when this much time has passed since the first attempt.
        backoff_base_s: the full-jitter base: wait ~ uniform(0, min(cap, base * 2**n)).
        create_retry: ``"safe"`` retries a job-creating POST only where the request cannot have
            created a job (429, 503, connection never established); ``"always"`` also after
            502/504, read timeouts and dropped connections, accepting possible duplicate jobs.
        connect_attempts: the budget for failures to connect at all (refused, the name does
            not resolve, connect timeout): nothing is listening, so more attempts rarely help.
            When a call has spent it (or the session's calls together have seen this many
            such failures in a row), the session counts the host as unreachable.
        connect_backoff_s: the full-jitter base of the wait after a failure to connect.
        unreachable_cooldown_s: how long every request of the session fails at once after
            the host was found unreachable (or the credentials refused), before one is tried
            again. Any answer from the host ends the outage earlier.
        storm_failures: failed requests in a row, across all the session's calls to one
            service (CDF's Vision API, or the rest of CDF), that make a *storm*: 500/502/503/
            504 answers, timeouts, dropped answers, requests without an answer after
            ``stall_s``, with no good answer between and each within ``storm_window_s`` of
            now. A 429 whose Retry-After asks for a longer wait than ``max_backoff_s`` is a
            storm by itself. A storm is said in one WARNING (calls keep their retry budget);
            :class:`~cogseg_ml.backends.fallback.FallbackBackend` hands its queued and
            in-flight jobs to the local model at once instead. See
            :mod:`cogseg_ml.api.health`. The default, 4, is reached at once when several
            jobs are in flight, and within about 3.5 s (its waits: at most 0.5, 1 and 2 s)
            when one call is all there is, while scattered failures rarely line up four in
            a row (with one request in twenty failing, about once in 160,000 requests).
        storm_window_s: failures older than this no longer count towards a storm.
        stall_s: a request to CDF's Vision API (a job's creation or poll, answered in well
            under a second when all is well) still unanswered after this long counts as a
            failed request for the storm, so that a server that stopped answering is
            recognized in seconds rather than after the request timeout
            (``CdfConfig.timeout_s``, 60 s); the request itself keeps waiting. For the token
            endpoint it only brings a WARNING saying what the session waits for.
        token_attempts: failed token requests in a row (5xx, 429, dropped or timed-out
            answers), across the session's calls, after which the token endpoint counts as
            unavailable: every request of the session then fails at once with
            :class:`~cogseg_ml.errors.CdfUnreachableError` for ``unreachable_cooldown_s``.
            The first failure is said at once in a WARNING. With the default backoff the
            budget is spent within about 8 s plus the requests' own time (the waits between
            token requests are those of the calls that need the token: at most 0.5, 1, 2
            and 4 s). Connection failures keep the smaller ``connect_attempts`` budget.
        job_timeout_s: how long a segmentation job may take from its creation until it is
            ``Completed`` or ``Failed`` when the caller gives no timeout (``segment``,
            ``wait``, ``segment_many``, the API backend, ``cogseg label``); then its item
            fails with :class:`~cogseg_ml.errors.JobTimeoutError`. ``None`` waits as long as
            it takes. The default, 900 s (15 minutes), is far beyond a healthy job (seconds,
            a few minutes when the project's jobs queue behind each other) yet bounds a job
            stuck ``Queued`` or ``Running``, which would otherwise hold a run forever.
    """

    max_attempts: int = 10
    max_backoff_s: float = 60.0
    total_timeout_s: float = 300.0
    backoff_base_s: float = 0.5
    create_retry: Literal["safe", "always"] = "safe"
    connect_attempts: int = 3
    connect_backoff_s: float = 0.25
    unreachable_cooldown_s: float = 10.0
    storm_failures: int = 4
    storm_window_s: float = 10.0
    stall_s: float = 3.0
    token_attempts: int = 5
    job_timeout_s: float | None = 900.0

    def __post_init__(self) -> None:
        for name in ("max_attempts", "connect_attempts", "storm_failures", "token_attempts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValidationError(f"RetryConfig.{name} must be an integer >= 1, got {v!r}")
        for name in ("max_backoff_s", "total_timeout_s", "backoff_base_s", "connect_backoff_s",
                     "unreachable_cooldown_s", "storm_window_s"):
            v = getattr(self, name)
            if not (_is_number(v) and math.isfinite(v) and v >= 0):
                raise ValidationError(f"RetryConfig.{name} must be a finite number >= 0")
        for name, none_ok in (("stall_s", False), ("job_timeout_s", True)):
            v = getattr(self, name)
            if none_ok and v is None:
                continue
            if not (_is_number(v) and math.isfinite(v) and v > 0):
                what = " or None (no limit)" if none_ok else ""
                raise ValidationError(f"RetryConfig.{name} must be a finite number of seconds "
                                      f"> 0{what}, got {v!r}")


@dataclass(frozen=True)
class PollConfig:
    """Adaptive polling of job status.

    The first poll of a job comes after the typical job duration seen so far (``initial_s``
    until a job has completed); later polls back off by ``growth`` up to ``max_interval_s``.
    """

    initial_s: float = 0.25
    min_interval_s: float = 0.05
    max_interval_s: float = 5.0
    growth: float = 1.6


@dataclass(frozen=True)
class CdfConfig:
    """Everything a client needs to talk to one CDF project.

    Args:
        project: the CDF project name.
        base_url: e.g. ``https://westeurope-1.cognitedata.com`` (or give ``cluster``).
        credentials: a :class:`StaticToken`, :class:`TokenProvider` or :class:`ClientCredentials`.
        cdf_version: the ``cdf-version`` header for the beta vision endpoints.
        client_name: sent as ``x-cdp-app``.
        timeout_s: per-request timeout; ``file_timeout_s`` for downloads.
        connect_timeout_s: how long one attempt to connect may take (capped by the
            request's timeout): an address where nothing answers is given up on in seconds.
        max_connections: pooled connections per client, and HTTP requests in flight at once
            (jobs in flight are set apart by ``segment_many(concurrency=...)``). 16 measured
            best against the local emulator; httpcore's pool does work per connection on
            every request, so more connections cost CPU without adding throughput.
        retry: :class:`RetryConfig`; poll: :class:`PollConfig`.
        verify_tls: TLS certificate verification; turn off only explicitly (never by default).
        max_response_bytes: an API answer larger than this is refused as it streams in.
        allow_insecure_http: accept a plain ``http://`` ``base_url`` or token URL to a host
            other than this machine (loopback). Off by default: the bearer token and the client
            secret would travel in clear text. ``from_env`` sets it from
            ``COGSEG_ALLOW_INSECURE_HTTP=1``.

    Raises:
        ValidationError: a URL that is not a plain cluster URL, plain HTTP to another host
            without ``allow_insecure_http``, a timeout that is not a positive finite number.
    """

    project: str
    base_url: str
    credentials: Credentials
    cdf_version: str = "beta"
    client_name: str = "cogseg-ml"
    timeout_s: float = 60.0
    file_timeout_s: float = 600.0
    max_connections: int = 16
    retry: RetryConfig = field(default_factory=RetryConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    verify_tls: bool = True
    max_response_bytes: int = 64 * 1024 * 1024
    connect_timeout_s: float = 10.0
    allow_insecure_http: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.project, str) or not self.project or "/" in self.project:
            raise ValidationError(f"project must be a non-empty name without '/', got "
                                  f"{self.project!r}")
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("https://",
                                                                               "http://")):
            raise ValidationError(f"base_url must be an http(s) URL, got "
                                  f"{_shown(str(self.base_url))!r}")
        _check_cluster_url(self.base_url)
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not isinstance(self.credentials, (StaticToken, TokenProvider, ClientCredentials)):
            raise ValidationError("credentials must be StaticToken, TokenProvider or "
                                  "ClientCredentials")
        if not self.allow_insecure_http:
            _refuse_plain_http(self.base_url, "base_url", "the bearer token")
            if isinstance(self.credentials, ClientCredentials):
                _refuse_plain_http(self.credentials.token_url, "token_url",
                                   "the client secret")
        for name in ("timeout_s", "file_timeout_s", "connect_timeout_s"):
            v = getattr(self, name)
            if not (_is_number(v) and math.isfinite(v) and v > 0):
                raise ValidationError(f"CdfConfig.{name} must be a finite number of seconds "
                                      f"> 0, got {v!r}")

    @classmethod
    def for_cluster(cls, cluster: str, project: str, credentials: Credentials) -> CdfConfig:
        """Config for ``https://{cluster}.cognitedata.com``."""
        return cls(project=project, base_url=f"https://{cluster}.cognitedata.com",
                   credentials=credentials)

    @property
    def api_root(self) -> str:
        """``{base_url}/api/v1/projects/{project}``."""
        return f"{self.base_url}/api/v1/projects/{self.project}"

    def with_options(self, **changes: object) -> CdfConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CdfConfig:
        """Read the variable names common CDF tooling uses.

        ``COGNITE_PROJECT`` and ``COGNITE_BASE_URL`` (or ``COGNITE_CLUSTER``) are required, plus
        either ``COGNITE_TOKEN`` (a ready token) or client credentials: ``COGNITE_CLIENT_ID``,
        ``COGNITE_CLIENT_SECRET``, ``COGNITE_TOKEN_URL`` and optional ``COGNITE_TOKEN_SCOPES``
        (comma or space separated; default ``{base_url}/.default``) and ``COGNITE_AUDIENCE``.
        ``COGSEG_ALLOW_INSECURE_HTTP=1`` allows plain-HTTP URLs to other hosts (see
        ``allow_insecure_http``). ``COGSEG_POLL_MAX_S`` sets the longest poll interval
        (``PollConfig.max_interval_s``, seconds, at least ``min_interval_s``): the default
        suits CDF; one's own ``cogseg serve`` answers a poll in about a millisecond, and 0.5
        has each result in hand within half a second of being done.

        Raises:
            ValidationError: naming the variables that are missing, or a
                ``COGSEG_POLL_MAX_S`` that is not a number of seconds.
        """
        import os

        env = os.environ if environ is None else environ
        project = env.get("COGNITE_PROJECT", "")
        base_url = env.get("COGNITE_BASE_URL", "")
        if not base_url and env.get("COGNITE_CLUSTER"):
            base_url = f"https://{env['COGNITE_CLUSTER']}.cognitedata.com"
        missing = [n for n, v in (("COGNITE_PROJECT", project),
                                  ("COGNITE_BASE_URL", base_url)) if not v]
        credentials: Credentials | None = None
        if env.get("COGNITE_TOKEN"):
            credentials = StaticToken(env["COGNITE_TOKEN"])
        else:
            names = ("COGNITE_CLIENT_ID", "COGNITE_CLIENT_SECRET", "COGNITE_TOKEN_URL")
            absent = [n for n in names if not env.get(n)]
            if absent:
                missing.append("COGNITE_TOKEN or " + ", ".join(absent))
            else:
                raw = env.get("COGNITE_TOKEN_SCOPES", "")
                scopes = tuple(s for s in raw.replace(",", " ").split() if s) or (
                    f"{base_url.rstrip('/')}/.default",
                )
                credentials = ClientCredentials(
                    token_url=env["COGNITE_TOKEN_URL"],
                    client_id=env["COGNITE_CLIENT_ID"],
                    client_secret=Secret(env["COGNITE_CLIENT_SECRET"]),
                    scopes=scopes,
                    audience=env.get("COGNITE_AUDIENCE") or None,
                )
        if missing or credentials is None:
            raise ValidationError("CdfConfig.from_env: set " + "; ".join(missing))
        insecure = env.get("COGSEG_ALLOW_INSECURE_HTTP", "").strip().lower()
        return cls(project=project, base_url=base_url, credentials=credentials,
                   allow_insecure_http=insecure in ("1", "true", "yes", "on"),
                   poll=_poll_from_env(env.get("COGSEG_POLL_MAX_S", "")))


def _poll_from_env(raw: str) -> PollConfig:
    """The :class:`PollConfig` ``COGSEG_POLL_MAX_S`` asks for (blank: the default)."""
    default = PollConfig()
    if not raw.strip():
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < default.min_interval_s:
        raise ValidationError(f"COGSEG_POLL_MAX_S must be a number of seconds >= "
                              f"{default.min_interval_s} (the shortest poll interval), got "
                              f"{raw!r}")
    return replace(default, max_interval_s=seconds)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shown(url: str) -> str:
    """A URL fit for a message: any ``user:password@`` left out."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _check_cluster_url(url: str) -> None:
    """A base URL is the cluster's address alone: the client adds ``/api/v1/projects/...``."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValidationError(f"base_url {_shown(url)!r} has no host; pass the cluster URL, e.g. "
                              "https://westeurope-1.cognitedata.com")
    if "/api/v1" in parts.path.lower() or parts.query or parts.fragment:
        root = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        raise ValidationError(
            f"base_url must be only the cluster URL (e.g. https://westeurope-1.cognitedata.com),"
            f" got {_shown(url)!r}: pass base_url={root!r} and the project as project=...; "
            "the client adds /api/v1/projects/<project> itself")


def _is_this_machine(host: str) -> bool:
    """Loopback (127.0.0.0/8, ::1, localhost) or the unspecified address, which the OS
    connects to this machine."""
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _refuse_plain_http(url: str, name: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or _is_this_machine(parts.hostname or ""):
        return
    netloc = parts.netloc.rpartition("@")[2]
    raise ValidationError(
        f"{name} {_shown(url)!r} is plain HTTP to {parts.hostname}: {what} would travel in "
        f"clear text. Use https://{netloc}{parts.path}, or, on a network you trust, opt in with "
        "CdfConfig(..., allow_insecure_http=True) (from_env: COGSEG_ALLOW_INSECURE_HTTP=1)")
