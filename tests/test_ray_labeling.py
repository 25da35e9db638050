"""Labelling on Ray Data against the emulator: two actors give the single-process labeler's
COCO file, an actor killed mid-run loses and duplicates nothing, a local model runs in a
GPU-less actor, bad rows come back as failure rows, a retired API is noticed once per actor,
and the results import into a cache the dataset reads without jobs. One local Ray instance
(2 CPUs) for the module."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.data", reason="the ray extra is needed")

import ray
import ray.data

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.wire_schema import Annotation
from cogseg_ml.backends.local_sam import LocalSamBackend
from cogseg_ml.backends.sam2 import save_random_checkpoint
from cogseg_ml.dataset import CdfSegmentationDataset
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import CATEGORIES, SyntheticImage, make_dataset
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.mask_codec import decode, iou_matrix
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.ray import (
    FAILED,
    OK,
    ApiSpec,
    FallbackSpec,
    LocalModelSpec,
    PromptLabeler,
    import_results,
    label_dataset,
    prompt_dataset,
    prompts_from_annotations,
    prompts_from_coco,
    prompts_from_records,
    write_coco,
)
from cogseg_ml.samples import Instance, Sample, samples_from_coco

N_PROMPTS = 200
SEGMENT = "/context/vision/segment"


def two_hundred_prompts() -> tuple[list[SyntheticImage], list[Sample]]:
    """Synthetic images and exactly N_PROMPTS box prompts on them (one per shape)."""
    images = make_dataset(48, seed=7, height=96, width=128, n_objects=5)
    samples, left = [], N_PROMPTS
    for im in images:
        insts = tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects[:left])
        if insts:
            samples.append(Sample(FileRef(external_id=im.name), insts))
            left -= len(insts)
    assert left == 0, "the synthetic set has too few shapes"
    return images, samples


@pytest.fixture(scope="module")
def work() -> tuple[list[SyntheticImage], list[Sample]]:
    return two_hundred_prompts()


@pytest.fixture(scope="module")
def coco_boxes(work: tuple[list[SyntheticImage], list[Sample]],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 200 prompts as a COCO detection file, with ids of its own (gaps included)."""
    images, samples = work
    by_name = {im.name: im for im in images}
    cats = {name: 3 * k + 4 for k, name in enumerate(CATEGORIES)}
    coco: dict[str, Any] = {"categories": [{"id": i, "name": n} for n, i in cats.items()],
                            "images": [], "annotations": []}
    for j, s in enumerate(samples):
        im = by_name[s.file.external_id or ""]
        coco["images"].append({"id": 10 + 3 * j, "file_name": im.name, "width": im.width,
                               "height": im.height})
        for inst in s.instances:
            b = inst.prompt.box
            assert b is not None and inst.category is not None
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": 10 + 3 * j,
                "category_id": cats[inst.category],
                "bbox": [b.x_min * im.width, b.y_min * im.height,
                         (b.x_max - b.x_min) * im.width, (b.y_max - b.y_min) * im.height]})
    path = tmp_path_factory.mktemp("coco") / "boxes.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture(scope="module")
def emu(work: tuple[list[SyntheticImage], list[Sample]]) -> Iterator[Emulator]:
    with Emulator(images=work[0], processing_time_s=0.01, concurrency=16) as e:
        yield e


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with warnings.catch_warnings():
        # Ray Data's DataContext() sets each of its fields through __setattr__, which warns
        # about its own deprecated fields (use_push_based_shuffle, use_polars) on every
        # construction, whatever the settings: made once per process, here, and caused by no
        # call of ours (test_no_deprecation_from_ray checks the calls).
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                module=r"ray\.data\.context")
        ray.init(num_cpus=2, include_dashboard=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


class _Deprecations(logging.Handler):
    """Ray's deprecation notices: Python warnings and the log lines it writes instead."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecat" in record.getMessage().lower():
            self.seen.append(record.getMessage())


class catch_deprecations:
    """Collect Ray's deprecation warnings and log lines within a block."""

    def __enter__(self) -> list[str]:
        self.handler = _Deprecations()
        # Ray's "ray" and "ray.data" loggers do not propagate: listen on both.
        self.loggers = [logging.getLogger("ray"), logging.getLogger("ray.data")]
        for logger in self.loggers:
            logger.addHandler(self.handler)
        self.warnings = warnings.catch_warnings(record=True)
        self.caught = self.warnings.__enter__()
        warnings.simplefilter("always")
        return self.handler.seen

    def __exit__(self, *exc: object) -> None:
        self.warnings.__exit__(*exc)
        for logger in self.loggers:
            logger.removeHandler(self.handler)
        self.handler.seen.extend(str(w.message) for w in self.caught
                                 if issubclass(w.category, DeprecationWarning))


def reference_coco(emu: Emulator, samples: list[Sample], tmp: Path, backend: Any = None,
                   **kw: Any) -> dict:
    lab = SegmentationLabeler(backend or emu.config, cache=tmp / "ref-cache",
                              workdir=tmp / "ref-work", progress=False, **kw)
    lab.label(samples)
    lab.to_coco(tmp / "ref.json")
    return json.loads((tmp / "ref.json").read_text())


def ray_coco(results: Any, tmp: Path, name: str) -> dict:
    write_coco(results, tmp / f"{name}.json")
    return json.loads((tmp / f"{name}.json").read_text())


def identities(rows: list[dict]) -> Counter:
    """(file, instance, segment) of each row: every prompt's answer exactly once."""
    return Counter((json.dumps(r["file"], sort_keys=True), r["instance"], r["segment"])
                   for r in rows)


@pytest.fixture(scope="module")
def two_actor_run(ray_session: None, emu: Emulator, coco_boxes: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The COCO boxes labelled by the single-process labeler and by two actors."""
    tmp = tmp_path_factory.mktemp("two-actors")
    samples = samples_from_coco(coco_boxes)
    reference = reference_coco(emu, samples, tmp)
    jobs_before = len(emu.jobs.jobs)
    with catch_deprecations() as deprecations:
        results = label_dataset(prompts_from_coco(coco_boxes, rows_per_block=5), emu.config,
                                cache=tmp / "ray-cache", actors=2, batch_size=5,
                                concurrency=8).materialize()
        coco = ray_coco(results, tmp, "ray")
    return {"reference": reference, "results": results, "rows": results.take_all(),
            "coco": coco, "jobs": len(emu.jobs.jobs) - jobs_before, "samples": samples,
            "deprecations": deprecations, "tmp": tmp}


def test_two_actors_give_the_labelers_coco(two_actor_run: dict[str, Any]) -> None:
    rows = two_actor_run["rows"]
    assert two_actor_run["coco"] == two_actor_run["reference"]
    coco = two_actor_run["coco"]
    assert len(coco["annotations"]) == N_PROMPTS and coco["images"][1]["id"] == 13
    assert [c["id"] for c in coco["categories"]] == [4, 7, 10]  # the input's own ids
    assert {r["status"] for r in rows} == {OK} and not any(r["from_cache"] for r in rows)
    assert set(identities(rows).values()) == {1} and two_actor_run["jobs"] == N_PROMPTS
    row = rows[0]
    assert row["backend"] == "cdf-api" and row["model_version"] and row["job_id"]
    assert len(row["digest"]) == 64 and (row["height"], row["width"]) == (96, 128)


def test_no_deprecation_from_ray(ray_session: None, two_actor_run: dict[str, Any]) -> None:
    assert two_actor_run["deprecations"] == []
    # The same catch sees Ray's deprecated spellings: the pool as concurrency= (a log line)
    # and free-form remote arguments (a RayDeprecationWarning).
    ds = ray.data.from_items([{"x": 1}])
    with catch_deprecations() as seen:
        ds.map_batches(PromptLabeler, fn_constructor_args=(None,), concurrency=1)
    assert any("concurrency" in s for s in seen)
    with catch_deprecations() as seen:
        ds.map_batches(PromptLabeler, fn_constructor_args=(None,), max_restarts=1)
    assert any("ray_remote_args" in s for s in seen)


def test_results_import_into_a_cache_the_dataset_reads(two_actor_run: dict[str, Any],
                                                       emu: Emulator) -> None:
    tmp: Path = two_actor_run["tmp"]
    samples = two_actor_run["samples"]
    assert import_results(two_actor_run["results"], tmp / "imported") == N_PROMPTS
    jobs = len(emu.jobs.jobs)
    ds = CdfSegmentationDataset(samples[:6], client=emu.config, cache=tmp / "imported",
                                on_miss="raise")
    for i in range(len(ds)):  # on_miss="raise": every mask comes from the imported cache
        _, target = ds[i]
        assert target["masks"].shape[0] == len(samples[i].instances)
    lab = SegmentationLabeler(emu.config, cache=tmp / "imported", workdir=tmp / "again",
                              progress=False)
    rep = lab.label(samples)
    lab.to_coco(tmp / "again.json")
    assert rep.jobs_run == 0 and rep.from_cache == N_PROMPTS and len(emu.jobs.jobs) == jobs
    assert json.loads((tmp / "again.json").read_text()) == two_actor_run["reference"]


def test_an_actor_starts_its_next_block_before_the_last_one_ends(
        ray_session: None, emu: Emulator, tmp_path: Path,
        work: tuple[list[SyntheticImage], list[Sample]]) -> None:
    """One actor, blocks of one row: the second block's jobs are created while the first
    block's are held running. (Ray handed an actor its next block only once the last one had
    finished, so the jobs in flight fell to none at each block's end.)"""
    samples = work[1][:2]
    want = {s.file.external_id for s in samples}
    n = sum(len(s.instances) for s in samples)
    assert n < emu.jobs.workers  # every held job keeps an emulator worker
    before, ended_before = set(emu.jobs.jobs), emu.jobs.completed + emu.jobs.failed
    seen: list[tuple[set[str | None], int]] = []
    stop = threading.Event()

    def watch() -> None:  # until both rows' jobs exist (or a minute passes), no job ends
        deadline = time.monotonic() + 60
        files: set[str | None] = set()
        while not stop.is_set() and time.monotonic() < deadline:
            files = {emu.jobs.jobs[j].file_external_id for j in list(emu.jobs.jobs)
                     if j not in before}
            if files >= want:
                break
            stop.wait(0.02)
        seen.append((files, emu.jobs.completed + emu.jobs.failed - ended_before))
        emu.jobs.end_limit = None

    emu.jobs.end_limit = ended_before
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        rows = label_dataset(prompt_dataset(samples, rows_per_block=1), emu.config,
                             cache=tmp_path / "cache", batch_size=1, concurrency=8).take_all()
    finally:
        stop.set()
        watcher.join()
        emu.jobs.end_limit = None
    assert seen == [(want, 0)]  # both rows' jobs in flight at once, none ended yet
    assert {r["status"] for r in rows} == {OK} and len(rows) == n


class KillOnce(PromptLabeler):
    """Dies (SIGKILL, no cleanup) right after its first batch's answers are stored, once per
    test: the marker file says it happened."""

    def __init__(self, *args: Any, marker: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.marker = marker

    async def __call__(self, batch: Any) -> Any:
        out = await super().__call__(batch)
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return out
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(
        ray_session: None, emu: Emulator, two_actor_run: dict[str, Any], coco_boxes: Path,
        tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    ds = prompts_from_coco(coco_boxes, rows_per_block=5).map_batches(
        KillOnce, fn_constructor_args=(emu.config,),
        fn_constructor_kwargs={"cache": str(tmp_path / "cache"), "concurrency": 8,
                               "marker": str(marker)},
        batch_format="pyarrow", batch_size=5, num_cpus=0.5,
        compute=ray.data.ActorPoolStrategy(size=2))
    results = ds.materialize()
    rows = results.take_all()
    assert marker.exists()  # an actor did die, after storing its batch
    assert set(identities(rows).values()) == {1} and len(rows) == N_PROMPTS
    assert {r["status"] for r in rows} == {OK}
    # Ray retried the killed actor's batch on a restarted actor, which read it from the cache.
    assert sum(r["from_cache"] for r in rows) >= 5  # its batch: 5 images, 1+ prompts each
    assert ray_coco(results, tmp_path, "killed") == two_actor_run["reference"]


def test_local_model_in_a_gpu_less_actor(ray_session: None, emu: Emulator, tmp_path: Path,
                                         work: tuple[list[SyntheticImage], list[Sample]]
                                         ) -> None:
    folder = save_random_checkpoint(tmp_path / "sam2", "sam2", seed=0)
    samples = work[1][:6]
    n = sum(len(s.instances) for s in samples)
    local = LocalSamBackend.from_pretrained(folder, device="cpu")
    reference = reference_coco(emu, samples, tmp_path, local, config=emu.config)
    jobs = len(emu.jobs.jobs)
    results = label_dataset(prompt_dataset(samples, rows_per_block=3),
                            LocalModelSpec(folder, device="cpu"), config=emu.config,
                            cache=tmp_path / "cache", batch_size=3, num_cpus=1).materialize()
    rows = results.take_all()
    assert len(emu.jobs.jobs) == jobs  # no API job: the model ran in the actor
    assert {r["status"] for r in rows} == {OK} and len(rows) == n
    assert {(r["backend"], r["model_version"]) for r in rows} == \
        {("local-sam", local.model_version)}
    coco = ray_coco(results, tmp_path, "local")
    assert coco["images"] == reference["images"]
    assert coco["categories"] == reference["categories"]
    got, want = coco["annotations"], reference["annotations"]
    assert [a["prompt_index"] for a in got] == [a["prompt_index"] for a in want]
    for a, b in zip(got, want, strict=True):  # same weights, same pixels: the same masks
        ra = {**a["segmentation"], "counts": a["segmentation"]["counts"]}
        rb = {**b["segmentation"], "counts": b["segmentation"]["counts"]}
        assert iou_matrix([ra], [rb])[0, 0] > 0.99 or (
            not decode([ra])[0].any() and not decode([rb])[0].any())


def test_prompt_rows_from_records_and_annotations(ray_session: None, emu: Emulator,
                                                  tmp_path: Path) -> None:
    names = [f"synthetic_{i:05d}.png" for i in range(3)]
    recs = [{"file": names[0], "box": [0.1, 0.1, 0.4, 0.4], "category": "valve"},
            {"file": names[1], "points": [[0.5, 0.5, 1], [0.2, 0.2, 0]]},
            {"file": names[0], "box": [0.5, 0.5, 0.9, 0.9], "category": "pump"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    rows = prompts_from_records(path).take_all()
    assert [(r["file"]["externalId"], r["image_id"]) for r in rows] == \
        [(names[0], 1), (names[1], 2)]  # one row per file, instances in input order
    assert [i["category"] for i in rows[0]["instances"]] == ["valve", "pump"]
    assert rows[1]["instances"][0]["points"] == [[0.5, 0.5, 1.0], [0.2, 0.2, 0.0]]
    with SegmentationClient(emu.config) as client:
        fid = client.file_metadata([names[2]])[0].id
        client.create_annotations([Annotation(
            annotated_resource_type="file", annotated_resource_id=fid,
            annotation_type="images.ObjectDetection", creating_app="ray-rows",
            creating_app_version="1.0.0", creating_user=None, status="approved",
            data={"label": "valve",
                  "boundingBox": {"xMin": 0.1, "yMin": 0.2, "xMax": 0.3, "yMax": 0.4}})])
        (row,) = prompts_from_annotations(client, [fid], creating_app="ray-rows").take_all()
    assert row["file"]["id"] == fid and row["instances"][0]["category"] == "valve"
    assert row["instances"][0]["box"] == [0.1, 0.2, 0.3, 0.4]


def test_bad_rows_come_back_as_failure_rows(
        ray_session: None, emu: Emulator, tmp_path: Path,
        work: tuple[list[SyntheticImage], list[Sample]]) -> None:
    im = work[0][0]
    box = im.objects[0].box()
    good = [box.x_min, box.y_min, box.x_max, box.y_max]
    cat = im.objects[0].category
    lines = [  # one JSON Lines record per row, read by Ray itself
        {"file": im.name, "box": good, "category": cat},
        {"file": im.name, "box": [0.9, 0.1, 0.2, 0.5], "category": cat},
        {"file": im.name, "points": [[0.5, 0.5, 2]], "category": cat},
        {"file": im.name, "category": cat},
        {"file": im.name, "box": good, "category": "unicorn"},
        {"file": "no-such-image.png", "box": good, "category": cat},
        {"file": None, "box": good, "category": cat},
        {"file": im.name, "instances": [{"box": good, "category": cat},
                                        {"points": [], "category": cat}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines))
    categories = sorted({o.category for o in im.objects})
    rows = label_dataset(ray.data.read_json(str(path)), emu.config, cache=tmp_path / "cache",
                         categories=categories, batch_size=8).take_all()
    got = Counter((r["file"]["externalId"] if r["file"] else None, r["instance"], r["status"],
                   (r["reason"] or "").split(":")[0]) for r in rows)
    assert got == Counter({
        (im.name, 0, OK, ""): 2,  # the first record and the first listed instance
        (im.name, 0, FAILED, "PromptValidationError"): 2,  # inverted box, label 2
        (im.name, None, FAILED, "ValidationError"): 1,  # no points, no box
        (im.name, 0, FAILED, "ValidationError"): 1,  # unicorn
        ("no-such-image.png", 0, FAILED, "NotFoundError"): 1,
        (None, None, FAILED, "the row's file"): 1,
        (im.name, 1, FAILED, "PromptValidationError"): 1,  # empty points
    })
    reasons = " | ".join(r["reason"] for r in rows if r["reason"])
    for fragment in ("x_min", "label", "no instances", "unicorn", "does not exist"):
        assert fragment in reasons, fragment
    # A failed prompt on a readable image still names the image: it is in the COCO file.
    coco_path = tmp_path / "bad.json"
    assert write_coco(rows, coco_path, categories=categories) == 2
    coco = json.loads(coco_path.read_text())
    assert [i["file_name"] for i in coco["images"]] == [im.name]


def test_a_retired_api_is_noticed_once_per_actor_and_the_fallback_takes_over(
        ray_session: None, tmp_path: Path,
        work: tuple[list[SyntheticImage], list[Sample]]) -> None:
    images, samples = work
    with Emulator(images=images, processing_time_s=0.01, retired=True) as emu:
        ds = prompt_dataset(samples, rows_per_block=5)
        rows = label_dataset(ds, emu.config, cache=tmp_path / "api", actors=2, batch_size=5,
                             concurrency=2, batches_in_flight=1).take_all()
        sent = [r for r in emu.requests if SEGMENT in r.path]
        assert len(rows) == N_PROMPTS and {r["status"] for r in rows} == {FAILED}
        assert all(r["reason"].startswith("ApiRetiredError") for r in rows)
        # Each actor's first jobs meet the retirement; nothing is sent after that.
        assert 1 <= len(sent) <= 2 * 2 and all(r.status == 404 for r in sent)
        folder = save_random_checkpoint(tmp_path / "sam2", "sam2", seed=1)
        subset = samples[:4]
        spec = FallbackSpec(ApiSpec(emu.config), LocalModelSpec(folder, device="cpu"))
        fell = label_dataset(prompt_dataset(subset, rows_per_block=2), spec,
                             cache=tmp_path / "fallback", batch_size=2).take_all()
        assert len(fell) == sum(len(s.instances) for s in subset)
        assert {(r["status"], r["backend"]) for r in fell} == {(OK, "local-sam")}
