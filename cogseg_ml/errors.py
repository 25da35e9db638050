"""The exception tree of cogseg_ml.

Every error the library raises on purpose derives from :class:`CogsegError`::

    CogsegError
    ├── ValidationError (also ValueError)      bad input, caught before any request is sent
    │   ├── PromptValidationError               a point, box or prompt set is malformed
    │   ├── FileValidationError                 a file cannot be segmented (extension, mimeType)
    │   ├── ForeignOutputError                  an output path holds a file cogseg did not write
    │   └── SamCheckpointError                  a local SAM checkpoint cannot be used
    ├── ResponseValidationError                 the server answered with a body we cannot trust
    │   └── ResponseTooLarge                    the answer outgrew the byte limit
    ├── ApiError                                the API answered with an error status
    │   ├── AuthenticationError                 401/403, or no token could be had
    │   ├── NotFoundError                       unknown ids (the body's ``missing`` list)
    │   └── RateLimitedError                    429 after the retry budget was spent
    ├── ApiUnavailableError                     cannot be reached, or keeps failing (5xx)
    │   ├── CdfUnreachableError                 nothing answers at all (or the token endpoint
    │   │                                       keeps failing); detected once per session
    │   ├── ApiRetiredError                     CDF answers, but its segment endpoint is gone
    │   │                                       (the Vision API retired); remembered per session
    │   ├── ApiStormError                       it answers, but only with failures (5xx, time-
    │   │                                       outs, a long Retry-After) across the session
    │   └── TokenEndpointUnavailable            the IdP cannot be reached or answers 5xx/429
    ├── JobFailedError                          a segmentation job ended ``Failed``
    ├── JobTimeoutError                         a job did not finish within the caller's timeout
    ├── CacheError                              the mask cache cannot be used (version, corruption)
    │   └── CacheVersionError
    └── SampleError                             a dataset sample could not be loaded
        └── CacheMissError (also KeyError)      ``on_miss="raise"`` and masks are not cached

Errors carry the request id (``x-request-id``) where the server sent one, never a token or a
download URL, and they pickle (so they cross DataLoader worker boundaries intact).

Two markers are not errors of their own but steer the retry rule inside the client:
:class:`RequestNotSent` (the request never left, so it is safe to retry) and
:class:`RetryableStatus` (an HTTP status a retry may cure). Neither reaches the caller.
"""

from __future__ import annotations

import http
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

__all__ = [
    "LOCAL_ONLY_HINT",
    "VISION_RETIREMENT_DATE",
    "ApiError",
    "ApiRetiredError",
    "ApiStormError",
    "ApiUnavailableError",
    "AuthenticationError",
    "CacheError",
    "CacheMissError",
    "CacheVersionError",
    "CdfUnreachableError",
    "CogsegError",
    "DetectorCheckpointError",
    "FileValidationError",
    "ForeignOutputError",
    "JobFailedError",
    "JobTimeoutError",
    "NotFoundError",
    "PromptValidationError",
    "RateLimitedError",
    "RequestNotSent",
    "ResponseTooLarge",
    "ResponseValidationError",
    "RetryableStatus",
    "RunInterrupted",
    "SamCheckpointError",
    "SampleError",
    "TokenEndpointUnavailable",
    "ValidationError",
    "ends_the_run",
    "failure_reason",
    "status_text",
]


class CogsegError(Exception):
    """Root of every error raised on purpose by cogseg_ml."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self._context = dict(context)
        for key, value in context.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the message and keyword context: the default reduce passes only args.
        return (_rebuild, (type(self), self.message, self._context))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[CogsegError], message: str, context: dict[str, Any]) -> CogsegError:
    err = cls.__new__(cls)
    CogsegError.__init__(err, message, **context)
    return err


# --- markers for the retry rule (they never reach the caller) ----------------------------------

class RequestNotSent(Exception):
    """Marker for failures that happened before the request left (e.g. no token could be had)."""


class RetryableStatus(Exception):
    """An HTTP status that might be retried; carries what the final error needs.

    Attributes:
        response: the answer (its body already read).
        status_code: its status.
        retry_after_s: the server's ``Retry-After`` in seconds, if it sent one.
    """

    response: httpx.Response
    status_code: int
    retry_after_s: float | None

    def __init__(self, response: httpx.Response, retry_after_s: float | None) -> None:
        super().__init__(status_text(response.status_code))
        self.response = response
        self.status_code = response.status_code
        self.retry_after_s = retry_after_s


class ValidationError(CogsegError, ValueError):
    """Input that cannot be sent as it is; the message names the field and what to fix."""


class PromptValidationError(ValidationError):
    """A point, box or prompt set is malformed (NaN, out of range, inverted, missing)."""


class FileValidationError(ValidationError):
    """A file cannot be segmented: wrong extension or mimeType, not uploaded, undecodable."""


class SamCheckpointError(ValidationError):
    """A SAM checkpoint cannot be used: missing, not a SAM model, unreadable or incomplete.

    Attributes:
        path: the folder, file or hub id given.
    """

    path: str

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message, path=path)


class DetectorCheckpointError(ValidationError):
    """A text-to-box detector folder cannot be used: missing, not a detector, incomplete or
    unreadable.

    Attributes:
        path: the folder given.
    """

    path: str

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message, path=path)


class ForeignOutputError(ValidationError):
    """An output path holds something cogseg did not write (a user's file, another tool's COCO
    file, an empty file, a folder, a link): it is never replaced, and is left as it was.

    Attributes:
        path: the output path given.
        reason: why it is not a file cogseg wrote (e.g. "it is not a regular file").
    """

    path: str
    reason: str

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message, path=path, reason=reason)


class ResponseValidationError(CogsegError):
    """The server answered 2xx with a body that does not match the API reference."""


def status_text(code: int | None) -> str:
    """``"404 Not Found"`` for a known status, the bare number otherwise (``""`` for none)."""
    if code is None:
        return ""
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


class ResponseTooLarge(ResponseValidationError):
    """The answer outgrew the call's byte limit while streaming in."""


class ApiError(CogsegError):
    """The API answered with an error status.

    Attributes:
        status_code: the HTTP status (``None`` when no answer was involved, e.g. a token
            provider that failed).
        request_id: the ``x-request-id`` response header, if any.
        missing: ids the server reported as unknown (CDF's ``error.missing``).
        duplicated: ids the server reported as duplicated (CDF's ``error.duplicated``).
    """

    status_code: int | None
    request_id: str | None
    missing: list[Any]
    duplicated: list[Any]

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        missing: list[Any] | None = None,
        duplicated: list[Any] | None = None,
        **context: Any,
    ) -> None:
        super().__init__(
            message,
            status_code=status_code,
            request_id=request_id,
            missing=list(missing or []),
            duplicated=list(duplicated or []),
            **context,
        )

    def __str__(self) -> str:
        parts = [p for p in (status_text(self.status_code),
                             f"request id {self.request_id}" if self.request_id else "") if p]
        return f"{self.message} ({', '.join(parts)})" if parts else self.message


class AuthenticationError(ApiError):
    """The credentials were refused (401/403) or no token could be obtained.

    The message says which credential (the static token, the token provider, or the client
    id and its secret); never the secret itself.

    Attributes:
        session_wide: ``True`` once the session stopped trying these credentials (each of its
            requests fails with this error for the cool-down): a run should stop and say so,
            not report every item.
    """

    session_wide: bool = False


class NotFoundError(ApiError):
    """The server does not know one or more of the ids sent (see ``missing``)."""


class RateLimitedError(ApiError):
    """HTTP 429 persisted after the retry budget was spent."""


class ApiUnavailableError(CogsegError):
    """The service cannot be reached or keeps failing; the local fallback listens for this."""


class CdfUnreachableError(ApiUnavailableError):
    """CDF (or its token endpoint) cannot be used at all: nothing listens at the address, the
    name does not resolve, connecting timed out, or the token endpoint kept failing.

    A session recognizes this once; until CDF answers again (or a short cool-down passes)
    every request of the session fails at once with this error instead of spending its own
    retry budget. A run can stop on it (see :attr:`since`).

    Attributes:
        host: ``host:port`` that could not be used.
        service: what lives there (``"CDF"`` or ``"the token endpoint"``).
        since: when the session recognized the outage (seconds since the epoch).
        reason: why, in a few words (e.g. ``"ConnectError: [Errno 111] Connection refused"``).
    """

    host: str
    service: str
    since: float
    reason: str

    def __init__(self, message: str, *, host: str, service: str, since: float, reason: str,
                 **context: Any) -> None:
        super().__init__(message, host=host, service=service, since=since, reason=reason,
                         **context)


class ApiStormError(ApiUnavailableError):
    """A service answers, but only with failures: a session saw ``failures`` requests in a row
    fail (500/502/503/504, timeouts, dropped or unanswered requests) across all its jobs, or a
    429 whose Retry-After is longer than a call would wait. A job handed over because of it
    goes to the local model at once under
    :class:`~cogseg_ml.backends.fallback.FallbackBackend`.

    Attributes:
        service: what storms (e.g. ``"CDF's Vision API"``).
        host: ``host:port``.
        failures: failed requests in a row.
        reason: e.g. ``"503 Service Unavailable x4"``.
        since: when the session recognized the storm (seconds since the epoch).
        status_code: the last failing status, if any.
    """

    storm = True
    service: str
    host: str
    failures: int
    reason: str
    since: float
    status_code: int | None

    def __init__(self, message: str, *, service: str, host: str, failures: int, reason: str,
                 since: float, status_code: int | None = None, **context: Any) -> None:
        super().__init__(message, service=service, host=host, failures=failures,
                         reason=reason, since=since, status_code=status_code, **context)


#: The date Cognite's SDKs give for the Vision API's retirement (it holds the segment endpoint).
VISION_RETIREMENT_DATE = "2027-02-17"
#: How to get masks without the Vision API (said wherever its retirement is reported).
LOCAL_ONLY_HINT = ("masks now come from a local model only: `cogseg label ... --backend local "
                   "--model DIR`, or LocalSamBackend.from_pretrained(DIR) as the backend in "
                   "Python (DIR: a SAM 2.1 checkpoint folder in transformers' format, e.g. from "
                   "`hf download facebook/sam2.1-hiera-tiny --local-dir DIR`; the 'sam2' extra); "
                   "images are still read from CDF files")


class ApiRetiredError(ApiUnavailableError):
    """CDF answers, but its segment endpoint is gone: the Vision API appears retired.

    Raised when ``POST /context/vision/segment`` (or ``GET .../segment/{jobId}``, once
    confirmed) answers 404 or 410 for the route itself, not CDF's error about unknown files or
    jobs (that one lists them in ``missing``). Cognite's SDKs mark the Vision API deprecated,
    with retirement date :data:`VISION_RETIREMENT_DATE`. A session recognizes it once; from
    then on its segmentation calls fail at once with it, without being sent (files and
    annotations keep working). :class:`~cogseg_ml.backends.fallback.FallbackBackend` switches
    to its local model for good on it. The message says how to run local-only.

    Attributes:
        host: ``host:port`` of CDF.
        reason: what was answered (e.g. ``"POST /context/vision/segment answered 404 Not
            Found"``).
        since: when the session recognized it (seconds since the epoch).
        status_code: 404 or 410.
        request_id: the ``x-request-id`` of that answer, if any.
    """

    host: str
    reason: str
    since: float
    status_code: int
    request_id: str | None

    def __init__(self, message: str, *, host: str, reason: str, since: float, status_code: int,
                 request_id: str | None = None, **context: Any) -> None:
        super().__init__(message, host=host, reason=reason, since=since,
                         status_code=status_code, request_id=request_id, **context)


class TokenEndpointUnavailable(ApiUnavailableError, RequestNotSent):
    """The IdP could not be reached or answered 5xx/429 (the CDF request was not sent).

    Attributes:
        host: ``host:port`` of the token URL.
        reason: what happened, in a few words (e.g. ``"answered 503 Service Unavailable"``).
        unreachable: no connection could be made at all (refused, DNS, connect timeout).
        status_code: the IdP's status, when it answered.
    """

    host: str
    reason: str
    unreachable: bool
    status_code: int | None

    def __init__(self, message: str, *, host: str, reason: str = "", unreachable: bool = False,
                 status_code: int | None = None, **context: Any) -> None:
        super().__init__(message, host=host, reason=reason or message, unreachable=unreachable,
                         status_code=status_code, **context)


class JobFailedError(CogsegError):
    """A segmentation job ended with status ``Failed``.

    Attributes:
        job_id: the CDF job id.
        server_message: the job's ``errorMessage`` (or the failed items' messages).
    """

    job_id: int
    server_message: str | None

    def __init__(self, message: str, *, job_id: int, server_message: str | None = None) -> None:
        super().__init__(message, job_id=job_id, server_message=server_message)


class JobTimeoutError(CogsegError):
    """A job did not reach a terminal status within the caller's timeout.

    Attributes:
        job_id: the CDF job id.
        last_status: the last status seen (``Queued`` or ``Running``).
    """

    job_id: int
    last_status: str

    def __init__(self, message: str, *, job_id: int, last_status: str) -> None:
        super().__init__(message, job_id=job_id, last_status=last_status)


class CacheError(CogsegError):
    """The mask cache cannot be opened or used."""


class CacheVersionError(CacheError):
    """The cache file was written by another schema version."""


class SampleError(CogsegError):
    """A sample could not be loaded; the message names the sample, the file and why."""


class CacheMissError(SampleError, KeyError):
    """``on_miss="raise"`` and a sample's masks are not in the cache."""

    def __str__(self) -> str:  # KeyError would print the repr
        return self.message


class RunInterrupted(KeyboardInterrupt):
    """A run was stopped by SIGINT or SIGTERM; everything finished before it is stored.

    A :class:`KeyboardInterrupt` (so ``except Exception`` does not swallow a stop the user
    asked for), carrying what was done. Not a :class:`CogsegError` for the same reason.

    Attributes:
        message: what happened and how to resume.
        summary: what was done before the stop (the run's report summary).
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
    """

    def __init__(self, message: str, *, summary: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.message = message
        self.summary = summary
        self.signal_name = signal_name

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_interrupted, (self.message, self.summary, self.signal_name))


def _rebuild_interrupted(message: str, summary: str, signal_name: str) -> RunInterrupted:
    return RunInterrupted(message, summary=summary, signal_name=signal_name)


def failure_reason(exc: BaseException) -> str:
    """An item's failure as reports and result rows give it: ``"Type: message"`` (the message
    cut at 200 characters)."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def ends_the_run(error: object) -> bool:
    """Whether an item's error means no item can succeed: CDF (or its token endpoint) is
    unreachable, the Vision API is retired, or the session stopped trying refused
    credentials. A run stops on it (the finished work is stored) instead of reporting every
    item; a re-run resumes."""
    return isinstance(error, (CdfUnreachableError, ApiRetiredError)) or (
        isinstance(error, AuthenticationError) and error.session_wide)
