"""``cogseg export --to labelstudio --ls-url`` against a real Label Studio 1.23 server: every
image loads through the server, predictions pass Label Studio's own validator, a second run adds
nothing, and the masks come back through Label Studio's COCO export."""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cogseg_ml.cli import main
from cogseg_ml.exports.labelled import Labelled, LabelledImage
from cogseg_ml.exports.labelstudio import label_config
from cogseg_ml.exports.labelstudio_server import task_key
from cogseg_ml.store.image_fetcher import ImageFetcher
from tests.labelstudio.conftest import Demo, Server

#: the first test also waits for the server's first start (see conftest)
pytestmark = pytest.mark.timeout(900)


def _images(demo: Demo) -> list[LabelledImage]:
    labelled = Labelled(demo.labels)
    with ImageFetcher(demo.cache, offline=True) as fetcher:
        return list(labelled.each(fetcher))


def _push(server: Server, demo: Demo, *extra: str, token: str | None = None,
          monkeypatch: pytest.MonkeyPatch) -> tuple[int, float]:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token or server.token)
    t0 = time.perf_counter()
    code = main(["-v", "export", str(demo.labels), "--to", "labelstudio", "--cache",
                 str(demo.cache), "--ls-url", server.url, *extra])
    return code, time.perf_counter() - t0


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def _by_key(tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = [t["data"]["cogseg_key"] for t in tasks]
    assert len(set(keys)) == len(keys), "a task twice"
    return dict(zip(keys, tasks, strict=True))


def test_one_command_makes_a_project_whose_every_image_loads(
        server: Server, demo: Demo, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], quiet_logs: pytest.LogCaptureFixture) -> None:
    code, took = _push(server, demo, "--ls-project", "every image loads",
                       monkeypatch=monkeypatch)
    out = capsys.readouterr()
    assert code == 0, out.err
    print(f"\nfirst push: {took:.2f} s")
    for text in (out.out, out.err, quiet_logs.text):  # -v: DEBUG logs of httpx and httpcore
        assert server.token not in text
    pid = server.project_id("every image loads")
    project = server.http.get(f"/api/projects/{pid}/").json()
    images = _images(demo)
    names = [c["name"] for c in Labelled(demo.labels).categories]
    assert project["label_config"].strip() == label_config(names).strip()
    tasks = _by_key(server.tasks(pid))
    assert len(tasks) == len(images)
    predictions = []
    for item in images:
        t = tasks[task_key(item.record)]
        r = server.http.get(t["data"]["image"])  # the URL the labelling page loads
        assert r.status_code == 200, t["data"]["image"]
        assert r.content == item.data
        assert t["data"]["image_id"] == item.record["id"]
        assert len(t["predictions"]) == (1 if item.annotations else 0)
        if item.annotations:
            (p,) = t["predictions"]
            assert {r["id"] for r in p["result"]} == {f"cogseg-{a['id']}"
                                                      for a in item.annotations}
            predictions.append(p)
    assert sum(len(p["result"]) for p in predictions) == \
        len(json.loads(demo.labels.read_text())["annotations"])
    assert server.validate(project["label_config"], predictions) == []
    # the validator is not vacuous: a label the config lacks is found
    wrong = json.loads(json.dumps(predictions[0]))
    wrong["result"][0]["value"]["polygonlabels"] = ["no-such-label"]
    assert len(server.validate(project["label_config"], [wrong])) == 1
    # the image is not served to someone without a token
    anon = server.http.get(tasks[task_key(images[0].record)]["data"]["image"],
                           headers={"Authorization": ""})
    assert anon.status_code in (401, 403)


def test_running_again_adds_nothing_with_either_kind_of_token(
        server: Server, demo: Demo, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], quiet_logs: pytest.LogCaptureFixture) -> None:
    title = "run twice"
    assert _push(server, demo, "--ls-project", title, monkeypatch=monkeypatch)[0] == 0
    pid = server.project_id(title)
    before = {k: (t["id"], [p["id"] for p in t["predictions"]])
              for k, t in _by_key(server.tasks(pid)).items()}
    capsys.readouterr()
    code, took = _push(server, demo, "--ls-project", title, monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    print(f"\nsecond push (nothing to do): {took:.2f} s")
    assert code == 0, err
    assert f"0 tasks created, 0 updated, {len(before)} unchanged" in err
    # a personal access token (JWT, exchanged for access tokens) finds the same tasks
    pat = server.http.post("/api/token/").json()["token"]
    code, _ = _push(server, demo, "--ls-project", str(pid), token=pat, monkeypatch=monkeypatch)
    out = capsys.readouterr()
    assert code == 0, out.err
    for text in (out.out, out.err, quiet_logs.text):
        assert pat not in text and pat[-20:] not in text
    after = {k: (t["id"], [p["id"] for p in t["predictions"]])
             for k, t in _by_key(server.tasks(pid)).items()}
    assert after == before  # same tasks, same predictions: nothing duplicated or re-made


def test_new_masks_replace_our_prediction_and_nothing_else(
        server: Server, demo: Demo, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    title = "model v2"
    assert _push(server, demo, "--ls-project", title, monkeypatch=monkeypatch)[0] == 0
    pid = server.project_id(title)
    tasks = server.tasks(pid)
    target = next(t for t in tasks if t["predictions"])
    ours = target["predictions"][0]
    annotated = server.http.post(f"/api/tasks/{target['id']}/annotations/",
                                 json={"result": ours["result"]})
    assert annotated.status_code == 201, annotated.text
    foreign = dict(ours["result"][0], id="someone-else")
    added = server.http.post("/api/predictions/", json={
        "task": target["id"], "model_version": "other", "result": [foreign]})
    assert added.status_code == 201, added.text
    capsys.readouterr()
    code, _ = _push(server, demo, "--ls-project", title, "--model-version", "v2",
                    monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    assert code == 0, err
    with_masks = sum(1 for t in tasks if t["predictions"])
    assert f"0 tasks created, {with_masks} updated" in err
    again = {t["id"]: t for t in server.tasks(pid)}
    assert set(again) == {t["id"] for t in tasks}
    for t in tasks:
        mine = [p for p in again[t["id"]]["predictions"] if p["model_version"] == "v2"]
        assert len(mine) == len(t["predictions"])
        if mine:
            assert [r["value"] for r in mine[0]["result"]] == \
                [r["value"] for r in t["predictions"][0]["result"]]
    kept = again[target["id"]]
    assert [p["model_version"] for p in kept["predictions"]].count("other") == 1
    assert len(kept["annotations"]) == 1


def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = segmentation if isinstance(segmentation["counts"], bytes) else \
            mask_utils.frPyObjects(segmentation, height, width)
    return np.asarray(mask_utils.decode(rle), dtype=bool)


def test_masks_come_back_through_label_studios_coco_export(
        server: Server, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    title = "round trip"
    assert _push(server, demo, "--ls-project", title, monkeypatch=monkeypatch)[0] == 0
    pid = server.project_id(title)
    for t in server.tasks(pid):  # a reviewer accepts every prediction as it is
        for p in t["predictions"]:
            r = server.http.post(f"/api/tasks/{t['id']}/annotations/",
                                 json={"result": p["result"], "parent_prediction": p["id"]})
            assert r.status_code == 201, r.text
    export = server.http.get(f"/api/projects/{pid}/export", params={"exportType": "COCO"})
    assert export.status_code == 200, export.text
    with zipfile.ZipFile(io.BytesIO(export.content)) as z:
        theirs = json.loads(z.read("result.json"))
    ours = json.loads(demo.labels.read_text())
    # Label Studio renumbers categories from 0: compare by name
    assert sorted(c["name"] for c in theirs["categories"]) == \
        sorted(c["name"] for c in ours["categories"])
    their_cat = {c["id"]: c["name"] for c in theirs["categories"]}
    our_cat = {c["id"]: c["name"] for c in ours["categories"]}
    images = {item.file_name: item for item in _images(demo)}
    ious = []
    for im in theirs["images"]:
        # uploads are stored as <8 characters>-<our file name>
        item = images[Path(im["file_name"]).name.split("-", 1)[1]]
        assert (im["width"], im["height"]) == (item.width, item.height)
        got = [(their_cat[a["category_id"]], _decode(a["segmentation"], item.height,
                                                     item.width))
               for a in theirs["annotations"] if a["image_id"] == im["id"]]
        assert len(got) == len(item.annotations)
        for ann in item.annotations:
            want = item.mask(ann)
            best = max((float((m & want).sum() / (m | want).sum()) for name, m in got
                        if name == our_cat[ann["category_id"]]), default=0.0)
            ious.append(best)
    assert len(ious) == len(ours["annotations"])
    print(f"\nCOCO round trip: {len(ious)} masks, IoU min {min(ious):.4f}, "
          f"mean {float(np.mean(ious)):.4f}")
    assert min(ious) >= 0.99


def test_folder_export_loads_through_local_files_storage(
        server: Server, demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    """The documented offline route: the folder under the document root, ``?d=`` URLs, a
    Local Files storage connected (not synced) to the project, tasks.json imported."""
    folder = server.document_root / "site-a"
    code = main(["export", str(demo.labels), "--to", "labelstudio", "--cache", str(demo.cache),
                 "--image-prefix", "/data/local-files/?d=site-a/images/", "--out", str(folder)])
    assert code == 0, capsys.readouterr().err
    project = server.http.post("/api/projects/", json={
        "title": "folder route", "label_config": (folder / "label_config.xml").read_text()})
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    storage = server.http.post("/api/storages/localfiles", json={
        "project": pid, "title": "site-a images", "path": str(folder / "images"),
        "use_blob_urls": False})
    assert storage.status_code == 201, storage.text
    tasks = json.loads((folder / "tasks.json").read_text())
    imported = server.http.post(f"/api/projects/{pid}/import", json=tasks)
    assert imported.status_code == 201, imported.text
    stored = server.tasks(pid)
    assert len(stored) == len(tasks)
    for t in stored:
        r = server.http.get(t["data"]["image"])
        assert r.status_code == 200, t["data"]["image"]
        name = t["data"]["image"].rsplit("/", 1)[1]
        assert r.content == (folder / "images" / name).read_bytes()
    config = (folder / "label_config.xml").read_text()
    assert server.validate(config, [p for t in tasks for p in t["predictions"]]) == []


def test_bad_token_and_an_ambiguous_title_are_refused(
        server: Server, demo: Demo, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], quiet_logs: pytest.LogCaptureFixture) -> None:
    wrong = "not-the-token-0123456789"
    code, _ = _push(server, demo, token=wrong, monkeypatch=monkeypatch)
    out = capsys.readouterr()
    assert code == 4
    assert "refused the token (401)" in out.err
    for text in (out.out, out.err, quiet_logs.text):
        assert wrong not in text
    for _ in range(2):
        made = server.http.post("/api/projects/", json={"title": "twice"})
        assert made.status_code == 201
    code, _ = _push(server, demo, "--ls-project", "twice", monkeypatch=monkeypatch)
    assert code == 2
    assert "2 Label Studio projects are titled 'twice'" in capsys.readouterr().err
