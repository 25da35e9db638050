"""Which images to label: ``samples_from_files`` lists CDF files by filter through the real
client against the emulator (every cursor page, partitions, the Instances API for
data-modeling projects), keeps what the segment endpoint takes and counts the rest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import encode_image, make_image
from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import FileRef, InstanceId
from cogseg_ml.samples.file_listing import (
    BAD_MIME,
    BAD_NAME,
    NOT_UPLOADED,
    read_file_refs,
    samples_from_files,
)

PNG = encode_image(make_image(1, 16, 16).pixels)


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator]) -> Emulator:
    """Twelve images in /site-a/ (data set "inspections", half labelled), and beside them a
    PDF, an image without content, a JPEG named .bin and an image elsewhere."""
    e = make_emulator(images=[])
    ds = e.state.add_data_set("inspections")
    for i in range(12):
        e.state.add_file(PNG, f"pump-{i:02d}.png", directory="/site-a/", data_set_id=ds,
                         labels=["valve-survey"] if i % 2 else [])
    e.state.add_file(b"%PDF", "manual.pdf", directory="/site-a/", data_set_id=ds)
    e.state.add_file(PNG, "pending.png", directory="/site-a/", data_set_id=ds, uploaded=False)
    e.state.add_file(PNG, "frame.bin", mime_type="image/jpeg", directory="/site-a/",
                     data_set_id=ds)
    e.state.add_file(PNG, "elsewhere.png", directory="/site-b/")
    return e


def list_requests(emu: Emulator, path: str = "/files/list") -> int:
    return sum(r.path.endswith(path) for r in emu.requests)


def test_listing_follows_the_cursor_and_counts_what_it_skips(emu: Emulator) -> None:
    emu.state.list_page_cap = 4  # short pages with a cursor: the listing must go on
    with SegmentationClient(emu.static_config()) as client:
        got = samples_from_files(client, {"directoryPrefix": "/site-a/"}, page_size=5)
    names = [got.names[r] for r in got]
    assert names == [f"pump-{i:02d}.png" for i in range(12)]
    assert all(r.id is not None for r in got)
    assert list_requests(emu) == 4  # 15 files in pages of at most 4
    assert got.listed == 15 and len(got) == 12 and got.skipped_total == 3
    assert got.skipped == {f"{BAD_MIME}; {BAD_NAME}": 1, NOT_UPLOADED: 1, BAD_NAME: 1}
    assert "manual.pdf" in got.examples[f"{BAD_MIME}; {BAD_NAME}"][0]
    summary = got.summary()
    assert "15 files listed, 12 JPEG/PNG images kept, 3 skipped" in summary
    assert got.config == client.config


def test_filters_are_applied_by_cdf(emu: Emulator) -> None:
    with SegmentationClient(emu.static_config()) as client:
        labelled = samples_from_files(client, {"dataSetIds": [{"externalId": "inspections"}],
                                               "labels": {"containsAny": [
                                                   {"externalId": "valve-survey"}]}},
                                      page_size=2)
        everything = samples_from_files(client)
        before = list_requests(emu)
        capped = samples_from_files(client, {"directoryPrefix": "/site-a/"}, max_files=3,
                                    page_size=2)
    assert [labelled.names[r] for r in labelled] == [f"pump-{i:02d}.png" for i in range(1, 12, 2)]
    assert labelled.listed == 6
    assert len(everything) == 13 and everything.listed == 16
    assert len(capped) == 3 and list_requests(emu) - before == 2  # stops once it has them


def test_partitions_cover_every_file_once(emu: Emulator) -> None:
    with SegmentationClient(emu.static_config()) as client:
        whole = samples_from_files(client, {"directoryPrefix": "/site-a/"})
        split = samples_from_files(client, {"directoryPrefix": "/site-a/"}, partitions=3,
                                   page_size=2)
    assert sorted(r.id or 0 for r in split) == sorted(r.id or 0 for r in whole)
    assert split.skipped == whole.skipped and split.listed == whole.listed == 15
    assert list_requests(emu) >= 1 + 3 * 3  # about 5 files per partition, in pages of 2


def test_a_data_modeling_space_is_listed_through_the_instances_api(
        make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(images=[])
    for i in range(7):
        emu.state.add_file(PNG, f"cam-{i}.jpg", mime_type="image/jpeg",
                           instance_id=("plant", f"cam-{i}"), directory="/line-1/")
    emu.state.add_file(PNG, "cam-x.jpg", instance_id=("plant", "cam-x"), uploaded=False,
                       directory="/line-1/")
    emu.state.add_file(PNG, "cam-y.jpg", instance_id=("plant", "cam-y"), directory="/line-2/")
    emu.state.add_file(PNG, "other.jpg", instance_id=("elsewhere", "cam-0"))
    emu.state.list_page_cap = 2
    with SegmentationClient(emu.static_config()) as client:
        got = samples_from_files(client, {"directoryPrefix": "/line-1/"}, space="plant",
                                 page_size=3)
        narrowed = samples_from_files(client, {}, space="plant", instance_filter={
            "prefix": {"property": ["node", "externalId"], "value": "cam-y"}})
    assert list(got) == [FileRef(instance_id=InstanceId("plant", f"cam-{i}")) for i in range(7)]
    assert got.skipped == {NOT_UPLOADED: 1} and got.source == "models/instances/list"
    assert list_requests(emu, "/models/instances/list") >= 5  # 8 nodes in pages of 2
    assert list_requests(emu, "/files/list") == 0
    assert list(narrowed) == [FileRef(instance_id=InstanceId("plant", "cam-y"))]


def test_bad_filters_are_refused_before_any_request(emu: Emulator) -> None:
    with SegmentationClient(emu.static_config()) as client:
        with pytest.raises(ValidationError, match="did you mean 'directoryPrefix'"):
            samples_from_files(client, {"directoryPrefx": "/site-a/"})
        with pytest.raises(ValidationError, match="no CogniteFile property"):
            samples_from_files(client, {"dataSetIds": [{"id": 1}]}, space="plant")
        with pytest.raises(ValidationError, match="partitions"):
            samples_from_files(client, {}, partitions=11)
        with pytest.raises(ValidationError, match="limit"):
            samples_from_files(client, {}, page_size=0)
        with pytest.raises(ValidationError, match="JSON object|mapping"):
            samples_from_files(client, ["directoryPrefix"])  # type: ignore[arg-type]
    assert list_requests(emu) == 0


def test_a_filter_cdf_refuses_is_a_validation_error_with_its_message(emu: Emulator) -> None:
    with SegmentationClient(emu.static_config()) as client:
        with pytest.raises(ValidationError) as err:
            samples_from_files(client, {"uploaded": "yes"})
    assert "CDF refused the files/list filter" in str(err.value)
    assert "filter.uploaded" in str(err.value) and err.value.status_code == 400


def test_a_file_of_references_reads_ids_external_ids_and_json(tmp_path: Path) -> None:
    f = tmp_path / "ids.txt"
    f.write_text("# inspection images\n123\n\npump-7.jpg\n"
                 '{"instanceId": {"space": "plant", "externalId": "cam-1"}}\n123\n')
    assert read_file_refs(f) == [FileRef(id=123), FileRef(external_id="pump-7.jpg"),
                                 FileRef(instance_id=InstanceId("plant", "cam-1"))]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    for path, said in ((tmp_path / "empty.txt", "holds no file reference"),
                       (tmp_path / "missing.txt", "no such file"), (tmp_path, "is a folder")):
        with pytest.raises(ValidationError, match=said):
            read_file_refs(path)
    (tmp_path / "bad.txt").write_text('{"space": 1}\n')
    with pytest.raises(ValidationError, match="line 1"):
        read_file_refs(tmp_path / "bad.txt")
