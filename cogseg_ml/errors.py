"""The exception tree of cogseg_ml.

Every error the library raises on purpose derives from :class:`CogsegError`::

    CogsegError
    ├── ValidationError (also ValueError)      bad input, caught before any request is sent
    │   ├── PromptValidationError               a point, box or prompt set is malformed
    │   └── FileValidationError                 a file cannot be segmented (extension, mimeType)
    ├── ResponseValidationError                 the server answered with a body we cannot trust
    ├── ApiError                                the API answered with an error status
    │   ├── AuthenticationError                 401/403, or the token endpoint refused us
    │   ├── NotFoundError                       unknown ids (the body's ``missing`` list)
    │   └── RateLimitedError                    429 after the retry budget was spent
    ├── ApiUnavailableError                     cannot be reached, or keeps failing (5xx)
    ├── JobFailedError                          a segmentation job ended ``Failed``
    ├── JobTimeoutError                         a job did not finish within the caller's timeout
    ├── CacheError                              the mask cache cannot be used (version, corruption)
    │   └── CacheVersionError
    └── SampleError                             a dataset sample could not be loaded
        └── CacheMissError (also KeyError)      ``on_miss="raise"`` and masks are not cached

Errors carry the request id (``x-request-id``) where the server sent one, never a token or a
download URL, and they pickle (so they cross DataLoader worker boundaries intact).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "ApiUnavailableError",
    "AuthenticationError",
    "CacheError",
    "CacheMissError",
    "CacheVersionError",
    "CogsegError",
    "FileValidationError",
    "JobFailedError",
    "JobTimeoutError",
    "NotFoundError",
    "PromptValidationError",
    "RateLimitedError",
    "ResponseValidationError",
    "SampleError",
    "ValidationError",
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


class ValidationError(CogsegError, ValueError):
    """Input that cannot be sent as it is; the message names the field and what to fix."""


class PromptValidationError(ValidationError):
    """A point, box or prompt set is malformed (NaN, out of range, inverted, missing)."""


class FileValidationError(ValidationError):
    """A file cannot be segmented: wrong extension or mimeType, not uploaded, undecodable."""


class ResponseValidationError(CogsegError):
    """The server answered 2xx with a body that does not match the API reference."""


class ApiError(CogsegError):
    """The API answered with an error status.

    Attributes:
        status_code: the HTTP status.
        request_id: the ``x-request-id`` response header, if any.
        missing: ids the server reported as unknown (CDF's ``error.missing``).
        duplicated: ids the server reported as duplicated (CDF's ``error.duplicated``).
    """

    status_code: int
    request_id: str | None
    missing: list[Any]
    duplicated: list[Any]

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
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
        rid = f", request id {self.request_id}" if self.request_id else ""
        return f"{self.message} (HTTP {self.status_code}{rid})"


class AuthenticationError(ApiError):
    """The credentials were refused (401/403) or no token could be obtained."""


class NotFoundError(ApiError):
    """The server does not know one or more of the ids sent (see ``missing``)."""


class RateLimitedError(ApiError):
    """HTTP 429 persisted after the retry budget was spent."""


class ApiUnavailableError(CogsegError):
    """The service cannot be reached or keeps failing; the local fallback listens for this."""


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


class RunInterrupted(CogsegError):
    """A run was stopped by SIGINT or SIGTERM; everything finished before it is stored.

    Attributes:
        summary: one line saying what was done before the stop.
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
    """

    summary: str
    signal_name: str

    def __init__(self, message: str, *, summary: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message, summary=summary, signal_name=signal_name)
