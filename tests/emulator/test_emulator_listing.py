"""The emulator's listings over real loopback HTTP with raw httpx: ``files/list`` (filters,
cursor, partitions, short pages) and ``models/instances/list`` (CogniteFile nodes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cogseg_ml.emulator.server import Emulator
from tests.conftest import RawApi


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator]) -> Emulator:
    """Nine files: three data sets' worth, directories, labels, metadata, uploads, nodes."""
    e = make_emulator(images=[])
    ds_a = e.state.add_data_set("inspections")
    ds_b = e.state.add_data_set("archive")
    specs: list[dict[str, Any]] = [
        {"name": "a0.jpg", "directory": "/site-a/pumps", "data_set_id": ds_a,
         "labels": ["valve-survey"], "metadata": {"camera": "drone"}},
        {"name": "a1.png", "directory": "/site-a/pumps", "data_set_id": ds_a,
         "labels": ["valve-survey", "2026"]},
        {"name": "a2.jpg", "directory": "/site-a/tanks", "data_set_id": ds_a,
         "metadata": {"camera": "handheld"}, "uploaded": False},
        {"name": "notes.pdf", "directory": "/site-a/pumps", "data_set_id": ds_a},
        {"name": "b0.jpg", "directory": "/site-b", "data_set_id": ds_b, "labels": ["2026"]},
        {"name": "b1.jpg", "directory": "/site-b", "instance_id": ("plant", "cam-b1")},
        {"name": "c0.jpg", "instance_id": ("plant", "cam-c0"), "uploaded": False},
        {"name": "c1.txt", "instance_id": ("plant", "doc-c1")},
        {"name": "d0.jpeg", "instance_id": ("other", "cam-d0"), "directory": "/site-a/x"},
    ]
    for spec in specs:
        e.add_image(b"\x89PNG", spec.pop("name"), external_id=None, **spec)
    return e


def names(api: RawApi, body: dict[str, Any]) -> list[str]:
    r = api.post("/files/list", body, beta=False)
    assert r.status_code == 200, r.text
    return [f["name"] for f in r.json()["items"]]


def test_every_filter_field_the_emulator_models_is_applied(emu: Emulator) -> None:
    api = RawApi(emu)
    assert names(api, {"filter": {"directoryPrefix": "/site-a/"}}) == \
        ["a0.jpg", "a1.png", "a2.jpg", "notes.pdf", "d0.jpeg"]
    assert names(api, {"filter": {"directoryPrefix": "/SITE-A/"}}) == []  # case-sensitive
    assert names(api, {"filter": {"dataSetIds": [{"externalId": "archive"}]}}) == ["b0.jpg"]
    ds = next(i for i, x in emu.state.data_sets.items() if x == "inspections")
    assert len(names(api, {"filter": {"dataSetIds": [{"id": ds}]}})) == 4
    assert names(api, {"filter": {"dataSetIds": [{"externalId": "nope"}]}}) == []
    assert names(api, {"filter": {"mimeType": "image/png"}}) == ["a1.png"]
    assert names(api, {"filter": {"labels": {"containsAny": [{"externalId": "2026"}]}}}) == \
        ["a1.png", "b0.jpg"]
    assert names(api, {"filter": {"labels": {"containsAll": [
        {"externalId": "2026"}, {"externalId": "valve-survey"}]}}}) == ["a1.png"]
    assert names(api, {"filter": {"metadata": {"camera": "drone"}}}) == ["a0.jpg"]
    assert names(api, {"filter": {"uploaded": False}}) == ["a2.jpg", "c0.jpg"]
    assert names(api, {"filter": {"name": "b1.jpg"}}) == ["b1.jpg"]
    first = min(f.created_time for f in emu.state.files.values())
    assert len(names(api, {"filter": {"createdTime": {"min": first}}})) == 9
    assert names(api, {"filter": {"uploadedTime": {"max": first - 1}}}) == []
    assert names(api, {"filter": {"directoryPrefix": "/site-a/", "uploaded": True,
                                  "mimeType": "image/jpeg"}}) == ["a0.jpg", "d0.jpeg"]
    file = api.post("/files/list", {"filter": {"name": "a0.jpg"}}, beta=False).json()["items"][0]
    assert file["directory"] == "/site-a/pumps" and file["labels"] == [
        {"externalId": "valve-survey"}] and file["metadata"] == {"camera": "drone"}
    assert file["dataSetId"] == ds and file["uploaded"] is True and "uploadedTime" in file


def test_the_cursor_walks_every_page_and_a_short_page_is_not_the_last(emu: Emulator) -> None:
    api = RawApi(emu)
    emu.state.list_page_cap = 2  # pages shorter than the limit, still with a cursor
    seen, pages, cursor = [], 0, None
    while True:
        body: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.post("/files/list", body, beta=False).json()
        pages += 1
        assert len(page["items"]) <= 2
        seen += [f["id"] for f in page["items"]]
        cursor = page.get("nextCursor")
        if not cursor:
            break
    assert pages == 5 and seen == sorted(emu.state.files)


def test_partitions_split_the_files_each_with_its_own_cursor(emu: Emulator) -> None:
    api = RawApi(emu)
    parts = [names(api, {"partition": f"{m}/3", "limit": 1000}) for m in (1, 2, 3)]
    assert sorted(n for p in parts for n in p) == sorted(f.name for f in emu.state.files.values())
    assert all(parts)
    page = api.post("/files/list", {"partition": "1/3", "limit": 1}, beta=False).json()
    other = api.post("/files/list", {"partition": "2/3", "limit": 1,
                                     "cursor": page["nextCursor"]}, beta=False)
    assert other.status_code == 400 and "cursor" in other.json()["error"]["message"]


@pytest.mark.parametrize(("body", "said"), [
    ({"partition": "11/11"}, "partition"), ({"partition": "0/4"}, "partition"),
    ({"partition": "3/2"}, "partition"), ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
    ({"filter": {"directoryPrefx": "/a"}}, "filter.directoryPrefx"),
    ({"filter": {"uploaded": "yes"}}, "filter.uploaded"),
    ({"filter": {"labels": {"containsAny": []}}}, "filter.labels"),
    ({"filter": {"dataSetIds": [{"id": 1, "externalId": "x"}]}}, "filter.dataSetIds"),
    ({"filter": {"assetSubtreeIds": [{"id": 1}]}}, "assetSubtreeIds"),
    ({"cursor": "not-a-cursor"}, "Invalid cursor"),
])
def test_bad_listing_requests_are_400_naming_the_field(emu: Emulator, body: dict[str, Any],
                                                       said: str) -> None:
    r = RawApi(emu).post("/files/list", body, beta=False)
    assert r.status_code == 400
    assert said in r.json()["error"]["message"]


def test_a_cursor_only_continues_its_own_filter(emu: Emulator) -> None:
    api = RawApi(emu)
    page = api.post("/files/list", {"filter": {"uploaded": True}, "limit": 2},
                    beta=False).json()
    again = api.post("/files/list", {"filter": {"uploaded": True}, "limit": 5,
                                     "cursor": page["nextCursor"]}, beta=False)
    assert again.status_code == 200  # another page size is fine
    moved = api.post("/files/list", {"filter": {"uploaded": False},
                                     "cursor": page["nextCursor"]}, beta=False)
    assert moved.status_code == 400


VIEW = {"source": {"type": "view", "space": "cdf_cdm", "externalId": "CogniteFile",
                   "version": "v1"}}


def nodes(api: RawApi, body: dict[str, Any]) -> list[dict[str, Any]]:
    out, cursor = [], None
    while True:
        r = api.post("/models/instances/list",
                     {**body, **({"cursor": cursor} if cursor else {})}, beta=False)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["items"]
        cursor = page["nextCursor"]
        if not cursor:
            return out


def test_cognite_file_nodes_of_a_space_are_listed_with_their_properties(emu: Emulator) -> None:
    api = RawApi(emu)
    space = {"equals": {"property": ["node", "space"], "value": "plant"}}
    got = nodes(api, {"instanceType": "node", "sources": [VIEW], "filter": space, "limit": 1})
    assert [(n["space"], n["externalId"]) for n in got] == \
        [("plant", "cam-b1"), ("plant", "cam-c0"), ("plant", "doc-c1")]
    props = got[0]["properties"]["cdf_cdm"]["CogniteFile/v1"]
    assert props["name"] == "b1.jpg" and props["mimeType"] == "image/jpeg"
    assert props["directory"] == "/site-b" and props["isUploaded"] is True
    assert got[1]["properties"]["cdf_cdm"]["CogniteFile/v1"]["isUploaded"] is False
    flt = {"and": [space, {"prefix": {"property": ["node", "externalId"], "value": "cam-"}},
                   {"not": {"equals": {"property": ["cdf_cdm", "CogniteFile/v1", "isUploaded"],
                                       "value": False}}}]}
    assert [n["externalId"] for n in nodes(api, {"sources": [VIEW], "filter": flt})] == \
        ["cam-b1"]
    bare = nodes(api, {"filter": {"in": {"property": ["node", "space"], "values": ["other"]}}})
    assert [n["externalId"] for n in bare] == ["cam-d0"] and bare[0]["properties"] == {}


@pytest.mark.parametrize(("body", "said"), [
    ({"sources": [{"source": {**VIEW["source"], "externalId": "CogniteAsset"}}]},
     "CogniteAsset/v1 does not exist"),
    ({"instanceType": "edge"}, "nodes only"),
    ({"filter": {"matchAll": {}}}, "filter.matchAll"),
    ({"filter": {"equals": {"property": ["node", "color"], "value": 1}}}, "property"),
    ({"limit": 0}, "limit"),
])
def test_bad_instance_listings_are_400_naming_the_problem(emu: Emulator, body: dict[str, Any],
                                                          said: str) -> None:
    r = RawApi(emu).post("/models/instances/list", body, beta=False)
    assert r.status_code == 400
    assert said in r.json()["error"]["message"]


def test_a_file_without_content_has_no_download_link(emu: Emulator) -> None:
    api = RawApi(emu)
    empty = next(f.id for f in emu.state.files.values() if not f.uploaded)
    r = api.post("/files/downloadlink", {"items": [{"id": empty}]}, beta=False)
    assert r.status_code == 400 and "uploaded: false" in r.json()["error"]["message"]
    meta = api.post("/files/byids", {"items": [{"id": empty}]}, beta=False).json()["items"][0]
    assert meta["uploaded"] is False and "uploadedTime" not in meta
