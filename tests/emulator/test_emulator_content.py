"""Content replacement, ``(name, bytes)`` images, the package export and the request log's
client port, over raw loopback HTTP (no cogseg client involved)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cogseg_ml.emulator.segmentation_engines import EngineSegment, RegionGrowingEngine
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image, make_image
from cogseg_ml.mask_codec import decode, polygons_to_rle
from cogseg_ml.prompts import Box, Point
from tests.conftest import RawApi, wait_terminal

XID = "synthetic_00000.png"


def _meta(api: RawApi, xid: str = XID) -> dict[str, Any]:
    r = api.post("/files/byids", {"items": [{"externalId": xid}]})
    assert r.status_code == 200
    item: dict[str, Any] = r.json()["items"][0]
    return item


def _download(api: RawApi, xid: str = XID) -> bytes:
    r = api.post("/files/downloadlink", {"items": [{"externalId": xid}]})
    return httpx.get(r.json()["items"][0]["downloadUrl"]).content


def _mask_of(body: dict[str, Any], h: int, w: int) -> np.ndarray:
    seg = body["items"][0]["segments"][0]
    polys = [[(v["x"], v["y"]) for v in p["vertices"]] for p in seg["polygons"]]
    return decode([polygons_to_rle(polys, h, w)])[0]


def _box_job(api: RawApi, xid: str, img: SyntheticImage) -> int:
    b = img.objects[0].box()
    r = api.post("/context/vision/segment", {
        "items": [{"fileExternalId": xid}], "points": [],
        "boundingBox": {"xMin": b.x_min, "yMin": b.y_min, "xMax": b.x_max, "yMax": b.y_max}})
    assert r.status_code == 200
    return int(r.json()["jobId"])


def _put(emu: Emulator, data: bytes, **params: str) -> httpx.Response:
    return httpx.put(f"{emu.base_url}/_emulator/files", content=data, params=params)


# --- content replacement -----------------------------------------------------------------------


def test_files_byids_time_fields_on_a_fresh_file(make_emulator) -> None:
    emu = make_emulator()
    item = _meta(RawApi(emu))
    assert item["uploaded"] is True
    for key in ("createdTime", "lastUpdatedTime", "uploadedTime"):
        assert type(item[key]) is int and item[key] > 1_600_000_000_000  # epoch ms
    assert item["createdTime"] == item["lastUpdatedTime"] == item["uploadedTime"]


def test_replace_file_bumps_times_strictly_keeps_the_id_and_serves_new_bytes(
        make_emulator, images: list[SyntheticImage]) -> None:
    emu = make_emulator()
    api = RawApi(emu)
    before = _meta(api)
    frozen = before["lastUpdatedTime"] / 1000
    emu.state.clock = lambda: frozen  # same millisecond as the upload: no clock gap to rely on
    new = encode_image(images[3].pixels, "png")
    rec = emu.replace_file(XID, new)
    after = _meta(api)
    assert rec.id == after["id"] == before["id"]
    assert after["lastUpdatedTime"] > before["lastUpdatedTime"]
    assert after["uploadedTime"] > before["uploadedTime"]
    assert after["createdTime"] == before["createdTime"]
    assert set(after) == set(before)
    assert _download(api) == new
    again = encode_image(images[4].pixels, "png")
    emu.replace_file(before["id"], again)  # by id this time
    third = _meta(api)
    assert third["lastUpdatedTime"] > after["lastUpdatedTime"]
    assert third["uploadedTime"] > after["uploadedTime"]
    assert _download(api) == again
    with pytest.raises(KeyError):
        emu.replace_file("no-such-file", new)


def test_admin_put_with_overwrite_replaces_the_content(make_emulator,
                                                      images: list[SyntheticImage]) -> None:
    emu = make_emulator()
    api = RawApi(emu)
    before = _meta(api)
    new = encode_image(images[2].pixels, "png")
    assert _put(emu, new, name=XID, externalId=XID).status_code == 409  # no overwrite: refused
    r = _put(emu, new, name=XID, externalId=XID, overwrite="true")
    assert r.status_code == 200
    assert r.json()["id"] == before["id"] and r.json()["name"] == XID
    after = _meta(api)
    assert after == r.json()
    assert after["lastUpdatedTime"] > before["lastUpdatedTime"]
    assert after["uploadedTime"] > before["uploadedTime"]
    assert _download(api) == new
    assert len(emu.state.files) == len(images)  # replaced, not duplicated
    # name optional when overwriting; a new name's extension sets the MIME type
    jpeg = encode_image(images[2].pixels, "jpeg")
    r = _put(emu, jpeg, name="renamed.jpg", externalId=XID, overwrite="true")
    assert r.status_code == 200 and r.json()["mimeType"] == "image/jpeg"
    assert _put(emu, new, externalId=XID, overwrite="true").json()["name"] == "renamed.jpg"
    # an unknown externalId with overwrite is created
    r = _put(emu, new, name="fresh.png", externalId="fresh", overwrite="true")
    assert r.status_code == 201 and api.file_id("fresh") == r.json()["id"]
    assert _put(emu, new, name="x.png", overwrite="true").status_code == 400
    assert _put(emu, new, name="x.png", externalId=XID, overwrite="yes").status_code == 400
    assert _put(emu, new, externalId="nameless").status_code == 400


class _GatedEngine:
    """Region growing whose first call blocks until released (so a later job stays Queued)."""

    name = "gated"

    def __init__(self) -> None:
        self.inner = RegionGrowingEngine()
        self.entered = threading.Event()
        self.release = threading.Event()
        self._first = True

    def segment(self, image: np.ndarray, points: Sequence[Point],
                box: Box | None) -> list[EngineSegment]:
        if self._first:
            self._first = False
            self.entered.set()
            assert self.release.wait(10)
        return self.inner.segment(image, points, box)


def test_jobs_run_on_the_content_they_were_created_on(make_emulator,
                                                     images: list[SyntheticImage]) -> None:
    engine = _GatedEngine()
    emu = make_emulator(images=images[:2], engine=engine, concurrency=1, processing_time_s=0)
    api = RawApi(emu)
    old = images[0]
    new = make_image(seed=77, height=150, width=410)  # another picture, another size
    blocker = _box_job(api, "synthetic_00001.png", images[1])
    assert engine.entered.wait(10)  # the only worker is busy: the next job waits Queued
    queued = _box_job(api, XID, old)
    assert api.get(f"/context/vision/segment/{queued}").json()["status"] == "Queued"
    r = _put(emu, encode_image(new.pixels, "png"), externalId=XID, overwrite="true")
    assert r.status_code == 200
    fresh = _box_job(api, XID, new)
    engine.release.set()
    assert wait_terminal(api, blocker)["status"] == "Completed"
    done_old = wait_terminal(api, queued)
    done_new = wait_terminal(api, fresh)
    assert done_old["status"] == done_new["status"] == "Completed"
    assert done_old["items"][0]["fileId"] == done_new["items"][0]["fileId"] == r.json()["id"]
    assert np.array_equal(_mask_of(done_old, old.height, old.width), old.objects[0].mask)
    assert np.array_equal(_mask_of(done_new, new.height, new.width), new.objects[0].mask)


# --- (name, bytes) images ----------------------------------------------------------------------


def test_name_bytes_pairs_get_their_name_as_external_id(make_emulator, tmp_path: Path,
                                                       images: list[SyntheticImage]) -> None:
    png = encode_image(images[0].pixels, "png")
    emu = make_emulator(images=[("pair.png", png), ("other.jpg", png)])
    api = RawApi(emu)
    item = _meta(api, "pair.png")
    assert item["name"] == "pair.png" and item["mimeType"] == "image/png"
    assert _meta(api, "other.jpg")["name"] == "other.jpg"
    assert _download(api, "pair.png") == png
    # the same as a folder's files
    (tmp_path / "pair.png").write_bytes(png)
    folder = RawApi(make_emulator(images=tmp_path))
    fitem = _meta(folder, "pair.png")
    assert {k: fitem[k] for k in ("externalId", "name", "mimeType")} == {
        k: item[k] for k in ("externalId", "name", "mimeType")}


# --- package export ----------------------------------------------------------------------------


def test_emulator_is_exported_lazily() -> None:
    code = (
        "import sys\n"
        "import cogseg_ml, cogseg_ml.emulator.synthetic_images\n"
        "heavy = [m for m in sys.modules if m.startswith(('cogseg_ml.emulator.server', "
        "'cogseg_ml.emulator.app', 'starlette', 'uvicorn'))]\n"
        "assert not heavy, heavy\n"
        "from cogseg_ml.emulator import Emulator\n"
        "import cogseg_ml.emulator.server as server\n"
        "assert Emulator is server.Emulator\n"
        "import cogseg_ml.emulator as pkg\n"
        "assert 'Emulator' in dir(pkg)\n"
        "try:\n"
        "    pkg.Nope\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


# --- request log: the client's port ------------------------------------------------------------


def test_request_log_records_the_client_port_per_connection(make_emulator) -> None:
    emu = make_emulator()
    a, b = RawApi(emu), RawApi(emu)
    port_of: dict[str, int] = {}
    for api in (a, b, a, b):
        r = api.post("/files/byids", {"items": [{"externalId": XID}]})
        _, port = r.extensions["network_stream"].get_extra_info("client_addr")
        port_of[r.headers["x-request-id"]] = port
    rows = httpx.get(f"{emu.base_url}/_emulator/requests").json()["items"]
    logged = {row["request_id"]: row["client_port"] for row in rows}
    assert {rid: logged[rid] for rid in port_of} == port_of
    assert len(set(port_of.values())) == 2  # two clients, two connections, two ports
    py = {e.request_id: e.client_port for e in emu.requests}
    assert {rid: py[rid] for rid in port_of} == port_of
    # still no headers or tokens in the log
    assert set(rows[0]) == {"time", "method", "path", "status", "request_id", "fault",
                            "duration_s", "client_port"}
    assert a.token not in str(rows) and b.token not in str(rows)
