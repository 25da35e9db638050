"""Local-only from the command line: ``cogseg label --backend api|local|fallback --model DIR``
and ``cogseg emulator --retired`` / ``--engine sam2 --model DIR``, through ``main`` (and a real
process for the emulator) against the emulator, with a tiny random-weight SAM 2.1 checkpoint
saved to a temporary folder."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cogseg_ml.cli import build_parser, emulator_from_args
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.errors import VISION_RETIREMENT_DATE
from tests.test_cli_input import cdf_env, earlier_labels, label_argv, records, run_main

pytest.importorskip("transformers", reason="the sam2 extra (transformers) is needed")

SEGMENT = "/context/vision/segment"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cogseg_ml.backends.sam2 import save_random_checkpoint

    return save_random_checkpoint(tmp_path_factory.mktemp("models") / "sam21-tiny", "sam2",
                                  seed=7)


def use(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    for k, v in cdf_env(emu).items():
        monkeypatch.setenv(k, v)
    return emu


@pytest.fixture
def retired(make_emulator: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch) -> Emulator:
    return use(make_emulator(retired=True), monkeypatch)


@pytest.fixture
def live(make_emulator: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch) -> Emulator:
    return use(make_emulator(), monkeypatch)


def vision_requests(emu: Emulator) -> list[tuple[str, int]]:
    return [(r.method, r.status) for r in emu.requests if SEGMENT in r.path]


def sources(path: Path) -> list[str]:
    return [a["source"] for a in json.loads(path.read_text())["annotations"]]


def retired_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "appears retired" in r.getMessage()]


# --- label ---------------------------------------------------------------------------------------


def test_local_backend_labels_from_cdf_files_without_the_vision_api(
        retired: Emulator, images: list[SyntheticImage], model_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = label_argv(tmp_path, images[:3]) + ["--backend", "local", "--model", str(model_dir),
                                               "--device", "cpu"]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    prompts = len(records(images[:3]))
    assert sources(tmp_path / "labels.json") == ["local-sam"] * prompts
    assert vision_requests(retired) == []  # the Vision API is never asked
    assert any("downloadlink" in r.path for r in retired.requests)  # images come from CDF


def test_fallback_on_a_retired_api_labels_every_item_locally_with_one_warning(
        retired: Emulator, images: list[SyntheticImage], model_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    argv = label_argv(tmp_path, images) + ["--backend", "fallback", "--model", str(model_dir),
                                           "--device", "cpu", "--concurrency", "1"]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    assert sources(tmp_path / "labels.json") == ["local-sam"] * len(records(images))
    (warning,) = retired_warnings(caplog)
    assert "--backend local --model DIR" in warning and VISION_RETIREMENT_DATE in warning
    assert vision_requests(retired) == [("POST", 404)]  # recognized once, never asked again
    after = [r.path for r in retired.requests][
        [r.path for r in retired.requests].index(f"/api/v1/projects/{retired.project}{SEGMENT}")
        + 1:]
    assert not any("byids" in p or "vision" in p for p in after)  # no probing after it


def test_api_backend_on_a_retired_api_is_exit_3_with_one_line_saying_so(
        retired: Emulator, images: list[SyntheticImage], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels.json"
    before = earlier_labels(out)
    argv = label_argv(tmp_path, images) + ["--backend", "api", "--concurrency", "1"]
    code, _, err = run_main(argv, capsys)
    assert code == 3, err
    said = [line for line in err.splitlines() if line.startswith("cogseg: ")]
    assert len(said) == 1 and "appears retired" in said[0], err
    for fragment in ("404 Not Found", VISION_RETIREMENT_DATE, "--backend local --model DIR",
                     "--backend fallback"):
        assert fragment in said[0], (fragment, err)
    assert "failed x" not in err and "Traceback" not in err  # not one error per item
    assert out.read_bytes() == before
    assert vision_requests(retired) == [("POST", 404)]


def test_a_partly_cached_run_on_a_retired_api_stops_once_and_keeps_out(
        live: Emulator, images: list[SyntheticImage], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(label_argv(tmp_path, images[:1]), capsys)
    assert code == 0, err
    before = (tmp_path / "labels.json").read_bytes()
    live.retired = True  # the first image's masks are cached; the second's cannot be made
    code, _, err = run_main(label_argv(tmp_path, images[:2]) + ["--concurrency", "1"], capsys)
    assert code == 3, err  # the run ends on the first sign, not one failure per item
    said = [line for line in err.splitlines() if line.startswith("cogseg: ")]
    assert len(said) == 1 and "appears retired" in said[0] and "--backend local" in said[0]
    assert (tmp_path / "labels.json").read_bytes() == before  # --out as it was
    assert sources(tmp_path / "labels.json") == ["cdf-api"] * len(images[0].objects)


def _no_config(tmp: Path) -> str:
    folder = tmp / "weights-only"
    folder.mkdir()
    (folder / "sam2.1_hiera_tiny.pt").write_bytes(b"not really")
    return str(folder)


def _a_file(tmp: Path) -> str:
    path = tmp / "sam_vit_b.pth"
    path.write_bytes(b"x")
    return str(path)


BAD_MODEL_INPUT: dict[str, Callable[[Path], tuple[list[str], list[str]]]] = {
    "local without --model": lambda t: (["--backend", "local"],
                                        ["--backend local needs --model DIR", "transformers"]),
    "fallback without --model": lambda t: (["--backend", "fallback"],
                                           ["--backend fallback needs --model DIR"]),
    "a missing folder": lambda t: (["--backend", "local", "--model", str(t / "nope")],
                                   [str(t / "nope"), "does not exist", "hf download"]),
    "a folder without config.json": lambda t: (
        ["--backend", "fallback", "--model", _no_config(t)],
        ["weights-only", "has no config.json", "sam2.1_hiera_tiny.pt"]),
    "a .pth file": lambda t: (["--backend", "local", "--model", _a_file(t)],
                              ["sam_vit_b.pth", "is a file, not a folder"]),
    "--model with --backend api": lambda t: (["--backend", "api", "--model", str(t)],
                                             ["--model goes with --backend local"]),
}


@pytest.mark.parametrize("case", list(BAD_MODEL_INPUT))
def test_a_bad_model_is_exit_2_with_one_line_before_any_request(
        case: str, live: Emulator, images: list[SyntheticImage], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    extra, fragments = BAD_MODEL_INPUT[case](tmp_path)
    code, _, err = run_main(label_argv(tmp_path, images[:1]) + extra, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cogseg: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert live.requests == [] and not (tmp_path / "labels.json").exists()


def test_a_cuda_device_where_there_is_none_is_exit_2(
        live: Emulator, images: list[SyntheticImage], model_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # so it runs on GPU hosts too
    argv = label_argv(tmp_path, images[:1]) + ["--backend", "local", "--model", str(model_dir),
                                               "--device", "cuda"]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "--device cuda" in err and "--device cpu" in err, err
    assert live.requests == []


# --- emulator ------------------------------------------------------------------------------------


def test_the_emulator_engine_can_be_sam21(model_dir: Path, images: list[SyntheticImage]) -> None:
    """``--engine sam2 --model DIR``: the job's score is the local model's own for the prompt."""
    from cogseg_ml.api.client import SegmentationClient
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.mask_codec import decode, iou_matrix, mask_to_polygons, polygons_to_rle
    from cogseg_ml.prompts import FileRef, Prompt

    args = build_parser().parse_args(["emulator", "--port", "0", "--synthetic", "2", "--engine",
                                      "sam2", "--model", str(model_dir), "--device", "cpu"])
    emu = emulator_from_args(args)
    assert emu.answers.engine.name == "sam2"
    name = sorted(r.name for r in emu.state.files.values())[0]
    from cogseg_ml.emulator.synthetic_images import make_dataset

    image = next(im for im in make_dataset(2, seed=args.seed) if im.name == name)
    prompts = [Prompt(box=o.box()) for o in image.objects]
    h, w = image.pixels.shape[:2]
    with emu, SegmentationClient(emu.config) as client:
        served = [client.segment(FileRef(external_id=name), prompt=p, timeout=60).item.best
                  for p in prompts]
    direct = LocalSamBackend.from_pretrained(model_dir, device="cpu")
    try:
        own = direct.segment_image(image.pixels, prompts)
    finally:
        direct.close()
    for got, res in zip(served, own, strict=True):
        assert got is not None
        assert got.score == round(res.segments[0].score, 4)  # the emulator's 4 decimals
        # The same mask, once through the polygons the emulator answers with.
        mask = decode([res.segments[0].rle])[0]
        polys = [[(x / w, y / h) for x, y in poly]
                 for poly in mask_to_polygons(mask, outline="filled")]
        iou = float(iou_matrix([got.to_rle(h, w)], [polygons_to_rle(polys, h, w)])[0, 0])
        assert iou > 0.999, iou


BAD_ENGINE_INPUT: dict[str, Callable[[Path], tuple[list[str], list[str]]]] = {
    "sam2 without --model": lambda t: (["--engine", "sam2"], ["--engine sam2 needs --model"]),
    "sam2 with a missing folder": lambda t: (["--engine", "sam2", "--model", str(t / "nope")],
                                             ["nope", "does not exist"]),
    "--model without sam2": lambda t: (["--model", str(t)], ["--model goes with --engine sam2"]),
    "--checkpoint with sam2": lambda t: (["--engine", "sam2", "--checkpoint", _a_file(t)],
                                         ["--checkpoint", "--engine sam"]),
}


@pytest.mark.parametrize("case", list(BAD_ENGINE_INPUT))
def test_bad_engine_input_is_exit_2(case: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    argv, fragments = BAD_ENGINE_INPUT[case](tmp_path)
    code, _, err = run_main(["emulator", "--port", "0", *argv], capsys)
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err


@pytest.mark.timeout(120)
def test_cogseg_emulator_retired_serves_files_but_no_segment_route() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cogseg_ml.cli", "emulator", "--port", "0",
                             "--synthetic", "1", "--retired", "--print-secret"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["vision_retired"] is True
        token = httpx.post(ready["token_url"], data={
            "grant_type": "client_credentials", "client_id": ready["client_id"],
            "client_secret": ready["client_secret"]}).json()["access_token"]
        root = f"{ready['base_url']}/api/v1/projects/{ready['project']}"
        headers = {"Authorization": f"Bearer {token}", "cdf-version": "beta"}
        files = httpx.post(f"{root}/files/byids", headers=headers,
                           json={"items": [{"externalId": "synthetic_00000.png"}]})
        assert files.status_code == 200
        fid = files.json()["items"][0]["id"]
        r = httpx.post(f"{root}{SEGMENT}", headers=headers, json={
            "items": [{"fileId": fid}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]})
        assert r.status_code == 404 and "missing" not in r.json()["error"], r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
