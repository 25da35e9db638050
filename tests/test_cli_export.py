"""``cogseg export``, in-process through ``main`` and as a real process: each format written
(exit 0), bad input refused with one line and exit 2 before anything is written, CDF
unreachable 3, refused credentials 4."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.cli import main
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.review.decisions import Decisions, labels_digest
from tests.exports.labelsets import LabelSet, build


@pytest.fixture(scope="module")
def labelset(tmp_path_factory: pytest.TempPathFactory, shared_emulator: Emulator,
             images: list[SyntheticImage]) -> LabelSet:
    return build(tmp_path_factory.mktemp("cli-export"), shared_emulator, images[:3])


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def nothing_written(folder: Path, out: Path) -> bool:
    return not out.exists() and not any(p.name.endswith(".incomplete")
                                        for p in folder.iterdir())


@pytest.mark.parametrize(("fmt", "extra", "first"), [
    ("coco", ["--segmentation", "polygon"], "annotations.json"),
    ("yolo", ["--val-fraction", "0.3"], "data.yaml"),
    ("labelstudio", ["--image-prefix", "https://bucket.example/site/"], "tasks.json"),
])
def test_each_format_is_written(labelset: LabelSet, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str], fmt: str,
                                extra: list[str], first: str) -> None:
    out = tmp_path / "out"
    code, err = run_main(["export", str(labelset.holey), "--to", fmt, "--out", str(out),
                          "--cache", str(labelset.cache), *extra], capsys)
    assert code == 0, err
    assert f"{fmt} export: 3 images, 6 objects" in err and f"wrote {out}" in err
    assert (out / first).is_file()
    if fmt == "labelstudio":
        tasks = json.loads((out / "tasks.json").read_text())
        assert tasks[0]["data"]["image"].startswith("https://bucket.example/site/")


def test_decisions_keep_only_accepted_masks(labelset: LabelSet, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    coco = labelset.coco()
    ids = sorted(a["id"] for a in coco["annotations"])
    dec = tmp_path / "decisions.json"
    dec.write_text(Decisions(labelset.holey.name, labels_digest(coco), frozenset(ids[:2]),
                             frozenset(ids[2:3])).to_json())
    out = tmp_path / "y"
    code, err = run_main(["export", str(labelset.holey), "--to", "yolo", "--out", str(out),
                          "--cache", str(labelset.cache), "--decisions", str(dec)], capsys)
    assert code == 0 and "2 objects (4 left out by the review decisions" in err, err
    code, err = run_main(["export", str(labelset.holey), "--to", "yolo", "--out",
                          str(tmp_path / "k"), "--cache", str(labelset.cache), "--decisions",
                          str(dec), "--undecided", "keep"], capsys)
    assert code == 0 and "5 objects" in err, err
    assert yaml.safe_load((tmp_path / "k" / "data.yaml").read_text())["train"] == "images/train"


def _not_ours(tmp: Path, ls: LabelSet) -> list[str]:
    coco = ls.coco()
    coco["info"] = {"description": "COCO 2017 val"}
    (tmp / "other.json").write_text(json.dumps(coco))
    return [str(tmp / "other.json"), "--to", "yolo"]


def _missing_image(tmp: Path, ls: LabelSet) -> list[str]:
    MaskCache(tmp / "empty-cache").close()
    return [str(ls.holey), "--to", "yolo", "--cache", str(tmp / "empty-cache")]


def _full_out(tmp: Path, ls: LabelSet) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "old.txt").write_text("keep me")
    return [str(ls.holey), "--to", "coco"]


def _other_decisions(tmp: Path, ls: LabelSet) -> list[str]:
    coco = ls.coco("labels")
    (tmp / "d.json").write_text(Decisions(ls.labels.name, labels_digest(coco), frozenset(),
                                          frozenset()).to_json())
    return [str(ls.holey), "--to", "coco", "--decisions", str(tmp / "d.json")]


@pytest.mark.parametrize(("case", "says"), [
    (_not_ours, "is not a cogseg_ml labels file: info.description is 'COCO 2017 val'"),
    (_missing_image, "3 of 3 images are not in the image cache"),
    (_full_out, "exists and is not empty"),
    (_other_decisions, "was saved for labels file 'labels.json', not for 'holey.json'"),
    (lambda t, ls: [str(t / "nope.json"), "--to", "coco"], "no such file"),
    (lambda t, ls: [str(ls.holey), "--to", "coco", "--val-fraction", "0.2"],
     "--val-fraction goes with --to yolo"),
    (lambda t, ls: [str(ls.holey), "--to", "coco", "--undecided", "keep"],
     "--undecided goes with --decisions"),
])
def test_bad_input_is_exit_2_with_one_line_and_nothing_written(
        labelset: LabelSet, tmp_path: Path, capsys: pytest.CaptureFixture[str], case,
        says: str) -> None:
    args = case(tmp_path, labelset)
    out = tmp_path / "out"
    existed = out.exists()
    code, err = run_main(["export", *args, "--out", str(out)], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cogseg: ") and says in lines[0], err
    if existed:
        assert [p.name for p in out.iterdir()] == ["old.txt"]
    else:
        assert nothing_written(tmp_path, out)


def test_an_unknown_format_is_a_usage_error(labelset: LabelSet, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", str(labelset.holey), "--to", "voc", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "invalid choice: 'voc'" in capsys.readouterr().err
    assert nothing_written(tmp_path, tmp_path / "o")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def run_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cogseg_ml.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


@pytest.mark.timeout(120)
def test_a_real_process_exports_and_reports_cdf_trouble(
        labelset: LabelSet, shared_emulator: Emulator, tmp_path: Path) -> None:
    ok = run_process(["export", str(labelset.holey), "--to", "yolo", "--out",
                      str(tmp_path / "y"), "--cache", str(labelset.cache)], env={})
    assert ok.returncode == 0 and (tmp_path / "y" / "data.yaml").is_file(), ok.stderr
    # Images not cached, CDF unreachable: 3; credentials refused: 4. Nothing written.
    MaskCache(tmp_path / "empty-cache").close()
    base = ["export", str(labelset.holey), "--to", "coco", "--out", str(tmp_path / "c"),
            "--cache", str(tmp_path / "empty-cache")]
    down = run_process(base, env={"COGNITE_PROJECT": "p", "COGNITE_TOKEN": "t",
                                  "COGNITE_BASE_URL": f"http://127.0.0.1:{_closed_port()}"})
    assert down.returncode == 3 and "cogseg: CDF unreachable: " in down.stderr, down.stderr
    refused = run_process(base, env={"COGNITE_PROJECT": shared_emulator.project,
                                     "COGNITE_BASE_URL": shared_emulator.base_url,
                                     "COGNITE_TOKEN": "not-a-valid-token"})
    assert refused.returncode == 4 and "credentials refused" in refused.stderr, refused.stderr
    assert "Traceback" not in down.stderr + refused.stderr
    assert nothing_written(tmp_path, tmp_path / "c")
