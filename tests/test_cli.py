"""The command line, run as a user would (subprocess), and in-process for speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.cache.mask_cache import CachedResult, CachedSegment, MaskCache
from cogseg_ml.cli import main
from cogseg_ml.mask_codec import encode
from cogseg_ml.prompts import FileRef, Point, Prompt


def _fill(path: Path, n: int, offset: int = 0) -> None:
    cache = MaskCache(path)
    for i in range(n):
        m = np.zeros((1, 8, 8), bool)
        m[0, 1:4, 1:5] = True
        cache.put(CacheKey("p", FileRef(id=offset + i + 1), Prompt(points=(Point(0.5, 0.5),)),
                           "cdf-api"),
                  CachedResult((CachedSegment(0.9, encode(m)[0]),), 8, 8, "cdf-api"))


def test_cache_commands(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _fill(a, 3)
    _fill(b, 2, offset=10)
    assert main(["cache", "stats", "--path", str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 3
    assert main(["cache", "merge", str(b), "--path", str(a)]) == 0
    assert "merged 2" in capsys.readouterr().out
    assert main(["cache", "ls", "--path", str(a)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5
    out = tmp_path / "coco.json"
    assert main(["cache", "export", "--path", str(a), "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["annotations"]) == 5
    assert main(["cache", "export", "--path", str(a)]) == 2  # --out missing: usage error
    assert main(["cache", "clear", "--path", str(a)]) == 0
    assert main(["cache", "vacuum", "--path", str(a)]) == 0
    assert MaskCache(a).stats().entries == 0


def test_help_explains_itself() -> None:
    out = subprocess.run([sys.executable, "-m", "cogseg_ml.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for word in ("emulator", "demo", "cache", "Exit codes"):
        assert word in out


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--images", "3", "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failed"] == 0 and report["labelled"] == report["prompts"] > 0
    assert report["mean_iou_synthetic"] > 0.99 and report["coco_segm_AP"] > 0.99
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3 + report["photo_included"]
    assert (tmp_path / "coco.json").exists() and (tmp_path / "report.md").exists()


def test_progress_bar_shows_the_total_and_an_eta_once_the_total_is_known(monkeypatch) -> None:
    import io

    from cogseg_ml import progress

    monkeypatch.setattr(progress, "_enabled", True)
    buf = io.StringIO()
    with progress.progress_bar(10, "images", file=buf, mininterval=0) as bar:
        bar.update(4)
    text = buf.getvalue()
    assert "4/10" in text and "<" in text  # [elapsed<remaining]
    buf = io.StringIO()
    with progress.progress_bar(None, "prompts", file=buf, mininterval=0) as bar:
        progress.add_total(bar, 6)  # e.g. a chunk's prompts, counted as it is read
        bar.update(3)
        progress.add_total(bar, 2)
        bar.update(1)
    assert bar.total == 8 and "4/8" in buf.getvalue()
    with progress.progress_bar(None, "off", progress=False) as off:
        progress.add_total(off, 5)  # a disabled bar takes it too
    assert off.total == 5


def _detect(cache_dir: Path, files: list[int]) -> None:
    """Detections stored beside a mask cache, as a class-name run leaves them."""
    from cogseg_ml.detect.detection_cache import DetectionCache, detection_key, detections_file
    from cogseg_ml.detect.detections import Detection

    store = DetectionCache(detections_file(MaskCache(cache_dir).path))
    det = Detection("valve", 0.8, (1.0, 2.0, 5.0, 6.0), 0.7)
    store.put_many((detection_key(f"id:{i}", "d", ["valve"], "gdino:x"), f"id:{i}", "gdino:x",
                    ["valve"], [det]) for i in files)
    store.close()


def test_cache_commands_carry_text_detections(tmp_path: Path, capsys) -> None:
    """Shards of a class-name run merge their detections too; stats counts and clear empties
    them, so a merged cache does not detect again what a shard already did."""
    a, b = tmp_path / "a", tmp_path / "b"
    _fill(a, 1)
    _fill(b, 1, offset=10)
    _detect(a, [1, 2])
    _detect(b, [2, 3, 4])  # file 2 in both: kept once
    assert main(["cache", "merge", str(b), "--path", str(a)]) == 0
    assert "merged 1 new entries and 0 images and 2 images' text detections" in \
        capsys.readouterr().out
    assert main(["cache", "stats", "--path", str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["detections"] == 4
    assert main(["cache", "clear", "--path", str(a)]) == 0
    assert "removed 4 images' detections" in capsys.readouterr().out
    assert main(["cache", "stats", "--path", str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["detections"] == 0
