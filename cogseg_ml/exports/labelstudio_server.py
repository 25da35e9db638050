"""A labels file straight into a Label Studio server: project, images, tasks, predictions.

:func:`push_labelstudio` (``cogseg export LABELS.json --to labelstudio --ls-url URL``) talks to
Label Studio's REST API (tested on 1.23):

1. finds the project by id or by exact title (``GET /api/projects/``), creating it when no
   project has that title, and sets our labelling config when the project's differs
   (``POST``/``PATCH /api/projects/``);
2. lists the project's tasks (``GET /api/tasks/?project=ID``) and reads each one's stable key,
   ``data.cogseg_key``: the image's CDF reference and the SHA-256 of its bytes (see
   :func:`task_key`);
3. uploads the bytes of the images without a task (``POST /api/projects/ID/import`` with
   ``commit_to_project=false``: Label Studio keeps the files in its own media storage and
   serves them at ``/data/upload/...``, to logged-in users, with no server settings) and
   imports their tasks with the masks as predictions, in batches;
4. for a task already there, replaces our prediction when the masks changed (a result ``id``
   ``cogseg-<annotation id>`` marks ours) and leaves it alone otherwise. Annotations,
   other predictions, and tasks of images not in this labels file are never touched.

So the command can be run again, after a stop half way too: nothing is imported twice.

The calls and their typed errors are :mod:`cogseg_ml.exports.labelstudio_client`'s (the token
never shows in any of them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from cogseg_ml.errors import ValidationError
from cogseg_ml.exports.labelled import Labelled, LabelledImage, Undecided
from cogseg_ml.exports.labelstudio import (
    check_scores,
    check_tag_names,
    label_config,
    model_version_of,
    task,
)
from cogseg_ml.exports.labelstudio_client import (
    LabelStudioClient,
    LabelStudioProjectError,
    Secret,
)
from cogseg_ml.exports.report import left_out
from cogseg_ml.store.image_fetcher import ImageFetcher

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cogseg_ml.cache.mask_cache import MaskCache
    from cogseg_ml.config import CdfConfig

__all__ = ["KEY_FIELD", "PushReport", "push_labelstudio", "task_key"]

#: The task data field that identifies an image across runs.
KEY_FIELD = "cogseg_key"
#: Upload and import at most this many images, and about this many bytes, per request.
BATCH_IMAGES = 50
BATCH_BYTES = 64 * 1024 * 1024


def task_key(record: Mapping[str, Any]) -> str:
    """An image's stable key in Label Studio (``data.cogseg_key``): its CDF reference and the
    SHA-256 of the bytes its masks were made on, e.g.
    ``cdf:{"externalId":"a.png"}@sha256:1f2e...``. The same image exported again, from this
    labels file or a later one, finds its task; a file replaced in CDF gets a task of its own."""
    ref = json.dumps(record.get("cdf_file"), sort_keys=True, separators=(",", ":"),
                     ensure_ascii=False)
    sha = record.get("sha256")
    return f"cdf:{ref}" + (f"@sha256:{sha}" if sha else "")


def _ours(prediction: Mapping[str, Any]) -> bool:
    results = prediction.get("result") or []
    return bool(results) and all(str(r.get("id", "")).startswith("cogseg-") for r in results)


def _shape(prediction: Mapping[str, Any]) -> Any:
    """What must match for a stored prediction to be ours unchanged."""
    return (prediction.get("model_version"),
            [(r.get("id"), r.get("from_name"), r.get("to_name"), r.get("type"),
              r.get("original_width"), r.get("original_height"), r.get("score"),
              r.get("value")) for r in prediction.get("result") or []])


@dataclass
class PushReport:
    """What one push to Label Studio did.

    Attributes:
        url: the server.
        project_id, project_title: the project written to.
        project_created: it was made by this push.
        config_updated: its labelling config was replaced by ours.
        images: images in the labels file (after the decisions).
        created: tasks created (their images uploaded).
        updated: tasks already there whose prediction (or data) was replaced.
        unchanged: tasks already there as this push would write them.
        objects: masks in the predictions written or kept.
        empty: masks skipped because they have no pixels.
        dropped: masks left out by review decisions.
        from_cache, downloaded: where the images' bytes came from.
        uploaded_bytes: image bytes sent.
    """

    url: str
    project_id: int = 0
    project_title: str = ""
    project_created: bool = False
    config_updated: bool = False
    images: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    objects: int = 0
    empty: int = 0
    dropped: int = 0
    from_cache: int = 0
    downloaded: int = 0
    uploaded_bytes: int = 0
    task_ids: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def project_url(self) -> str:
        """The project's page."""
        return f"{self.url}/projects/{self.project_id}/data"

    def summary(self) -> str:
        """One line for people."""
        state = "created" if self.project_created else (
            "labelling config updated" if self.config_updated else "existing")
        tail = left_out(self.dropped, self.empty)
        return (f"labelstudio: project {self.project_title!r} (id {self.project_id}, {state}): "
                f"{self.images} images: {self.created} tasks created, {self.updated} updated, "
                f"{self.unchanged} unchanged; {self.objects} objects{tail}; images: "
                f"{self.from_cache} from the cache, {self.downloaded} downloaded")


def _choose_project(client: LabelStudioClient, project: str | int | None, default: str,
                    config: str, report: PushReport) -> None:
    if isinstance(project, int) or (isinstance(project, str) and project.strip().isdigit()):
        pid = int(project)
        found = client.project(pid)
        if found is None:
            raise LabelStudioProjectError(f"Label Studio at {client.url} has no project "
                                          f"{pid} that this token's user can see; give an "
                                          "existing id, or a title (made when missing)")
    else:
        title = (project or default).strip()
        if not title:
            raise ValidationError("the Label Studio project title is empty; give a title or "
                                  "an id")
        same = [p for p in client.projects(title) if p.get("title") == title]
        if len(same) > 1:
            ids = ", ".join(str(p["id"]) for p in same)
            raise LabelStudioProjectError(f"{len(same)} Label Studio projects are titled "
                                          f"{title!r} (ids {ids}); give the id of one")
        if same:
            found = client.project(int(same[0]["id"])) or same[0]
        else:
            found = client.create_project(title, config)
            report.project_created = True
    report.project_id, report.project_title = int(found["id"]), str(found.get("title", ""))
    if not report.project_created and \
            str(found.get("label_config", "")).strip() != config.strip():
        client.set_config(report.project_id, config)
        report.config_updated = True


class _Pending:
    """New tasks waiting for their images' upload and import."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes, dict[str, Any]]] = []
        self.size = 0

    def add(self, name: str, data: bytes, one: dict[str, Any]) -> None:
        self.items.append((name, data, one))
        self.size += len(data)

    def full(self) -> bool:
        return len(self.items) >= BATCH_IMAGES or self.size >= BATCH_BYTES

    def flush(self, client: LabelStudioClient, report: PushReport) -> None:
        if not self.items:
            return
        urls = client.upload(report.project_id, [(n, d) for n, d, _ in self.items])
        tasks = []
        for (_, _, one), url in zip(self.items, urls, strict=True):
            one["data"]["image"] = url
            tasks.append(one)
        ids = client.import_tasks(report.project_id, tasks)
        for one, tid in zip(tasks, ids, strict=True):
            report.task_ids[one["data"][KEY_FIELD]] = tid
        report.created += len(tasks)
        report.uploaded_bytes += self.size
        self.items, self.size = [], 0


def _update(client: LabelStudioClient, stored: Mapping[str, Any], one: Mapping[str, Any],
            report: PushReport) -> None:
    """Bring a task already there to what this push would write (predictions, data)."""
    tid = int(stored["id"])
    changed = False
    data = {**stored.get("data", {}), **{k: v for k, v in one["data"].items() if k != "image"}}
    if data != stored.get("data"):
        client.update_task_data(tid, data)
        changed = True
    ours = [p for p in stored.get("predictions") or [] if _ours(p)]
    wanted = one["predictions"]
    if [_shape(p) for p in ours] != [_shape(p) for p in wanted]:
        for p in ours:
            client.delete_prediction(int(p["id"]))
        for p in wanted:
            client.add_prediction(tid, p)
        changed = True
    report.task_ids[one["data"][KEY_FIELD]] = tid
    if changed:
        report.updated += 1
    else:
        report.unchanged += 1


def push_labelstudio(labels: str | Path, url: str, *, token: str | Secret | None = None,
                     project: str | int | None = None, model_version: str | None = None,
                     from_name: str = "label", to_name: str = "image",
                     decisions: str | Path | None = None, undecided: Undecided = "drop",
                     cache: str | Path | MaskCache | None = None,
                     config: CdfConfig | None = None,
                     transport: httpx.BaseTransport | None = None) -> PushReport:
    """Put a labels file into a Label Studio project: images uploaded, one task per image
    with the masks as predictions; run again, it adds nothing twice (see the module).

    Args:
        labels: the COCO file a labelling run wrote (``cogseg label --out``).
        url: the Label Studio server, e.g. ``http://localhost:8080``.
        token: a legacy or personal access token; ``None``: ``LABEL_STUDIO_API_KEY``.
        project: a project id (it must exist), or a title: the one project with exactly that
            title, created when there is none; ``None``: the labels file's name without its
            suffix.
        model_version, from_name, to_name: as for
            :func:`~cogseg_ml.exports.to_labelstudio`.
        decisions, undecided, cache, config: as for :func:`~cogseg_ml.exports.to_coco`.
        transport: an httpx transport for the Label Studio calls (tests).

    Returns:
        What was done (see :class:`PushReport`).

    Raises:
        ValidationError: the labels, decisions or options are bad, or an image is missing
            (all checked before the first call that changes anything).
        LabelStudioError: the server cannot be reached (:class:`LabelStudioUnreachable`),
            refused the token (:class:`LabelStudioAuthError`), has no such project or several
            with the title (:class:`LabelStudioProjectError`), or refused a request
            (:class:`LabelStudioRequestError`); tasks imported before stay, and a run again
            goes on from there.
        ApiUnavailableError, AuthenticationError: CDF, for images not in the cache.
    """
    check_tag_names(from_name, to_name)
    labelled = Labelled(labels, decisions, undecided)
    check_scores(labelled)
    keys = [task_key(r) for r in labelled.images]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValidationError(f"{labels}: images listed twice (the same CDF file and bytes): "
                              f"{', '.join(twice[:3])}; keep one of each")
    version = model_version or model_version_of(labelled)
    names = {int(c["id"]): str(c["name"]) for c in labelled.categories}
    cfg = label_config(list(names.values()), from_name, to_name)
    with LabelStudioClient(url, token, transport=transport) as client, \
            ImageFetcher(cache, config) as fetcher:
        report = PushReport(client.url, dropped=labelled.dropped)
        client.whoami()
        fetcher.check(labelled.images)
        _choose_project(client, project, Path(labels).stem, cfg, report)
        existing: dict[str, dict[str, Any]] = {}
        for t in client.tasks(report.project_id):
            key = (t.get("data") or {}).get(KEY_FIELD)
            if isinstance(key, str):
                existing.setdefault(key, t)
        pending = _Pending()
        for item in labelled.each(fetcher):
            one = _task(item, names, version, from_name, to_name)
            report.images += 1
            report.objects += sum(len(p["result"]) for p in one["predictions"])
            report.empty += one.pop("empty")
            key = one["data"][KEY_FIELD]
            if key in existing:
                _update(client, existing[key], one, report)
            else:
                pending.add(item.file_name, item.data, one)
                if pending.full():
                    pending.flush(client, report)
        pending.flush(client, report)
        report.from_cache, report.downloaded = fetcher.from_cache, fetcher.downloaded
    return report


def _task(item: LabelledImage, names: dict[int, str], version: str, from_name: str,
          to_name: str) -> dict[str, Any]:
    one, empty = task(item, names, image="", model_version=version, from_name=from_name,
                      to_name=to_name)
    one["data"][KEY_FIELD] = task_key(item.record)
    one["empty"] = empty
    return one
