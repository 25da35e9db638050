"""The client's internals on httpx.MockTransport: no server, so a failure names this layer.

A tiny in-memory CDF (``FakeCdf``) answers the few routes the client uses; each test changes
one answer to show one behaviour of error mapping, the pipeline or the session.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import httpx
import pytest

from cogseg_ml.api.client import AsyncSegmentationClient, SegmentationClient
from cogseg_ml.config import CdfConfig, ClientCredentials, RetryConfig, StaticToken
from cogseg_ml.errors import (
    ApiUnavailableError,
    FileValidationError,
    ResponseValidationError,
)
from cogseg_ml.prompts import FileRef, Prompt

BASE = "https://cdf.invalid"
ROOT = f"{BASE}/api/v1/projects/p"


def config(**kw: Any) -> CdfConfig:
    kw.setdefault("credentials", StaticToken("tok"))
    kw.setdefault("retry", RetryConfig(max_attempts=2, backoff_base_s=0.0, max_backoff_s=0.0))
    return CdfConfig(project="p", base_url=BASE, **kw)


class FakeCdf:
    """Answers byids, segment create/retrieve, downloadlink, download and the token route."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.item: dict[str, Any] = {"fileId": 7, "fileExternalId": "a.png"}
        self.content = b"\x89PNG" + b"x" * 100
        self.next_job = 1

    def job(self, status: str, job_id: int) -> dict[str, Any]:
        item = dict(self.item)
        if status == "Completed":
            item["segments"] = [{"score": 0.9, "polygons": [{"vertices": [
                {"x": 0.1, "y": 0.1}, {"x": 0.5, "y": 0.1}, {"x": 0.5, "y": 0.5}]}]}]
        return {"status": status, "jobId": job_id, "createdTime": 1, "statusTime": 2,
                "items": [item]}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        key = f"{request.method} {path}"
        self.calls[key] += 1
        if path == "/token":
            return httpx.Response(200, json={"access_token": "t1", "expires_in": 3600})
        if path.endswith("/files/byids"):
            return httpx.Response(200, json={"items": [{
                "id": 7, "externalId": "a.png", "name": "a.png", "mimeType": "image/png",
                "uploaded": True, "createdTime": 1, "lastUpdatedTime": 1, "uploadedTime": 1}]})
        if path.endswith("/context/vision/segment") and request.method == "POST":
            job_id, self.next_job = self.next_job, self.next_job + 1
            return httpx.Response(201, json=self.job("Queued", job_id))
        if "/context/vision/segment/" in path:
            return httpx.Response(200, json=self.job("Completed", int(path.rsplit("/", 1)[1])))
        if path.endswith("/files/downloadlink"):
            return httpx.Response(200, json={"items": [
                {"id": 7, "downloadUrl": f"{BASE}/dl/secret-link"}]})
        if path == "/dl/secret-link":
            return httpx.Response(200, content=self.content)
        return httpx.Response(404, json={"error": {"code": 404, "message": "no route"}})


def requests(n: int) -> list[tuple[FileRef, Prompt]]:
    return [(FileRef(id=7), Prompt.of([(0.2 + 0.01 * i, 0.2)])) for i in range(n)]


# --- bug: a job answer the pipeline cannot read must end as an outcome, never a hang ----------

def test_job_item_without_file_reference_is_an_error_outcome_not_a_hang() -> None:
    fake = FakeCdf()
    fake.item = {}  # Completed, but the item names no file

    async def main() -> list[Any]:
        async with AsyncSegmentationClient(config(), transport=httpx.MockTransport(fake)) as c:
            return [o async for o in c.segment_many(requests(3), check_files=False)]

    outcomes = asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert len(outcomes) == 3
    assert all(isinstance(o.error, ResponseValidationError) for o in outcomes)
    assert "file reference" in str(outcomes[0].error)


def test_unexpected_exception_in_the_pipeline_ends_the_stream_with_it() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/segment"):
            raise KeyError("a bug in a transport")
        return FakeCdf()(request)

    async def main() -> list[Any]:
        async with AsyncSegmentationClient(config(), transport=httpx.MockTransport(broken)) as c:
            return [o async for o in c.segment_many(requests(2), check_files=False)]

    with pytest.raises(KeyError, match="a bug in a transport"):
        asyncio.run(asyncio.wait_for(main(), timeout=30))


# --- bug: only transport errors and retryable statuses become ApiUnavailableError -------------

def test_a_bug_inside_a_request_propagates_with_its_cause() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise KeyError("missing header in a hook")

    with SegmentationClient(config(), transport=httpx.MockTransport(broken)) as client, \
            pytest.raises(KeyError, match="missing header"):
        client.retrieve_job(1)


def test_transport_errors_are_unavailable_with_the_cause_kept() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with SegmentationClient(config(), transport=httpx.MockTransport(down)) as client:
        with pytest.raises(ApiUnavailableError) as info:
            client.retrieve_job(1)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


# --- bug: the sync segment_many ignored transport=, the token cache and the schedule ----------

def test_sync_segment_many_uses_the_clients_transport_and_token_cache() -> None:
    fake = FakeCdf()
    creds = ClientCredentials(token_url=f"{BASE}/token", client_id="id", client_secret="s3")
    with SegmentationClient(config(credentials=creds),
                            transport=httpx.MockTransport(fake)) as client:
        first = list(client.segment_many(requests(3)))
        second = list(client.segment_many(requests(2)))
        client.retrieve_job(1)
        learned = client.schedule.observed
    assert all(o.ok for o in first + second)
    assert fake.calls["POST /api/v1/projects/p/context/vision/segment"] == 5
    assert fake.calls["POST /token"] == 1  # one token for the client's whole life
    assert learned == 5  # one schedule learned from both calls


# --- bug: an oversized download is the documented FileValidationError --------------------------

def test_oversized_download_is_a_file_validation_error() -> None:
    fake = FakeCdf()
    with SegmentationClient(config(), transport=httpx.MockTransport(fake)) as client:
        assert client.download(FileRef(id=7)) == fake.content
        with pytest.raises(FileValidationError, match="max_bytes") as info:
            client.download(FileRef(id=7), max_bytes=10)
    assert "secret-link" not in str(info.value)


# --- bug: the async client lacked the annotation methods its docstring promises ----------------

def test_async_client_lists_and_creates_annotations() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if request.url.path.endswith("/annotations/list"):
            return httpx.Response(200, json={"items": []})
        return httpx.Response(200, json={"items": [
            {**it, "id": 1, "createdTime": 1, "lastUpdatedTime": 1} for it in body["items"]]})

    from cogseg_ml.api.wire_schema import Annotation

    ann = Annotation(annotated_resource_type="file", annotated_resource_id=7,
                     annotation_type="images.ObjectDetection", creating_app="t",
                     creating_app_version="1.0.0", creating_user=None, status="suggested",
                     data={"label": "x", "polygon": {"vertices": [
                         {"x": 0.1, "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]}})

    async def main() -> tuple[list[Any], list[Any]]:
        async with AsyncSegmentationClient(config(),
                                           transport=httpx.MockTransport(handler)) as c:
            listed = [a async for a in c.list_annotations([7], creating_app="t")]
            created = await c.create_annotations([ann])
        return listed, created

    listed, created = asyncio.run(main())
    assert listed == [] and len(created) == 1 and created[0].annotated_resource_id == 7
    assert seen[0]["filter"]["creatingApp"] == "t"
