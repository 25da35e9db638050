"""``cogseg emulator --print-env`` and ``--write-boxes FILE``, through real processes.

``--print-env`` prints ``export`` lines a shell evaluates once the emulator listens, then
closes its standard output, so ``eval "$(cogseg emulator --print-env &)"`` returns while it
serves. ``--write-boxes`` writes a COCO file of boxes around the synthetic images' objects
that ``cogseg label --coco-boxes`` labels; it never writes over a file (exit 2, one line)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cogseg_ml.emulator.synthetic_images import make_dataset

BIN = Path(sys.executable).parent
COGSEG = BIN / "cogseg"


def _env() -> dict[str, str]:
    """A clean environment: no CDF variables, the venv's commands first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGNITE_", "IDP_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["COGSEG_PROGRESS"] = "0"
    return env


def _one_line(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cogseg: "), err
    assert "Traceback" not in err


def _truth_boxes(n: int, seed: int = 0) -> list[tuple[str, str, list[int]]]:
    """``(file, category, [x, y, w, h])`` of every object of ``--synthetic n --seed seed``."""
    out = []
    for im in make_dataset(n, seed=seed):
        for o in im.objects:
            ys, xs = np.nonzero(o.mask)
            x0, y0 = int(xs.min()), int(ys.min())
            out.append((im.name, o.category,
                        [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]))
    return out


def _boxes_in(coco: dict[str, Any]) -> list[tuple[str, str, list[int]]]:
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    return [(files[a["image_id"]], names[a["category_id"]], a["bbox"])
            for a in coco["annotations"]]


@pytest.fixture
def groups() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started in their own session; each group is ended after the test."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)


def test_eval_print_env_then_label_the_written_boxes(
        tmp_path: Path, groups: list[subprocess.Popen[str]]) -> None:
    """The getting-started flow in one shell: the capture returns while the emulator serves,
    the variables reach ``cogseg label``, and every synthetic object gets a mask."""
    script = """set -eu
eval "$(cogseg emulator --port 0 --synthetic 3 --write-boxes boxes.json --print-env &)"
cogseg label --coco-boxes boxes.json --out labels.json
echo "pid=$COGSEG_EMULATOR_PID"
kill "$COGSEG_EMULATOR_PID"
"""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as o, open(err, "w") as e:  # files: a pipe would wait for the server
        proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=_env(), stdout=o,
                                stderr=e, text=True, start_new_session=True)
        groups.append(proc)
        assert proc.wait(timeout=120) == 0, err.read_text()[-3000:]
    assert "pid=" in out.read_text()
    boxes = json.loads((tmp_path / "boxes.json").read_text())
    assert sorted(map(repr, _boxes_in(boxes))) == sorted(map(repr, _truth_boxes(3)))
    assert [c["id"] for c in boxes["categories"]] == list(range(1, len(boxes["categories"]) + 1))
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert len(labels["annotations"]) == len(boxes["annotations"])
    assert {im["file_name"] for im in labels["images"]} == {im["file_name"]
                                                           for im in boxes["images"]}


def test_print_env_prints_exports_only_then_closes_stdout(
        groups: list[subprocess.Popen[str]]) -> None:
    proc = subprocess.Popen([str(COGSEG), "emulator", "--port", "0", "--synthetic", "1",
                             "--project", "my project", "--print-env"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    groups.append(proc)
    assert proc.stdout is not None
    with proc.stdout:
        text = proc.stdout.read()  # EOF while it still serves: standard output was closed
    assert proc.poll() is None, "the emulator exited instead of serving"
    variables = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export" and len(words) == 2, line
        name, _, value = words[1].partition("=")
        variables[name] = value
    assert set(variables) == {"COGNITE_PROJECT", "COGNITE_BASE_URL", "COGNITE_TOKEN",
                              "COGSEG_EMULATOR_PID"}
    assert variables["COGNITE_PROJECT"] == "my project"  # quoted for the shell
    assert variables["COGSEG_EMULATOR_PID"] == str(proc.pid)
    root = f"{variables['COGNITE_BASE_URL']}/api/v1/projects/my project"
    r = httpx.post(f"{root}/files/byids", json={"items": [{"externalId": "synthetic_00000.png"}]},
                   headers={"Authorization": f"Bearer {variables['COGNITE_TOKEN']}"}, timeout=30)
    assert r.status_code == 200, r.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def _refused(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(COGSEG), "emulator", "--port", "0", *argv], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "", "it served"
    _one_line(proc.stderr)
    return proc


def test_an_existing_boxes_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    mine = tmp_path / "boxes.json"
    mine.write_text("my own notes\n")
    proc = _refused(["--synthetic", "2", "--write-boxes", "boxes.json"], tmp_path)
    assert "--write-boxes boxes.json already exists" in proc.stderr
    assert mine.read_text() == "my own notes\n"


def test_a_dangling_link_is_refused_and_its_target_not_created(tmp_path: Path) -> None:
    (tmp_path / "boxes.json").symlink_to(tmp_path / "elsewhere.json")
    proc = _refused(["--synthetic", "2", "--write-boxes", "boxes.json"], tmp_path)
    assert "already exists" in proc.stderr
    assert not (tmp_path / "elsewhere.json").exists()


def _image_folder(tmp: Path) -> str:
    from PIL import Image

    folder = tmp / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "a.png")
    return str(folder)


@pytest.mark.parametrize("case", ["no synthetic images", "missing folder", "a folder",
                                  "the faults file", "an image of --images",
                                  "with print-secret"])
def test_unusable_write_boxes_is_exit_2_before_serving(case: str, tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text("[]")
    argv, fragments = {
        "no synthetic images": (["--write-boxes", "b.json"], ["--write-boxes", "--synthetic"]),
        "missing folder": (["--synthetic", "1", "--write-boxes", "nope/b.json"],
                           ["--write-boxes", "nope", "does not exist"]),
        "a folder": (["--synthetic", "1", "--write-boxes", str(tmp_path)],
                     ["--write-boxes", "is a folder"]),
        "an image of --images": (["--synthetic", "1", "--images", _image_folder(tmp_path),
                                  "--write-boxes", str(tmp_path / "photos" / "a.png")],
                                 ["--write-boxes", "a.png", "already exists"]),
        "the faults file": (["--synthetic", "1", "--faults", str(faults), "--write-boxes",
                             str(faults)], ["--write-boxes", "already exists"]),
        "with print-secret": (["--synthetic", "1", "--print-env", "--print-secret"],
                              ["--print-secret", "--print-env"]),
    }[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = _refused(argv, tmp_path)
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert faults.read_text() == "[]"
    if (tmp_path / "photos" / "a.png").exists():
        assert (tmp_path / "photos" / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_no_boxes_file_when_the_emulator_cannot_listen(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([str(COGSEG), "emulator", "--port", str(port), "--synthetic", "1",
                               "--write-boxes", "boxes.json", "--print-env"], cwd=tmp_path,
                              env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr)
    assert "already in use" in proc.stderr
    assert not (tmp_path / "boxes.json").exists() and proc.stdout == ""
