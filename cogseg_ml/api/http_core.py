"""Shared request building and response handling for the sync and async clients.

The clients add only I/O: each call is described by a :class:`Call`, sent through tenacity with
the retry rule of :mod:`cogseg_ml.api.retry_policy`, and its response is turned into a model or
a typed error here. This is the one place responses become exceptions.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from tenacity import RetryCallState

from cogseg_ml.api.auth import host_of, provider_name
from cogseg_ml.api.retry_policy import CallKind, parse_retry_after
from cogseg_ml.api.wire_schema import (
    FileIdentifier,
    InstanceIdWire,
    SegmentBoundingBox,
    SegmentFileRef,
    SegmentJobCreateRequest,
    SegmentPoint,
)
from cogseg_ml.config import CdfConfig, ClientCredentials, StaticToken, TokenProvider
from cogseg_ml.errors import (
    LOCAL_ONLY_HINT,
    VISION_RETIREMENT_DATE,
    ApiError,
    ApiRetiredError,
    ApiUnavailableError,
    AuthenticationError,
    CogsegError,
    NotFoundError,
    RateLimitedError,
    ResponseTooLarge,
    ResponseValidationError,
    RetryableStatus,
    ValidationError,
    status_text,
)
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.version import __version__

__all__ = ["Call", "ClientCore", "ResponseTooLarge"]

_log = logging.getLogger("cogseg_ml.api")
ModelT = TypeVar("ModelT", bound=BaseModel)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# How a retired endpoint answers is not in the API reference: it documents no retirement
# response, only the error body of section 4 ({"error": {"code", "message", "missing"?}}) and
# that unknown ids are listed in ``missing`` (400/404/422). Nor does it say how an unknown or
# expired jobId is answered ("400 or 404" is all it expects). So: 404 or 410 *without*
# ``missing`` from the segment route means the route is gone. For POST (no id in the path,
# unknown files come back in ``missing``) and for 410 (Gone) that is taken as it is. A GET of
# one job answered 404 without ``missing`` might be a job CDF no longer knows, so it is
# confirmed first with a POST the live route must refuse as malformed (no items: no job can be
# created); only a 404/410 to that one means retired.
ROUTE_GONE_STATUSES = frozenset({404, 410})


@dataclass(frozen=True)
class Call:
    """One HTTP call: what to send and how it may be retried.

    ``label`` is what logs and errors show: never a download URL (it is a credential).
    """

    method: str
    url: str
    kind: CallKind
    label: str
    json: Any = None
    params: dict[str, str] | None = None
    beta: bool = False
    authenticated: bool = True
    timeout_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    max_bytes: int | None = None  # refused past this while streaming; None: the config's
    attempts: int | None = None  # None: the config's retry budget; 1: a single try (probes)
    segment_route: bool = False  # a call to the Vision API's segment endpoint


def _snippet(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def file_identifier(ref: FileRef) -> FileIdentifier:
    """The Files API form of a reference."""
    inst = (InstanceIdWire(space=ref.instance_id.space, external_id=ref.instance_id.external_id)
            if ref.instance_id else None)
    return FileIdentifier(id=ref.id, external_id=ref.external_id, instance_id=inst)


def segment_file_ref(ref: FileRef) -> SegmentFileRef:
    """The segment-job form of a reference."""
    inst = (InstanceIdWire(space=ref.instance_id.space, external_id=ref.instance_id.external_id)
            if ref.instance_id else None)
    return SegmentFileRef(file_id=ref.id, file_external_id=ref.external_id, file_instance_id=inst)


class ClientCore:
    """Request building, error mapping and parsing shared by both clients."""

    def __init__(self, config: CdfConfig) -> None:
        if not isinstance(config, CdfConfig):
            raise ValidationError("config must be a CdfConfig")
        self.config = config
        self._base_headers = {
            "x-cdp-app": config.client_name,
            "user-agent": f"cogseg-ml/{__version__}",
            "accept": "application/json",
        }
        self._origin = urlsplit(config.base_url)[:2]
        self.host = host_of(config.base_url)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(project={self.config.project!r}, "
                f"base_url={self.config.base_url!r})")

    # --- calls ---------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.config.api_root}{path}"

    def segment_create_call(self, file: FileRef, prompt: Prompt) -> Call:
        """``POST /context/vision/segment`` for one file and one prompt set."""
        body = SegmentJobCreateRequest(
            items=[segment_file_ref(file)],
            points=[SegmentPoint(x=p.x, y=p.y, label=p.label) for p in prompt.points],  # type: ignore[arg-type]
            bounding_box=(SegmentBoundingBox(x_min=prompt.box.x_min, y_min=prompt.box.y_min,
                                             x_max=prompt.box.x_max, y_max=prompt.box.y_max)
                          if prompt.box else None),
        )
        wire = body.to_wire()
        wire.setdefault("points", [])  # required by the schema: always sent, maybe empty
        return Call("POST", self._url("/context/vision/segment"), "create",
                    "POST /context/vision/segment", json=wire, beta=True, segment_route=True)

    def segment_route_check_call(self) -> Call:
        """A ``POST /context/vision/segment`` that a live route refuses as malformed (no items,
        so no job is created): asks whether the route exists at all (one attempt)."""
        return Call("POST", self._url("/context/vision/segment"), "read",
                    "POST /context/vision/segment (route check, no items)",
                    json={"items": [], "points": []}, beta=True, attempts=1,
                    segment_route=True)

    def segment_retrieve_call(self, job_id: int) -> Call:
        """``GET /context/vision/segment/{jobId}``."""
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
            raise ValidationError(f"job_id must be a non-negative integer, got {job_id!r}")
        return Call("GET", self._url(f"/context/vision/segment/{job_id}"), "read",
                    f"GET /context/vision/segment/{job_id}", beta=True, segment_route=True)

    def byids_call(self, refs: Iterable[FileRef], *, ignore_unknown: bool) -> Call:
        """``POST /files/byids``."""
        items = [file_identifier(r).to_wire() for r in refs]
        return Call("POST", self._url("/files/byids"), "read", "POST /files/byids",
                    json={"items": items, "ignoreUnknownIds": ignore_unknown})

    def downloadlink_call(self, ref: FileRef) -> Call:
        """``POST /files/downloadlink`` for one file."""
        return Call("POST", self._url("/files/downloadlink"), "read", "POST /files/downloadlink",
                    json={"items": [file_identifier(ref).to_wire()]})

    def download_call(self, url: str, max_bytes: int) -> Call:
        """``GET`` a download URL; the bearer token goes only to CDF's own origin.

        The URL is a short-lived credential: it is never logged (see :func:`redact_url`).
        """
        same_origin = urlsplit(url)[:2] == self._origin
        redact_url(url)
        return Call("GET", url, "read", "GET <download link>", authenticated=same_origin,
                    timeout_s=self.config.file_timeout_s, headers={"accept": "*/*"},
                    max_bytes=max_bytes)

    def annotations_list_call(self, flt: dict[str, Any], limit: int, cursor: str | None) -> Call:
        """``POST /annotations/list``."""
        body: dict[str, Any] = {"filter": flt, "limit": limit}
        if cursor:
            body["cursor"] = cursor
        return Call("POST", self._url("/annotations/list"), "read", "POST /annotations/list",
                    json=body)

    def annotations_create_call(self, items: list[dict[str, Any]]) -> Call:
        """``POST /annotations`` (a create: not retried blindly)."""
        return Call("POST", self._url("/annotations"), "create", "POST /annotations",
                    json={"items": items})

    def limit(self, call: Call) -> Call:
        """The call with the config's response-size limit, unless it sets its own."""
        if call.max_bytes is not None:
            return call
        return dataclasses.replace(call, max_bytes=self.config.max_response_bytes)

    def headers_for(self, call: Call) -> dict[str, str]:
        """Headers of a call (the bearer token is added by the auth flow)."""
        headers = dict(self._base_headers)
        if call.beta:
            headers["cdf-version"] = self.config.cdf_version
        headers.update(call.headers)
        return headers

    # --- responses -----------------------------------------------------------------------------
    @staticmethod
    def raise_for_retry(response: httpx.Response) -> None:
        """Raise :class:`RetryableStatus` where a retry may cure it, else a typed error."""
        if response.status_code in RETRY_STATUSES:
            raise RetryableStatus(response, parse_retry_after(response.headers.get("retry-after")))
        if response.status_code >= 400:
            raise error_from_response(response)

    @staticmethod
    def parse(response: httpx.Response, model: type[ModelT], call: Call) -> ModelT:
        """Validate a 2xx JSON body; :class:`ResponseValidationError` naming the problem."""
        rid = response.headers.get("x-request-id")
        try:
            return model.model_validate_json(response.content)
        except PydanticValidationError as exc:
            errs = exc.errors()
            if errs and errs[0]["type"] == "json_invalid":
                what = (f"a body that is not JSON ({_snippet(response.text)!r})"
                        if response.content else "an empty body")
                msg = f"{call.label} answered {status_text(response.status_code)} with {what}"
            else:
                parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                         for e in errs[:3]]
                msg = (f"{call.label} answered with a body that does not match the API "
                       f"reference: {'; '.join(parts)}")
            raise ResponseValidationError(msg, request_id=rid) from None

    @staticmethod
    def final_error(exc: BaseException, call: Call) -> CogsegError:
        """The typed error for a failure the retries did not cure."""
        if isinstance(exc, CogsegError):
            return exc
        if isinstance(exc, RetryableStatus):
            err = error_from_response(exc.response)
            if isinstance(err, RateLimitedError):
                return err
            return ApiUnavailableError(
                f"{call.label} keeps failing: {err}", status_code=exc.status_code,
                request_id=exc.response.headers.get("x-request-id"))
        if isinstance(exc, httpx.TransportError):
            return ApiUnavailableError(
                f"{call.label} failed: {type(exc).__name__} ({_transport_reason(exc)})",
                status_code=None, request_id=None)
        return ApiUnavailableError(f"{call.label} failed: {type(exc).__name__}",
                                   status_code=None, request_id=None)

    @staticmethod
    def route_gone(error: CogsegError, call: Call) -> bool | None:
        """Whether an error of a segment-route call says the route itself is gone.

        ``True``: gone (POST, or 410); ``None``: a GET answered 404 without ``missing``, which
        needs the route check (:meth:`segment_route_check_call`); ``False``: anything else,
        e.g. CDF's 4xx about unknown files or jobs (it lists them in ``missing``).
        """
        if (not call.segment_route or not isinstance(error, ApiError)
                or error.status_code not in ROUTE_GONE_STATUSES or error.missing):
            return False
        if call.method == "GET" and error.status_code == 404:
            return None
        return True

    def retired_error(self, error: ApiError, call: Call) -> ApiRetiredError:
        """The :class:`ApiRetiredError` for a segment call answered 404/410 for the route."""
        reason = f"{call.label} answered {status_text(error.status_code)}"
        server = error.message.removeprefix("not found: ")
        if server and server != (http_phrase(error.status_code) or ""):
            reason += f" ({_snippet(server, 100)})"
        return ApiRetiredError(
            f"{reason}: CDF at {self.host} answers, but its Vision API (context/vision, which "
            f"holds the segment endpoint; deprecated, retirement date {VISION_RETIREMENT_DATE} "
            f"per Cognite's SDKs) appears retired; {LOCAL_ONLY_HINT}",
            host=self.host, reason=reason, since=time.time(),
            status_code=int(error.status_code or 0), request_id=error.request_id)

    def is_api(self, call: Call) -> bool:
        """Whether the call goes to the project's API (not to a download link)."""
        return call.url.startswith(self.config.api_root + "/")

    def credential_label(self) -> str:
        """Which credential the requests carry, for messages (never the secret)."""
        creds = self.config.credentials
        if isinstance(creds, StaticToken):
            return "the static bearer token (StaticToken, e.g. from COGNITE_TOKEN)"
        if isinstance(creds, TokenProvider):
            return f"the token from the token provider {provider_name(creds)}"
        assert isinstance(creds, ClientCredentials)
        return (f"the access token issued to client id {creds.client_id!r} by "
                f"{host_of(creds.token_url)}")

    def refused(self, response: httpx.Response, call: Call) -> AuthenticationError:
        """The error for CDF answering 401/403 to an API call: which credential, and why."""
        err = error_from_response(response)
        server = err.message.removeprefix("not authorized: ")
        creds = self.config.credentials
        if response.status_code == 401:
            if isinstance(creds, StaticToken):
                again, hint = "", "get a new token"
            elif isinstance(creds, TokenProvider):
                again, hint = ", also a fresh one", "check what the token provider returns"
            else:
                again = ", also a freshly fetched one"
                hint = (f"check the scopes or audience (the token must be for "
                        f"{self.config.base_url}) and the client's access to the project")
            msg = f"CDF at {self.host} refused {self.credential_label()}{again}: {server}; {hint}"
        else:
            msg = (f"CDF at {self.host} denied {self.credential_label()} access to "
                   f"{call.label} in project {self.config.project!r}: {server}; the identity "
                   "lacks this capability or access to the project")
        return AuthenticationError(msg, status_code=response.status_code,
                                   request_id=response.headers.get("x-request-id"))

    @staticmethod
    def log_retry(call: Call) -> Any:
        """A tenacity ``before_sleep`` hook that logs the call's label, never its headers."""

        def hook(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            _log.debug("retrying %s after %s (attempt %d, waiting %.2f s)", call.label,
                       exc, state.attempt_number, wait)

        return hook


class LimitedBody:
    """Collects a streamed body, refusing more than ``call.max_bytes`` as it arrives."""

    def __init__(self, call: Call) -> None:
        if call.max_bytes is None:
            raise ValueError("LimitedBody needs a call with max_bytes set (see ClientCore.limit)")
        self.call = call
        self.limit = call.max_bytes
        self.buf = bytearray()

    def add(self, chunk: bytes) -> None:
        """Append a chunk; raises :class:`ResponseTooLarge` past the limit."""
        self.buf += chunk
        if len(self.buf) > self.limit:
            raise ResponseTooLarge(f"{self.call.label} answered more than "
                                   f"{self.limit} bytes; refused (raise the limit if "
                                   "this is expected)")


def limited_body(chunks: Iterable[bytes], call: Call) -> bytes:
    """Join response chunks, refusing more than ``call.max_bytes``."""
    body = LimitedBody(call)
    for chunk in chunks:
        body.add(chunk)
    return bytes(body.buf)


def rebuilt(resp: httpx.Response, body: bytes) -> httpx.Response:
    """A complete response from a streamed one (the body already decoded)."""
    headers = [(k, v) for k, v in resp.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(resp.status_code, headers=headers, content=body,
                          request=resp.request)


# --- keeping download links out of logs -----------------------------------------------------

_SECRET_URLS: deque[str] = deque(maxlen=2048)


def redact_url(url: str) -> None:
    """Remember a URL that must never appear in a log record (httpx logs every request)."""
    if url not in _SECRET_URLS:
        _SECRET_URLS.append(url)


class _RedactUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRET_URLS and record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            cleaned = []
            for a in args:
                text = str(a)
                if any(u in text for u in _SECRET_URLS):
                    for u in _SECRET_URLS:
                        text = text.replace(u, "<download link>")
                    a = text
                cleaned.append(a)
            record.args = tuple(cleaned)
        return True


for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_RedactUrls())


def http_phrase(code: int | None) -> str | None:
    """The standard phrase of a status (``"Not Found"``), ``None`` for an unknown one."""
    text = status_text(code)
    return text.split(" ", 1)[1] if " " in text else None


def _transport_reason(exc: httpx.TransportError) -> str:
    text = str(exc)
    # httpx messages can quote the URL; a download URL is a credential, so keep it out.
    return "see the cause" if "http" in text.lower() else _snippet(text, 120) or "no detail"


def error_from_response(response: httpx.Response) -> ApiError | ApiUnavailableError:
    """Map an error response to the typed error (CDF's error body, plain strings or HTML)."""
    rid = response.headers.get("x-request-id")
    status = response.status_code
    message, missing, duplicated = "", None, None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message", ""))
        missing = err.get("missing") if isinstance(err.get("missing"), list) else None
        duplicated = err.get("duplicated") if isinstance(err.get("duplicated"), list) else None
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    elif response.content:
        message = f"non-JSON error body: {_snippet(response.text)!r}"
    message = message or response.reason_phrase or "error"
    kw: dict[str, Any] = {"status_code": status, "request_id": rid, "missing": missing,
                          "duplicated": duplicated}
    if status in (401, 403):
        return AuthenticationError(f"not authorized: {message}", **kw)
    if status == 429:
        return RateLimitedError(f"rate limited: {message}", **kw,
                                retry_after_s=parse_retry_after(response.headers.get("retry-after")))
    if status == 404 or (status in (400, 422) and missing):
        return NotFoundError(f"not found: {message}", **kw)
    if status >= 500:
        return ApiUnavailableError(f"server error: {message}", status_code=status, request_id=rid)
    return ApiError(message, **kw)
