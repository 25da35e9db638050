"""TextBoxDetector on tiny random-weight Grounding DINO, MM-Grounding-DINO and OWLv2 models
built from their configs, saved with a tokenizer written in the test and loaded back through
``from_pretrained``, on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cogseg_ml.detect.detections import RawDetections
from cogseg_ml.detect.grounding_dino import class_scores_from_tokens
from cogseg_ml.detect.suppression import DetectionSettings, select
from cogseg_ml.detect.text_boxes import TextBoxDetector
from cogseg_ml.emulator.synthetic_images import make_image
from cogseg_ml.errors import DetectorCheckpointError, ValidationError
from tests.detect.conftest import CLASSES

tf = pytest.importorskip("transformers")

KEEP_ALL = {"box_threshold": 0.0, "text_threshold": 0.0, "cross_class_iou": None,
            "nms_iou": 1.0}


def images(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    return [make_image(seed + i, h, w).pixels for i in range(n)]


@pytest.fixture(scope="module")
def gdino(gdino_dir: Path) -> TextBoxDetector:
    return TextBoxDetector.from_pretrained(gdino_dir, device="cpu", **KEEP_ALL)


@pytest.fixture(scope="module")
def owl(owl_dir: Path) -> TextBoxDetector:
    return TextBoxDetector.from_pretrained(owl_dir, device="cpu", **KEEP_ALL)


# --- loading ---------------------------------------------------------------------------------


def test_folders_load_as_their_family_with_a_weights_identity(
        gdino: TextBoxDetector, owl: TextBoxDetector, mm_gdino_dir: Path) -> None:
    mm = TextBoxDetector.from_pretrained(mm_gdino_dir, device="cpu")
    assert (gdino.name, owl.name, mm.name) == ("grounding-dino", "owlv2", "mm-grounding-dino")
    assert type(mm.model.model).__name__ == "MMGroundingDinoForObjectDetection"
    assert gdino.model_version.startswith("grounding-dino:")
    assert len({gdino.model_version, owl.model_version, mm.model_version}) == 3
    assert gdino.device == torch.device("cpu") and gdino.dtype == torch.float32
    assert not gdino.autocast and gdino.batch_size == 4  # CPU defaults
    # The identity covers the settings: other thresholds are other cached detections.
    stricter = TextBoxDetector(gdino.model, box_threshold=0.5)
    assert stricter.identity != gdino.identity and stricter.model_version == gdino.model_version


def test_a_missing_or_wrong_folder_is_a_clear_error_naming_it(tmp_path: Path,
                                                              gdino_dir: Path) -> None:
    sam = tmp_path / "sam21"
    sam.mkdir()
    (sam / "config.json").write_text(json.dumps({"model_type": "sam2"}))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(gdino_dir / "config.json", no_weights)
    no_processor = tmp_path / "no-processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(gdino_dir / name, no_processor)
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    cases = {tmp_path / "nowhere": "does not exist", a_file: "is a file, not a folder",
             tmp_path: "has no config.json", sam: "not a text-prompted detector",
             no_weights: "has no weights", no_processor: "no usable processor"}
    for folder, said in cases.items():
        with pytest.raises(DetectorCheckpointError) as err:
            TextBoxDetector.from_pretrained(folder, device="cpu")
        assert said in str(err.value) and str(folder) in str(err.value), err.value
        assert err.value.path == str(folder)
    with pytest.raises(DetectorCheckpointError, match="segmentation model"):
        TextBoxDetector.from_pretrained(sam, device="cpu")


def test_bad_device_dtype_and_batch_size_are_refused(gdino: TextBoxDetector) -> None:
    with pytest.raises(ValidationError, match="dtype"):
        TextBoxDetector(gdino.model, dtype=torch.int8)
    with pytest.raises(ValidationError, match="batch_size"):
        TextBoxDetector(gdino.model, batch_size=0)
    with pytest.raises(ValidationError, match="DetectorModel"):
        TextBoxDetector(object())  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ValidationError, match="no CUDA device"):
            TextBoxDetector.from_pretrained(Path("unused"), device="cuda")


# --- prompts and outputs ---------------------------------------------------------------------


def test_each_model_gets_the_prompt_form_it_expects(gdino: TextBoxDetector,
                                                    owl: TextBoxDetector) -> None:
    assert gdino.prompt_texts(CLASSES) == ["valve. pressure gauge. flange."]
    assert owl.prompt_texts(CLASSES) == ["a photo of a valve", "a photo of a pressure gauge",
                                         "a photo of a flange"]
    (chunk,) = gdino.model.chunks(list(CLASSES))
    tokens = gdino.model.tokenizer.convert_ids_to_tokens(chunk.input_ids[0].tolist())
    assert [[tokens[t] for t in span] for span in chunk.spans] == \
        [["valve"], ["pressure", "gauge"], ["fl", "##ange"]]


def test_raw_outputs_have_one_row_per_query_and_one_column_per_class(
        gdino: TextBoxDetector, owl: TextBoxDetector) -> None:
    px = images(2)
    with torch.inference_mode():
        for det, queries in ((gdino, gdino.model.model.config.num_queries), (owl, 16)):
            raws = det.model.raw(px, CLASSES)
            assert len(raws) == 2
            for r in raws:
                assert r.boxes.shape == (queries, 4)
                assert r.box_scores.shape == (queries,)
                assert r.class_scores.shape == (queries, len(CLASSES))
                assert float(r.class_scores.min()) >= 0 and float(r.class_scores.max()) <= 1
                # a box's score is at least its best class's (token max vs span mean)
                assert bool((r.box_scores + 1e-6 >= r.class_scores.max(dim=1).values).all())


def test_detections_name_only_the_callers_whole_phrases(gdino: TextBoxDetector,
                                                        owl: TextBoxDetector) -> None:
    px = images(3)
    for det in (gdino, owl):
        found = det.detect(px, [" valve", "pressure  gauge", "flange"])
        assert all(found)
        for dets in found:
            assert {d.label for d in dets} <= set(CLASSES)
            for d in dets:
                x0, y0, x1, y1 = d.box
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48
            assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def test_token_scores_map_to_the_whole_phrase_where_transformers_gives_word_pieces(
        gdino: TextBoxDetector) -> None:
    """transformers' own post-processing names a box by the tokens above the text threshold
    (a word piece, half a phrase, or two phrases merged); here the box gets a whole phrase."""
    (chunk,) = gdino.model.chunks(list(CLASSES))
    valve, (pressure, gauge), (fl, ange) = chunk.spans
    length = int(gdino.model.model.config.max_text_len)
    logits = torch.full((1, 3, length), -6.0)
    logits[0, 0, gauge] = 4.0  # only "gauge" fires
    logits[0, 1, ange] = 4.0  # only "##ange" fires
    logits[0, 2, [valve[0], pressure]] = 4.0  # tokens of two phrases fire
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2], [0.5, 0.2, 0.3, 0.2]]])
    out = tf.models.grounding_dino.modeling_grounding_dino.GroundingDinoObjectDetectionOutput(
        logits=logits, pred_boxes=boxes)
    theirs = gdino.model.processor.post_process_grounded_object_detection(
        out, input_ids=chunk.input_ids, threshold=0.3, text_threshold=0.3,
        target_sizes=[(100, 100)])[0]["text_labels"]
    assert theirs == ["gauge", "##ange", "valve pressure"]  # the complaint, reproduced
    box_scores, class_scores = class_scores_from_tokens(logits.sigmoid()[0], chunk.spans)
    corners = torch.cat([boxes[0, :, :2] - boxes[0, :, 2:] / 2,
                         boxes[0, :, :2] + boxes[0, :, 2:] / 2], dim=1) * 100
    dets, _ = select(RawDetections(corners, box_scores, class_scores), CLASSES, 100, 100,
                     DetectionSettings(box_threshold=0.3, text_threshold=0.3))
    assert sorted(d.label for d in dets) == ["flange", "pressure gauge", "valve"]
    # A phrase is scored by all its tokens: "gauge" alone is half of "pressure gauge".
    assert float(class_scores[0, 1]) == pytest.approx(
        (float(torch.sigmoid(torch.tensor(4.0))) + float(torch.sigmoid(torch.tensor(-6.0)))) / 2)


def test_thresholds_filter_what_the_model_proposes(gdino_dir: Path, owl_dir: Path) -> None:
    px = images(1)
    for folder in (gdino_dir, owl_dir):
        none = TextBoxDetector.from_pretrained(folder, device="cpu", box_threshold=1.0)
        assert none.detect(px, CLASSES) == [[]]
        assert none.dropped["below box threshold"] > 0
        every = TextBoxDetector.from_pretrained(folder, device="cpu", **KEEP_ALL,
                                                max_per_image=1000)
        (all_boxes,) = every.detect(px, CLASSES)
        scores = sorted(d.score for d in all_boxes)
        cut = scores[len(scores) // 2]
        half = TextBoxDetector(every.model, **{**KEEP_ALL, "box_threshold": cut},
                               max_per_image=1000)
        (kept,) = half.detect(px, CLASSES)
        assert len(kept) == sum(s >= cut for s in scores) < len(all_boxes)
        strict = TextBoxDetector(every.model, **{**KEEP_ALL, "text_threshold": 0.99})
        assert strict.detect(px, CLASSES) == [[]]
        assert strict.dropped["below text threshold"] > 0


def test_batched_equals_one_by_one(gdino: TextBoxDetector, owl: TextBoxDetector) -> None:
    px = images(3) + images(1, 40, 72, seed=9)  # two sizes: Grounding DINO batches by size
    for det in (gdino, owl):
        one = TextBoxDetector(det.model, **KEEP_ALL, max_per_image=1000, batch_size=1)
        many = TextBoxDetector(det.model, **KEEP_ALL, max_per_image=1000, batch_size=4)
        singles = one.detect(px, CLASSES)
        batched = many.detect(px, CLASSES)
        assert many.forward_calls < one.forward_calls == 4
        for a, b in zip(singles, batched, strict=True):
            assert [d.label for d in a] == [d.label for d in b]
            np.testing.assert_allclose([d.box for d in a], [d.box for d in b], atol=1e-3)
            np.testing.assert_allclose([d.score for d in a], [d.score for d in b], atol=1e-5)


def test_a_long_class_list_is_split_into_prompts_that_fit(gdino: TextBoxDetector) -> None:
    classes = [f"valve {i}" for i in range(30)]  # 30 x 3 tokens > the tiny model's 64
    chunks = gdino.model.chunks(classes)
    assert len(chunks) > 1
    assert sorted(k for c in chunks for k in c.classes) == list(range(30))
    assert all(c.input_ids.shape[1] <= gdino.model.max_text_len for c in chunks)
    with torch.inference_mode():
        (r,) = gdino.model.raw(images(1), classes)
    assert r.class_scores.shape == (30 * len(chunks), 30)
    (dets,) = gdino.detect(images(1), classes)
    assert dets and {d.label for d in dets} <= set(classes)


def test_class_lists_and_images_are_checked(gdino: TextBoxDetector,
                                            owl: TextBoxDetector) -> None:
    for bad in ([], ["valve", "VALVE"], ["a. b"]):
        with pytest.raises(ValidationError):
            gdino.detect(images(1), bad)
    with pytest.raises(ValidationError, match=r"images\[0\]"):
        gdino.detect([np.zeros((8, 8), np.uint8)], CLASSES)
    with pytest.raises(ValidationError, match="16 tokens"):
        owl.detect(images(1), ["valve " * 12])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_in_bf16_agree_with_the_cpu(gdino_dir: Path) -> None:
    cpu = TextBoxDetector.from_pretrained(gdino_dir, device="cpu", **KEEP_ALL)
    gpu = TextBoxDetector.from_pretrained(gdino_dir, device="cuda", **KEEP_ALL)
    assert gpu.autocast and gpu.dtype == torch.bfloat16 and gpu.batch_size == 8
    px = images(8)
    a, b = cpu.detect(px, CLASSES), gpu.detect(px, CLASSES)
    assert gpu.forward_calls == 1
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(max(d.score for d in x), max(d.score for d in y), atol=0.05)
