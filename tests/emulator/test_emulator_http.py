"""Every emulator endpoint over real loopback HTTP with raw httpx, errors and faults included."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import types
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import numpy as np
import pytest

from cogseg_ml.emulator import app as emulator_app
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image
from cogseg_ml.mask_codec import decode, polygons_to_rle
from tests.conftest import RawApi, wait_terminal


def _mask_of(body: dict, h: int, w: int) -> np.ndarray:
    seg = body["items"][0]["segments"][0]
    polys = [[(v["x"], v["y"]) for v in p["vertices"]] for p in seg["polygons"]]
    return decode([polygons_to_rle(polys, h, w)])[0]


# --- token endpoint --------------------------------------------------------------------------


def test_token_endpoint_issues_expiring_bearer_tokens(shared_emulator: Emulator) -> None:
    emu = shared_emulator
    r = httpx.post(emu.token_url, data={"grant_type": "client_credentials",
                                        "client_id": emu.state.client_id,
                                        "client_secret": emu.client_secret.reveal()})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    ok = httpx.post(f"{emu.base_url}/api/v1/projects/{emu.project}/files/byids",
                    json={"items": [{"externalId": "synthetic_00000.png"}]},
                    headers={"Authorization": f"Bearer {body['access_token']}"})
    assert ok.status_code == 200


@pytest.mark.parametrize("form,status,error", [
    ({"grant_type": "client_credentials", "client_id": "cogseg-emulator",
      "client_secret": "wrong"}, 401, "invalid_client"),
    ({"grant_type": "password", "client_id": "cogseg-emulator"}, 400, "unsupported_grant_type"),
    ({"grant_type": "client_credentials", "client_id": "someone-else",
      "client_secret": "x"}, 401, "invalid_client"),
])
def test_token_endpoint_refuses_bad_requests(shared_emulator: Emulator, form: dict, status: int,
                                             error: str) -> None:
    r = httpx.post(shared_emulator.token_url, data=form)
    assert r.status_code == status
    assert r.json()["error"] == error


def test_token_endpoint_accepts_http_basic(shared_emulator: Emulator) -> None:
    emu = shared_emulator
    r = httpx.post(emu.token_url, data={"grant_type": "client_credentials"},
                   auth=(emu.state.client_id, emu.client_secret.reveal()))
    assert r.status_code == 200 and r.json()["access_token"].startswith("emu-")


class HandClock:
    """Epoch seconds that move only when a test moves them (the emulator's ``state.clock``)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_expired_token_gets_401(make_emulator) -> None:
    emu = make_emulator()
    emu.state.clock = clock = HandClock()  # token expiry reads it: moved, not slept through
    token = emu.issue_token(ttl_s=0.5)
    url = f"{emu.base_url}/api/v1/projects/{emu.project}/files/byids"
    body = {"items": [{"externalId": "synthetic_00000.png"}]}
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}).is_success
    clock.now += 0.6
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == 401 and "expired" in r.json()["error"]["message"]


# --- guards ----------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"},
                                     {"Authorization": "Basic abc"}])
def test_requests_without_a_valid_bearer_token_get_401(raw: RawApi, headers: dict) -> None:
    r = raw.http.post(raw.root + "/files/byids", json={"items": [{"id": 1}]}, headers=headers)
    assert r.status_code == 401
    assert set(r.json()["error"]) >= {"code", "message"}
    assert r.headers["x-request-id"]


def test_other_project_gets_403(raw: RawApi) -> None:
    r = raw.http.post(f"{raw.emu.base_url}/api/v1/projects/not-mine/files/byids",
                      json={"items": [{"id": 1}]}, headers=raw.headers())
    assert r.status_code == 403


def test_a_token_scoped_to_data_sets_reads_only_their_files(make_emulator) -> None:
    emu = make_emulator()
    png = encode_image(np.zeros((8, 8, 3), np.uint8))
    ours, theirs = emu.state.add_data_set("ours"), emu.state.add_data_set("theirs")
    inside = emu.add_image(png, "in.png", external_id="in.png", data_set_id=ours)
    outside = emu.add_image(png, "out.png", external_id="out.png", data_set_id=theirs)
    root = f"{emu.base_url}/api/v1/projects/{emu.project}"
    head = {"Authorization": f"Bearer {emu.issue_token(data_set_ids=[ours])}",
            "cdf-version": "beta"}

    def post(path: str, body: dict) -> httpx.Response:
        return httpx.post(root + path, json=body, headers=head)

    assert post("/files/byids", {"items": [{"id": inside.id}]}).status_code == 200
    for path, body in (("/files/byids", {"items": [{"id": outside.id}]}),
                       ("/files/downloadlink", {"items": [{"id": outside.id}]}),
                       ("/context/vision/segment", {"items": [{"fileId": outside.id}],
                                                    "points": [{"x": 0.5, "y": 0.5,
                                                                "label": 1}]})):
        r = post(path, body)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == 403 and "downloadUrl" not in r.text
    listed = post("/files/list", {"limit": 1000}).json()["items"]
    assert [f["id"] for f in listed] == [inside.id]
    # A job on the other file, made with an unscoped token, is not shown to this one.
    job = httpx.post(root + "/context/vision/segment", headers={
        "Authorization": f"Bearer {emu.issue_token()}", "cdf-version": "beta"},
        json={"items": [{"fileId": outside.id}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]})
    r = httpx.get(f"{root}/context/vision/segment/{job.json()['jobId']}", headers=head)
    assert r.status_code == 403 and "items" not in r.json()


def test_vision_calls_need_the_beta_version_header(raw: RawApi) -> None:
    fid = raw.file_id("synthetic_00000.png")
    body = {"items": [{"fileId": fid}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]}
    r = raw.post("/context/vision/segment", body, beta=False)
    assert r.status_code == 400 and "cdf-version" in r.json()["error"]["message"]
    r = raw.http.post(raw.root + "/context/vision/segment", json=body,
                      headers={**raw.headers(), "cdf-version": "20230101-beta"})
    assert r.status_code == 200


def test_every_response_carries_a_unique_request_id(raw: RawApi) -> None:
    ids = {raw.post("/files/byids", {"items": [{"externalId": "synthetic_00000.png"}]})
           .headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_unknown_route_gets_cdf_error_body(raw: RawApi) -> None:
    r = raw.get("/no/such/thing")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404


# --- files -----------------------------------------------------------------------------------


def test_files_byids_in_request_order_with_metadata(raw: RawApi) -> None:
    r = raw.post("/files/byids", {"items": [{"externalId": "synthetic_00002.png"},
                                            {"externalId": "synthetic_00000.png"}]})
    items = r.json()["items"]
    assert [i["externalId"] for i in items] == ["synthetic_00002.png", "synthetic_00000.png"]
    assert items[0]["mimeType"] == "image/png" and items[0]["uploaded"] is True
    by_id = raw.post("/files/byids", {"items": [{"id": items[0]["id"]}]}).json()["items"]
    assert by_id[0]["name"] == "synthetic_00002.png"


def test_files_byids_missing_duplicated_and_ignore_unknown(raw: RawApi) -> None:
    r = raw.post("/files/byids", {"items": [{"id": 1}, {"externalId": "synthetic_00000.png"}]})
    assert r.status_code == 400 and r.json()["error"]["missing"] == [{"id": 1}]
    r = raw.post("/files/byids", {"items": [{"id": 5}, {"id": 5}]})
    assert r.status_code == 400 and r.json()["error"]["duplicated"] == [{"id": 5}]
    r = raw.post("/files/byids", {"items": [{"id": 1}, {"externalId": "synthetic_00000.png"}],
                                  "ignoreUnknownIds": True})
    assert r.status_code == 200 and len(r.json()["items"]) == 1


@pytest.mark.parametrize("body", [
    {"items": []},
    {"items": [{"id": "12"}]},
    {"items": [{"id": 1, "externalId": "a"}]},
    {"items": [{"id": 1}], "unexpected": True},
    {"items": [{"id": i} for i in range(1, 1002)]},
])
def test_files_byids_rejects_malformed_bodies(raw: RawApi, body: dict) -> None:
    r = raw.post("/files/byids", body)
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("Invalid request body")


def test_downloadlink_then_download_returns_the_bytes(raw: RawApi,
                                                      images: list[SyntheticImage]) -> None:
    r = raw.post("/files/downloadlink", {"items": [{"externalId": "synthetic_00001.png"}]})
    item = r.json()["items"][0]
    assert item == {"externalId": "synthetic_00001.png", "downloadUrl": item["downloadUrl"]}
    data = httpx.get(item["downloadUrl"]).content  # no bearer token needed
    import io

    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(pixels, images[1].pixels)
    assert data == encode_image(images[1].pixels, "png")


def test_download_link_expires(make_emulator) -> None:
    emu = make_emulator()
    api = RawApi(emu)
    r = api.post("/files/downloadlink", {"items": [{"externalId": "synthetic_00000.png"}]})
    url = r.json()["items"][0]["downloadUrl"]
    token = url.rsplit("/", 1)[1]
    with emu.state.lock:  # age the link instead of sleeping 30 s
        fid, _ = emu.state.links[token]
        emu.state.links[token] = (fid, time.time() - 1)
    assert httpx.get(url).status_code == 403
    r = api.http.post(api.root + "/files/downloadlink", params={"extendedExpiration": "true"},
                      json={"items": [{"externalId": "synthetic_00000.png"}]},
                      headers=api.headers())
    token = r.json()["items"][0]["downloadUrl"].rsplit("/", 1)[1]
    assert emu.state.links[token][1] - time.time() > 3000


def test_downloadlink_limits_and_missing(raw: RawApi) -> None:
    assert raw.post("/files/downloadlink", {"items": [{"id": i} for i in range(1, 102)]}
                    ).status_code == 400
    r = raw.post("/files/downloadlink", {"items": [{"id": 77}]})
    assert r.status_code == 400 and r.json()["error"]["missing"] == [{"id": 77}]


def test_admin_upload_registers_a_file(make_emulator, images: list[SyntheticImage]) -> None:
    emu = make_emulator()
    data = encode_image(images[0].pixels, "jpeg")
    r = httpx.put(f"{emu.base_url}/_emulator/files", content=data,
                  params={"name": "upload.jpg", "externalId": "up-1"})
    assert r.status_code == 201 and r.json()["mimeType"] == "image/jpeg"
    api = RawApi(emu)
    assert api.file_id("up-1") == r.json()["id"]
    again = httpx.put(f"{emu.base_url}/_emulator/files", content=data,
                      params={"name": "upload.jpg", "externalId": "up-1"})
    assert again.status_code == 409


# --- segmentation jobs -----------------------------------------------------------------------


def _started(api: RawApi, job_id: int, timeout: float = 10.0) -> dict:
    """Poll a job over raw HTTP until it is no longer Queued (a deadline, not a pause)."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict = api.get(f"/context/vision/segment/{job_id}").json()
        if body["status"] != "Queued":
            return body
        assert time.monotonic() < deadline, f"job {job_id} never started"
        time.sleep(0.01)


def test_job_lifecycle_and_exact_masks(make_emulator, images: list[SyntheticImage]) -> None:
    emu = make_emulator(processing_time_s=0.3, concurrency=1)
    emu.jobs.end_limit = 0  # the first job stays Running (its one worker busy) until released
    api = RawApi(emu)
    img = images[0]
    obj = img.objects[0]
    p, b = obj.interior_point(), obj.box()
    fid = api.file_id(img.name)
    r = api.post("/context/vision/segment", {
        "items": [{"fileId": fid}], "points": [{"x": p.x, "y": p.y, "label": 1}],
        "boundingBox": {"xMin": b.x_min, "yMin": b.y_min, "xMax": b.x_max, "yMax": b.y_max}})
    assert r.status_code == 200
    created = r.json()
    assert created["status"] == "Queued" and created["items"][0]["fileId"] == fid
    assert created["points"] == [{"x": p.x, "y": p.y, "label": 1}]
    assert created["boundingBox"]["xMin"] == b.x_min
    # A second job queues behind the first (concurrency 1).
    second = api.post("/context/vision/segment", {
        "items": [{"fileExternalId": img.name}], "points": [{"x": p.x, "y": p.y, "label": 1}]})
    running = _started(api, created["jobId"])
    assert running["status"] == "Running" and running["startTime"] >= created["createdTime"]
    assert api.get(f"/context/vision/segment/{second.json()['jobId']}").json()["status"] == "Queued"
    emu.jobs.end_limit = None
    done = wait_terminal(api, created["jobId"])
    assert done["status"] == "Completed"
    assert done["statusTime"] - done["startTime"] >= 250
    assert done["prompt"]["boundingBox"]["yMax"] == b.y_max
    assert np.array_equal(_mask_of(done, img.height, img.width), obj.mask)
    assert 0 < done["items"][0]["segments"][0]["score"] <= 1
    # Its one worker took the second job only once the first had ended.
    assert wait_terminal(api, second.json()["jobId"])["startTime"] >= done["statusTime"]


@pytest.mark.parametrize("kind", ["point", "box", "point+background"])
def test_engine_is_exact_on_flat_shapes(raw: RawApi, images: list[SyntheticImage],
                                        kind: str) -> None:
    for img in images[:3]:
        fid = raw.file_id(img.name)
        for obj in img.objects:
            p, b = obj.interior_point(), obj.box()
            body: dict = {"items": [{"fileId": fid}], "points": []}
            if kind != "box":
                body["points"].append({"x": p.x, "y": p.y, "label": 1})
            if kind == "point+background":
                body["points"].append({"x": 0.001, "y": 0.001, "label": 0})
            if kind == "box":
                body["boundingBox"] = {"xMin": b.x_min, "yMin": b.y_min, "xMax": b.x_max,
                                       "yMax": b.y_max}
            job = raw.post("/context/vision/segment", body).json()
            done = wait_terminal(raw, job["jobId"])
            assert np.array_equal(_mask_of(done, img.height, img.width), obj.mask), (img.name,
                                                                                     kind)


def test_engine_is_close_on_jpeg(make_emulator, images: list[SyntheticImage]) -> None:
    emu = make_emulator(images=images[:1], image_format="jpeg")
    api = RawApi(emu)
    img = images[0]
    fid = api.file_id("synthetic_00000.jpg")
    for obj in img.objects:
        b = obj.box()
        job = api.post("/context/vision/segment", {"items": [{"fileId": fid}], "points": [],
                       "boundingBox": {"xMin": b.x_min, "yMin": b.y_min, "xMax": b.x_max,
                                       "yMax": b.y_max}}).json()
        m = _mask_of(wait_terminal(api, job["jobId"]), img.height, img.width)
        iou = (m & obj.mask).sum() / (m | obj.mask).sum()
        assert iou > 0.9


@pytest.mark.parametrize("body,fragment", [
    ({"items": [], "points": [{"x": 0.5, "y": 0.5, "label": 1}]}, "items"),
    ({"items": [{"fileId": 1}, {"fileId": 2}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]},
     "items"),
    ({"items": [{"fileId": 1}]}, "points"),
    ({"items": [{"fileId": 1}], "points": []}, "at least one point"),
    ({"items": [{"fileId": 1}], "points": [{"x": 1.5, "y": 0.5, "label": 1}]}, "points.0.x"),
    ({"items": [{"fileId": 1}], "points": [{"x": 0.5, "y": 0.5, "label": 2}]}, "label"),
    ({"items": [{"fileId": 1}], "points": [{"x": 0.5, "y": 0.5, "label": 1}] * 2}, "unique"),
    ({"items": [{"fileId": 1}], "points": [],
      "boundingBox": {"xMin": 0.6, "yMin": 0.1, "xMax": 0.5, "yMax": 0.2}}, "xMin < xMax"),
    ({"items": [{"fileId": 1}], "points": [{"x": "0.5", "y": 0.5, "label": 1}]}, "points.0.x"),
])
def test_segment_create_validates_the_body(raw: RawApi, body: dict, fragment: str) -> None:
    r = raw.post("/context/vision/segment", body)
    assert r.status_code == 400
    assert fragment in r.json()["error"]["message"]


def test_segment_create_checks_file_existence_extension_and_mime(make_emulator,
                                                                 images: list) -> None:
    emu = make_emulator()
    png = encode_image(images[0].pixels, "png")
    emu.add_image(png, "scan.gif", external_id="gif")
    emu.add_image(png, "scan.png", mime_type="application/pdf", external_id="pdf-mime")
    api = RawApi(emu)
    pts = [{"x": 0.5, "y": 0.5, "label": 1}]
    for xid in ("gif", "pdf-mime"):
        r = api.post("/context/vision/segment", {"items": [{"fileExternalId": xid}],
                                                 "points": pts})
        assert r.status_code == 400 and "cannot be segmented" in r.json()["error"]["message"]
    r = api.post("/context/vision/segment", {"items": [{"fileId": 42}], "points": pts})
    assert r.status_code == 400 and r.json()["error"]["missing"] == [{"id": 42}]


def test_undecodable_image_fails_the_item(make_emulator) -> None:
    emu = make_emulator()
    emu.add_image(b"not an image at all", "broken.png", external_id="broken")
    api = RawApi(emu)
    job = api.post("/context/vision/segment", {"items": [{"fileExternalId": "broken"}],
                                               "points": [{"x": 0.5, "y": 0.5, "label": 1}]})
    done = wait_terminal(api, job.json()["jobId"])
    assert done["status"] == "Failed" and done["items"] == []
    assert "could not read image" in done["failedItems"][0]["errorMessage"]
    assert done["failedItems"][0]["items"][0]["fileExternalId"] == "broken"


def test_unknown_or_malformed_job_id(raw: RawApi) -> None:
    r = raw.get("/context/vision/segment/123")
    assert r.status_code == 400 and r.json()["error"]["missing"] == [{"jobId": 123}]
    assert raw.get("/context/vision/segment/abc").status_code == 400


def test_queue_concurrency_is_bounded(make_emulator, images: list[SyntheticImage]) -> None:
    emu = make_emulator(processing_time_s=0.1, concurrency=3)
    api = RawApi(emu)
    fid = api.file_id(images[0].name)
    ids = [api.post("/context/vision/segment", {"items": [{"fileId": fid}],
                    "points": [{"x": 0.5, "y": 0.5, "label": 1}]}).json()["jobId"]
           for _ in range(9)]
    for jid in ids:
        assert wait_terminal(api, jid)["status"] == "Completed"
    assert emu.jobs.max_running == 3


# --- annotations -----------------------------------------------------------------------------


def _annotation(fid: int, label: str, status: str = "suggested") -> dict:
    return {"annotatedResourceType": "file", "annotatedResourceId": fid,
            "annotationType": "images.ObjectDetection", "creatingApp": "tests",
            "creatingAppVersion": "1.0.0", "creatingUser": None, "status": status,
            "data": {"label": label, "boundingBox": {"xMin": 0.1, "yMin": 0.1, "xMax": 0.2,
                                                     "yMax": 0.2}}}


def test_annotations_create_and_list_with_filters_and_paging(make_emulator) -> None:
    emu = make_emulator()
    api = RawApi(emu)
    fid = api.file_id("synthetic_00000.png")
    other = api.file_id("synthetic_00001.png")
    items = [_annotation(fid, f"l{i % 2}", "approved" if i < 3 else "suggested")
             for i in range(5)] + [_annotation(other, "l0")]
    r = api.post("/annotations", {"items": items})
    assert r.status_code == 201 and all("id" in a for a in r.json()["items"])
    flt = {"annotatedResourceType": "file", "annotatedResourceIds": [{"id": fid}]}
    got, cursor = [], None
    while True:
        body: dict = {"filter": flt, "limit": 2}
        if cursor:
            body["cursor"] = cursor
        page = api.post("/annotations/list", body).json()
        got += page["items"]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert len(got) == 5 and all(a["annotatedResourceId"] == fid for a in got)
    approved = api.post("/annotations/list", {"filter": {**flt, "status": "approved"},
                                              "limit": 100}).json()["items"]
    assert len(approved) == 3
    by_label = api.post("/annotations/list", {"filter": {**flt, "data": {"label": "l1"}},
                                              "limit": 100}).json()["items"]
    assert {a["data"]["label"] for a in by_label} == {"l1"} and len(by_label) == 2


def test_annotations_create_rejects_bad_items(raw: RawApi) -> None:
    fid = raw.file_id("synthetic_00000.png")
    bad = _annotation(fid, "x")
    bad["data"]["polygon"] = {"vertices": [{"x": 0.1, "y": 0.1}] * 3}
    assert raw.post("/annotations", {"items": [bad]}).status_code == 400
    r = raw.post("/annotations", {"items": [_annotation(99, "x")]})
    assert r.status_code == 400 and r.json()["error"]["missing"] == [{"id": 99}]
    no_status = _annotation(fid, "x")
    no_status["status"] = "maybe"
    assert raw.post("/annotations", {"items": [no_status]}).status_code == 400
    assert raw.post("/annotations/list", {"filter": {}, "limit": 10}).status_code == 400


# --- faults ----------------------------------------------------------------------------------


def test_status_fault_with_retry_after_in_both_forms(make_emulator) -> None:
    date = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=5), usegmt=True)
    emu = make_emulator(faults=[Fault("status", status=429, retry_after="2", times=1),
                                Fault("status", status=503, retry_after=date, times=1)])
    api = RawApi(emu)
    body = {"items": [{"externalId": "synthetic_00000.png"}]}
    first, second, third = (api.post("/files/byids", body) for _ in range(3))
    assert first.status_code == 429 and first.headers["retry-after"] == "2"
    assert first.json()["error"]["code"] == 429
    assert second.status_code == 503 and second.headers["retry-after"] == date
    assert third.status_code == 200
    assert [e.fault for e in emu.requests[-3:]] == ["status-429", "status-503", None]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_faults(make_emulator, status: int) -> None:
    emu = make_emulator(faults=[Fault("status", status=status, times=1)])
    api = RawApi(emu)
    r = api.post("/files/byids", {"items": [{"externalId": "synthetic_00000.png"}]})
    assert r.status_code == status and r.json()["error"]["code"] == status


def test_drop_fault_breaks_the_connection(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("drop", times=1)])
    api = RawApi(emu)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # EOF or reset
        api.post("/files/byids", {"items": [{"externalId": "synthetic_00000.png"}]})
    ok = api.post("/files/byids", {"items": [{"externalId": "synthetic_00000.png"}]})
    assert ok.status_code == 200


def test_drop_after_processing_creates_the_job(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("drop", after=True, times=1,
                                      path_contains="/context/vision/segment")])
    api = RawApi(emu)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # EOF or reset
        api.post("/context/vision/segment", {"items": [{"fileExternalId": "synthetic_00000.png"}],
                                             "points": [{"x": 0.5, "y": 0.5, "label": 1}]})
    assert len(emu.jobs.jobs) == 1


def test_delay_fault_slows_the_response(make_emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = make_emulator(faults=[Fault("delay", delay_s=0.3, times=1)])
    # The pauses the emulator takes, recorded (not slept) with how many requests had been
    # answered by then: a delay holds its request before the answer.
    pauses: list[tuple[float, int]] = []

    async def pause(seconds: float) -> None:
        pauses.append((seconds, sum(e.path.endswith("/files/byids") for e in emu.requests)))

    monkeypatch.setattr(emulator_app, "asyncio",
                        types.SimpleNamespace(**{**vars(asyncio), "sleep": pause}))
    api = RawApi(emu)
    assert api.post("/files/byids", {"items": [{"externalId": "synthetic_00000.png"}]}
                    ).status_code == 200
    assert pauses == [(0.3, 0)]
    assert api.post("/files/byids", {"items": [{"externalId": "synthetic_00000.png"}]}
                    ).status_code == 200
    assert pauses == [(0.3, 0)]  # once: the second answer is not held
    assert [e.fault for e in emu.requests if e.path.endswith("/files/byids")] == ["delay", None]


def test_job_and_item_fail_faults(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("job_fail", times=1, message="model crashed"),
                                Fault("item_fail", times=1, message="image unreadable")])
    api = RawApi(emu)
    body = {"items": [{"fileExternalId": "synthetic_00000.png"}],
            "points": [{"x": 0.5, "y": 0.5, "label": 1}]}
    j1 = wait_terminal(api, api.post("/context/vision/segment", body).json()["jobId"])
    assert j1["status"] == "Failed" and j1["errorMessage"] == "model crashed"
    assert "failedItems" not in j1
    j2 = wait_terminal(api, api.post("/context/vision/segment", body).json()["jobId"])
    assert j2["status"] == "Failed" and j2["failedItems"][0]["errorMessage"] == "image unreadable"
    j3 = wait_terminal(api, api.post("/context/vision/segment", body).json()["jobId"])
    assert j3["status"] == "Completed"


def test_token_expiry_fault(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("token_expiry", times=1)])
    api = RawApi(emu)
    body = {"items": [{"externalId": "synthetic_00000.png"}]}
    assert api.post("/files/byids", body).status_code == 401
    assert api.post("/files/byids", body).status_code == 401  # that token is gone for good
    fresh = emu.issue_token()
    assert api.post("/files/byids", body, token=fresh).status_code == 200


def test_rate_limit_answers_429_without_retry_after(make_emulator) -> None:
    emu = make_emulator(rate_limit_rps=5)
    api = RawApi(emu)
    codes = [api.post("/files/byids", {"items": [{"externalId": "synthetic_00000.png"}]})
             for _ in range(12)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited and "retry-after" not in limited[0].headers
    assert sum(r.status_code == 200 for r in codes) >= 5


def test_seeded_faults_are_deterministic(make_emulator) -> None:
    def run(seed: int) -> list[int]:
        emu = make_emulator(faults=[Fault("status", status=503, probability=0.4)], seed=seed)
        api = RawApi(emu)
        return [api.post("/files/byids", {"items": [{"externalId": "synthetic_00000.png"}]})
                .status_code for _ in range(30)]

    a, b, c = run(7), run(7), run(8)
    assert a == b and a != c and 503 in a and 200 in a


def test_faults_can_be_set_over_http(make_emulator) -> None:
    emu = make_emulator()
    r = httpx.post(f"{emu.base_url}/_emulator/faults",
                   json={"seed": 1, "faults": [{"kind": "status", "status": 502, "times": 1,
                                                "methods": ["POST"]}]})
    assert r.json() == {"faults": 1}
    api = RawApi(emu)
    assert api.post("/files/byids", {"items": [{"id": 1}]}).status_code == 502
    bad = httpx.post(f"{emu.base_url}/_emulator/faults", json={"faults": [{"kind": "meteor"}]})
    assert bad.status_code == 400


def test_request_log_records_without_headers(make_emulator) -> None:
    emu = make_emulator()
    api = RawApi(emu)
    api.post("/files/byids", {"items": [{"externalId": "synthetic_00000.png"}]})
    log = httpx.get(f"{emu.base_url}/_emulator/requests").json()["items"]
    assert log[-1]["path"].endswith("/files/byids") and log[-1]["status"] == 200
    assert api.token not in str(log)


# --- a retired Vision API ----------------------------------------------------------------------


def _retired_body_ok(r: httpx.Response) -> None:
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["code"] == 404 and err["message"] and "missing" not in err


def test_a_retired_emulator_answers_the_segment_routes_404_without_missing(
        make_emulator) -> None:
    emu = make_emulator(retired=True)
    api = RawApi(emu)
    fid = api.file_id("synthetic_00000.png")
    body = {"items": [{"fileId": fid}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]}
    _retired_body_ok(api.post("/context/vision/segment", body))
    _retired_body_ok(api.get("/context/vision/segment/1"))
    # The route is gone: no token, no beta header or a malformed body change the answer.
    _retired_body_ok(api.http.post(api.root + "/context/vision/segment", json={}))
    _retired_body_ok(api.get("/context/vision/segment/abc", beta=False))
    # An unknown route answers just the same.
    assert api.get("/no/such/route").json() == api.get("/context/vision/segment/1").json()
    assert len(emu.jobs.jobs) == 0
    # Files, tokens and annotations keep working.
    link = api.post("/files/downloadlink", {"items": [{"id": fid}]}).json()["items"][0]
    assert httpx.get(link["downloadUrl"]).content[:4] == b"\x89PNG"
    assert api.post("/annotations", {"items": [_annotation(fid, "kept")]}).status_code == 201
    listed = api.post("/annotations/list", {"filter": {
        "annotatedResourceType": "file", "annotatedResourceIds": [{"id": fid}]}}).json()
    assert [a["data"]["label"] for a in listed["items"]] == ["kept"]
    assert httpx.get(f"{emu.base_url}/_emulator/stats").json()["vision_retired"] is True
    statuses = [(r.method, r.status) for r in emu.requests if "vision" in r.path]
    assert statuses == [("POST", 404), ("GET", 404), ("POST", 404), ("GET", 404), ("GET", 404)]


def test_the_vision_api_can_be_retired_and_restored_while_serving(make_emulator) -> None:
    emu = make_emulator()
    api = RawApi(emu)
    fid = api.file_id("synthetic_00001.png")
    body = {"items": [{"fileId": fid}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]}
    job = api.post("/context/vision/segment", body).json()
    emu.retired = True
    _retired_body_ok(api.get(f"/context/vision/segment/{job['jobId']}"))
    emu.retired = False
    assert wait_terminal(api, job["jobId"])["status"] == "Completed"
    assert api.post("/context/vision/segment", body).status_code == 200


# --- lifecycle -------------------------------------------------------------------------------


def test_clean_shutdown_frees_port_and_threads(images: list[SyntheticImage]) -> None:
    before = {t.name for t in threading.enumerate()}
    emu = Emulator(images=images[:1]).start()
    port = emu.port
    assert httpx.get(f"{emu.base_url}/_emulator/requests").status_code == 200
    emu.stop()
    after = {t.name for t in threading.enumerate()}
    assert "cogseg-emulator" not in after - before
    s = socket.socket()
    try:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        s.close()
    emu.stop()  # idempotent
