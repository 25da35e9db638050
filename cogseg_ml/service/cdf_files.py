"""The caller's CDF project, read with the caller's own token.

The service keeps no credentials: each call here carries the bearer token of the request it
serves, and the token lives only as long as that request. CDF's refusals pass through as the
service's answer (401/403 as CDF gave them, a missing file as a 400 with ``error.missing``);
a CDF that cannot be reached, or answers 5xx, is a 502 naming CDF. Download URLs get the token
only when they are on CDF's own origin (as cogseg's client does).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from cogseg_ml.api.wire_schema import FileMetadata
from cogseg_ml.service.problems import ApiProblem

__all__ = ["CdfFiles", "FORWARDED_HEADERS"]

#: Request headers passed to CDF when the service forwards a call.
FORWARDED_HEADERS = ("authorization", "content-type", "accept", "cdf-version", "x-cdp-app",
                     "x-cdp-sdk", "x-request-id")


def _cdf_problem(resp: httpx.Response, what: str) -> ApiProblem:
    """CDF's error answer as the service's: same status and ``missing``/``duplicated``."""
    try:
        err = resp.json().get("error", {})
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    message = str(err.get("message") or resp.reason_phrase or "error")
    if resp.status_code >= 500:
        return ApiProblem(502, f"CDF answered {resp.status_code} to {what}: {message}")
    return ApiProblem(resp.status_code, f"CDF: {message}", missing=err.get("missing"),
                      duplicated=err.get("duplicated"))


class CdfFiles:
    """File metadata and bytes from one CDF cluster, per call with the caller's token.

    Args:
        base_url: the cluster, e.g. ``https://westeurope-1.cognitedata.com``.
        client: the HTTP client (the app's; closed by its owner).
        on_error: called with a short reason on every CDF failure (metrics).
        max_image_bytes: refuse larger images (a 400 naming the limit).
    """

    def __init__(self, base_url: str, client: httpx.AsyncClient, *,
                 on_error: Callable[[str], None] = lambda reason: None,
                 max_image_bytes: int = 64 * 1024 * 1024) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.on_error = on_error
        self.max_image_bytes = max_image_bytes
        parts = urlsplit(self.base_url)
        self._origin = (parts.scheme, parts.netloc)

    def _url(self, project: str, path: str) -> str:
        return f"{self.base_url}/api/v1/projects/{project}{path}"

    async def _send(self, method: str, url: str, what: str, headers: dict[str, str],
                    body: Any = None) -> httpx.Response:
        try:
            resp = await self.client.request(method, url, headers=headers,
                                             content=None if body is None else json.dumps(body),
                                             timeout=30.0)
        except httpx.HTTPError as exc:
            self.on_error("unreachable")
            raise ApiProblem(502, f"CDF could not be reached for {what}: "
                                  f"{type(exc).__name__}") from None
        if resp.status_code >= 400:
            self.on_error(str(resp.status_code))
            raise _cdf_problem(resp, what)
        return resp

    async def metadata(self, project: str, token: str, ident: dict[str, Any]) -> FileMetadata:
        """``files/byids`` for one file, with the caller's token."""
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        resp = await self._send("POST", self._url(project, "/files/byids"), "files/byids",
                                headers, {"items": [ident]})
        items = resp.json().get("items") or []
        if not items:
            raise ApiProblem(400, "CDF: Files not found", missing=[ident])
        return FileMetadata.model_validate(items[0])

    async def download(self, project: str, token: str, file_id: int) -> bytes:
        """The file's bytes: a download link, then its content."""
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        resp = await self._send("POST", self._url(project, "/files/downloadlink"),
                                "files/downloadlink", headers, {"items": [{"id": file_id}]})
        items = resp.json().get("items") or []
        if not items or "downloadUrl" not in items[0]:
            self.on_error("no-link")
            raise ApiProblem(502, f"CDF gave no download link for file {file_id}")
        url = str(items[0]["downloadUrl"])
        same_origin = urlsplit(url)[:2] == self._origin
        dl_headers = {"authorization": f"Bearer {token}"} if same_origin else {}
        got = await self._send("GET", url, "the file download", dl_headers)
        if len(got.content) > self.max_image_bytes:
            raise ApiProblem(400, f"File {file_id} is larger than the service's limit of "
                                  f"{self.max_image_bytes} bytes")
        return got.content

    async def forward(self, method: str, path: str, query: str, headers: dict[str, str],
                      body: bytes) -> httpx.Response:
        """Pass one call through to CDF unchanged (the routes the service does not serve)."""
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        try:
            return await self.client.request(method, url, headers=headers, content=body,
                                             timeout=60.0)
        except httpx.HTTPError as exc:
            self.on_error("unreachable")
            raise ApiProblem(502, f"CDF could not be reached: {type(exc).__name__}") from None

    async def reachable(self) -> bool:
        """Whether CDF answers at all (any HTTP status counts)."""
        try:
            await self.client.get(self.base_url + "/", timeout=5.0)
        except httpx.HTTPError:
            return False
        return True
