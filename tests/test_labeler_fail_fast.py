"""A labelling run stops at once, saying why, when CDF is unreachable or the credentials are
refused; per-item failures keep their HTTP status in the summary."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.config import CdfConfig, Secret, StaticToken
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.errors import AuthenticationError, CdfUnreachableError
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import Box, FileRef, Prompt
from cogseg_ml.samples import Instance, Sample

SAMPLES = [Sample(FileRef(id=i + 1), (Instance(Prompt(box=Box(0.1, 0.1, 0.5, 0.5))),))
           for i in range(30)]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_unreachable_cdf_ends_the_run_once(tmp_path, caplog) -> None:
    cfg = CdfConfig(project="p", base_url=f"http://127.0.0.1:{_closed_port()}",
                    credentials=StaticToken("t"))
    lab = SegmentationLabeler(cfg, cache=tmp_path / "cache", progress=False)
    with caplog.at_level("WARNING"), pytest.raises(CdfUnreachableError, match="unreachable"):
        lab.label(SAMPLES)
    assert lab.report.failed == 0  # not 30 failure reports: one error for the run
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert MaskCache(tmp_path / "cache").stats().entries == 0


def test_refused_client_secret_ends_the_run_once(make_emulator, images, tmp_path) -> None:
    emu = make_emulator()
    good = emu.config
    creds = replace(good.credentials, client_secret=Secret("wrong-secret-value"))
    lab = SegmentationLabeler(replace(good, credentials=creds), cache=tmp_path / "cache",
                              progress=False)
    samples = [Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box())) for o in im.objects)) for im in images]
    with pytest.raises(AuthenticationError) as info:
        lab.label(samples)
    assert info.value.session_wide
    assert good.credentials.client_id in str(info.value)
    assert "wrong-secret-value" not in str(info.value)
    assert sum(1 for r in emu.requests if "token" in r.path) <= 2


def test_summary_keeps_http_statuses(make_emulator, images, tmp_path) -> None:
    # 422, not 404: a segment route answering 404 without "missing" means the API is retired
    emu = make_emulator(faults=[Fault("status", status=422, path_contains="/context/vision/"
                                      "segment", methods=frozenset({"POST"}))])
    im = images[0]
    lab = SegmentationLabeler(emu.config, cache=tmp_path / "cache", progress=False)
    lab.label([Sample(FileRef(external_id=im.name), (Instance(Prompt(box=im.objects[0].box())),))])
    assert lab.report.failed == 1
    assert "422 Unprocessable" in lab.report.summary()


def test_a_full_disk_for_images_ends_the_run(shared_emulator, images, tmp_path,
                                              monkeypatch) -> None:
    """Storing an image fails for want of space: one CacheError for the run, not N items."""
    import errno

    from cogseg_ml.cache.image_store import ImageStore
    from cogseg_ml.errors import CacheError

    def no_space(self, path, data) -> None:
        err = OSError(errno.ENOSPC, "No space left on device")
        raise self.db.storage_error(err, self.root) or err

    monkeypatch.setattr(ImageStore, "_write_blob", no_space)
    lab = SegmentationLabeler(shared_emulator.config, cache=tmp_path / "cache", progress=False)
    samples = [Sample(FileRef(external_id=im.name), (Instance(Prompt(box=im.objects[0].box())),))
               for im in images]
    with pytest.raises(CacheError, match="disk is full"):
        lab.label(samples)
    assert lab.report.failed == 0
