"""The few Label Studio REST calls an export needs (tested on Label Studio 1.23), each
failure a typed error.

Errors: :class:`LabelStudioUnreachable` (nothing answers, or not like Label Studio),
:class:`LabelStudioAuthError` (no token, 401, 403), :class:`LabelStudioProjectError` (no such
project, or several with a title), :class:`LabelStudioRequestError` (another refusal, with
the server's reason).

**Tokens.** A legacy token (``Authorization: Token ...``; the organisation must allow legacy
tokens) or a personal access token (a JWT refresh token: exchanged at ``/api/token/refresh/``
for short-lived access tokens, renewed when one expires). The token is kept in a
:class:`Secret` and never appears in an error, a log line, a repr or a report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from cogseg_ml.errors import CogsegError, ValidationError

__all__ = ["TOKEN_ENV", "LabelStudioAuthError", "LabelStudioClient", "LabelStudioError",
           "LabelStudioProjectError", "LabelStudioRequestError", "LabelStudioUnreachable",
           "Secret", "check_url"]

#: The environment variable the token is read from (the name Label Studio's own SDK uses).
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
_PAGE = 100
_TOKEN_HELP = (f"give the token in {TOKEN_ENV} (Account & Settings in Label Studio: a personal "
               "access token, or a legacy token where the organisation allows legacy tokens)")


class LabelStudioError(CogsegError):
    """Label Studio could not be used; the message says what to fix (never the token).

    Attributes:
        status_code: the HTTP status Label Studio answered, where it answered.
    """

    status_code: int | None

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message, status_code=status_code)


class LabelStudioUnreachable(LabelStudioError):
    """Nothing answers at the URL (refused, no such host, timed out), or it is not Label
    Studio."""


class LabelStudioAuthError(LabelStudioError):
    """No token, or Label Studio refused it (401) or refused the user an action (403)."""


class LabelStudioProjectError(LabelStudioError):
    """The project cannot be chosen: no project has the id, or several have the title."""


class LabelStudioRequestError(LabelStudioError):
    """Label Studio refused a request (another 4xx) or failed on it (5xx)."""


class Secret:
    """A token that shows as ``***`` in reprs, strings and f-strings; :meth:`reveal` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The token itself (for the ``Authorization`` header only)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled")


def _is_jwt(token: str) -> bool:
    """A personal access token is a JWT: three base64url parts, the first a JSON header."""
    return token.startswith("eyJ") and token.count(".") == 2


class _TokenAuth(httpx.Auth):
    """``Token <legacy token>``, or ``Bearer <access token>`` got (and renewed on a 401) from a
    personal access token."""

    requires_response_body = True

    def __init__(self, token: Secret, refresh_url: str) -> None:
        self._token = token
        self._refresh_url = refresh_url
        self._access: Secret | None = None
        self.personal = _is_jwt(token.reveal())

    def __repr__(self) -> str:
        return f"_TokenAuth(personal={self.personal})"

    def _refresh(self) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield httpx.Request("POST", self._refresh_url,
                                       json={"refresh": self._token.reveal()})
        if response.status_code in (400, 401, 403):
            raise LabelStudioAuthError(
                "Label Studio refused the personal access token (it was revoked, expired, or "
                f"belongs to another server); {_TOKEN_HELP}", status_code=response.status_code)
        access = _json(response, "renew the access token").get("access")
        if not isinstance(access, str) or not access:
            raise LabelStudioUnreachable("the token endpoint gave no access token: is the URL "
                                         "Label Studio's?", status_code=response.status_code)
        self._access = Secret(access)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self.personal:
            request.headers["Authorization"] = f"Token {self._token.reveal()}"
            yield request
            return
        if self._access is None:
            yield from self._refresh()
        assert self._access is not None
        request.headers["Authorization"] = f"Bearer {self._access.reveal()}"
        response = yield request
        if response.status_code == 401:  # the access token expired: renew it once
            yield from self._refresh()
            request.headers["Authorization"] = f"Bearer {self._access.reveal()}"
            yield request


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise LabelStudioUnreachable(
            f"{what}: the answer is not JSON ({response.headers.get('content-type', 'no type')}"
            f" from {response.request.url.path}): is the URL Label Studio's?",
            status_code=response.status_code) from None


def _detail(response: httpx.Response) -> str:
    """The server's reason, shortened to one line."""
    try:
        body = response.json()
    except ValueError:
        text = response.text
    else:
        text = json.dumps(body.get("validation_errors") or body.get("detail") or body
                          if isinstance(body, dict) else body, ensure_ascii=False)
    text = " ".join(text.split())
    return text[:500] + ("..." if len(text) > 500 else "")


def check_url(url: str) -> str:
    """``url`` without a trailing ``/``, refused unless ``http(s)://host[:port][/path]``."""
    if not isinstance(url, str):
        raise ValidationError(f"the Label Studio URL must be a string, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.username or parts.password:  # not echoed: it may hold a password or token
        raise ValidationError(f"the Label Studio URL holds credentials: give it without them "
                              f"(the token goes in {TOKEN_ENV})")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"Label Studio URL {url!r}: give http(s)://host[:port], e.g. "
                              "http://localhost:8080")
    if parts.query or parts.fragment:
        raise ValidationError(f"Label Studio URL {url!r}: give it without a query or "
                              "fragment")
    return url.strip().rstrip("/")


class LabelStudioClient:
    """The few Label Studio REST calls an export needs, with typed errors.

    Args:
        url: the server, e.g. ``http://localhost:8080`` (a path for a server behind one).
        token: a legacy token or a personal access token; ``None``: ``LABEL_STUDIO_API_KEY``.
        timeout_s: per request (imports of many images take a while).
        transport: an httpx transport (tests).

    Raises:
        ValidationError: a malformed URL.
        LabelStudioAuthError: no token given and none in the environment.
    """

    def __init__(self, url: str, token: str | Secret | None = None, *, timeout_s: float = 300.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = check_url(url)
        if token is None:
            token = os.environ.get(TOKEN_ENV, "").strip() or None
        if isinstance(token, str):
            token = Secret(token.strip())
        if token is None or not token.reveal():
            raise LabelStudioAuthError(f"no Label Studio token: {_TOKEN_HELP}")
        self._auth = _TokenAuth(token, f"{self.url}/api/token/refresh/")
        self._http = httpx.Client(base_url=self.url, auth=self._auth, transport=transport,
                                  timeout=httpx.Timeout(timeout_s, connect=10.0),
                                  follow_redirects=False)

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------

    def request(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        """One call; a typed error unless it answered 2xx. ``what`` says what it was for."""
        try:
            response = self._http.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise LabelStudioUnreachable(f"Label Studio at {self.url} did not answer in time "
                                         f"to {what} ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise LabelStudioUnreachable(f"Label Studio at {self.url} cannot be reached to "
                                         f"{what}: {type(exc).__name__}: {exc}; check the URL "
                                         "and that the server runs") from None
        code = response.status_code
        if code < 300:
            return response
        if code == 401:
            raise LabelStudioAuthError(f"Label Studio at {self.url} refused the token (401); "
                                       f"{_TOKEN_HELP}", status_code=code)
        if code == 403:
            raise LabelStudioAuthError(f"Label Studio at {self.url} does not let this token's "
                                       f"user {what} (403): {_detail(response)}",
                                       status_code=code)
        if 300 <= code < 400:
            raise LabelStudioUnreachable(
                f"{self.url}{response.request.url.path} redirects to "
                f"{response.headers.get('location', '?')} ({code}): give the URL Label Studio "
                "answers on (its scheme, host and path)", status_code=code)
        raise LabelStudioRequestError(f"Label Studio could not {what} ({code}): "
                                      f"{_detail(response)}", status_code=code)

    def get_json(self, path: str, what: str, **params: Any) -> Any:
        """``GET`` and the JSON answer."""
        return _json(self.request("GET", path, what, params=params), what)

    # --- calls ------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """The token's user (checks the URL and the token before any work)."""
        user = self.get_json("/api/current-user/whoami", "check the token")
        if not isinstance(user, dict) or "id" not in user:
            raise LabelStudioUnreachable(f"{self.url} does not answer like Label Studio "
                                         "(/api/current-user/whoami)")
        return user

    def projects(self, title: str | None = None) -> list[dict[str, Any]]:
        """The projects the user sees (``title``: those whose title contains it)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, "page_size": _PAGE}
            if title is not None:
                params["title"] = title
            body = self.get_json("/api/projects/", "list the projects", **params)
            out.extend(body.get("results", []))
            if not body.get("next"):
                return out
            page += 1

    def project(self, project_id: int) -> dict[str, Any] | None:
        """A project by id, ``None`` when there is none (or the user cannot see it)."""
        try:
            body = self.get_json(f"/api/projects/{project_id}/", f"read project {project_id}")
        except LabelStudioRequestError as exc:
            if exc.status_code == 404:
                return None
            raise
        return dict(body)

    def create_project(self, title: str, config: str) -> dict[str, Any]:
        """A new project with the labelling config ``config``."""
        r = self.request("POST", "/api/projects/", f"create project {title!r}",
                         json={"title": title, "label_config": config})
        return dict(_json(r, "create the project"))

    def set_config(self, project_id: int, config: str) -> None:
        """Replace the project's labelling config."""
        self.request("PATCH", f"/api/projects/{project_id}/",
                     f"set the labelling config of project {project_id}",
                     json={"label_config": config})

    def tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of the project with its predictions, page by page."""
        page, seen = 1, 0
        while True:
            body = self.get_json("/api/tasks/", f"list the tasks of project {project_id}",
                                 project=project_id, page=page, page_size=_PAGE, fields="all")
            tasks = body.get("tasks", []) if isinstance(body, dict) else []
            yield from tasks
            seen += len(tasks)
            if not tasks or seen >= int(body.get("total", 0)):
                return
            page += 1

    def upload(self, project_id: int, files: Sequence[tuple[str, bytes]]) -> list[str]:
        """Store image files in the project without making tasks of them; their URLs on
        the server (``/data/upload/...``), in the order given."""
        what = f"upload {len(files)} images to project {project_id}"
        r = self.request("POST", f"/api/projects/{project_id}/import", what,
                         params={"commit_to_project": "false"},
                         files=[(name, (name, data)) for name, data in files])
        ids = _json(r, what).get("file_upload_ids")
        if not isinstance(ids, list) or len(ids) != len(files):
            raise LabelStudioRequestError(f"Label Studio did not store the images ({what}): "
                                          f"file_upload_ids {ids!r}")
        stored = self.get_json(f"/api/projects/{project_id}/file-uploads",
                               "read the uploaded files", ids=json.dumps(ids))
        by_id = {int(f["id"]): str(f["file"]) for f in stored}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise LabelStudioRequestError(f"Label Studio lost uploads {missing} ({what})")
        base = urlsplit(self.url).path.rstrip("/")
        # The route Label Studio serves its uploads on (FileUpload.url on local media storage).
        return [f"{base}/data/{by_id[i].lstrip('/')}" for i in ids]

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Create the tasks (with their predictions); their ids, in order."""
        what = f"import {len(tasks)} tasks into project {project_id}"
        r = self.request("POST", f"/api/projects/{project_id}/import", what,
                         params={"return_task_ids": "true"}, json=list(tasks))
        ids = _json(r, what).get("task_ids")
        if not isinstance(ids, list) or len(ids) != len(tasks):
            raise LabelStudioRequestError(f"Label Studio did not create the tasks ({what}): "
                                          f"task_ids {ids!r}")
        return [int(i) for i in ids]

    def update_task_data(self, task_id: int, data: Mapping[str, Any]) -> None:
        """Replace a task's data."""
        self.request("PATCH", f"/api/tasks/{task_id}/", f"update task {task_id}",
                     json={"data": dict(data)})

    def add_prediction(self, task_id: int, prediction: Mapping[str, Any]) -> None:
        """Add a prediction to a task."""
        self.request("POST", "/api/predictions/", f"add a prediction to task {task_id}",
                     json={"task": task_id, **prediction})

    def delete_prediction(self, prediction_id: int) -> None:
        """Delete a prediction."""
        self.request("DELETE", f"/api/predictions/{prediction_id}/",
                     f"delete prediction {prediction_id}")
