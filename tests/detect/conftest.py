"""Tiny random-weight detector folders (Grounding DINO, MM-Grounding-DINO, OWLv2) with a small
tokenizer vocabulary written here, saved once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the detect extra (transformers) is needed")

from cogseg_ml.detect.random_checkpoints import (
    save_random_grounding_dino,
    save_random_owlv2,
)

CLASSES = ["valve", "pressure gauge", "flange"]
# WordPiece: "flange" is two pieces ("fl", "##ange"), "pressure gauge" two words.
BERT_WORDS = ["valve", "pressure", "gauge", "fl", "##ange", "pipe", "elbow", "tank"]
CLIP_WORDS = ["valve", "pressure", "gauge", "flange", "pipe", "elbow", "tank"]


@pytest.fixture(scope="session")
def gdino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_grounding_dino(tmp_path_factory.mktemp("det") / "gdino", BERT_WORDS,
                                      seed=3)


@pytest.fixture(scope="session")
def mm_gdino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_grounding_dino(tmp_path_factory.mktemp("det") / "mm", BERT_WORDS,
                                      seed=4, family="mm-grounding-dino")


@pytest.fixture(scope="session")
def owl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_owlv2(tmp_path_factory.mktemp("det") / "owlv2", CLIP_WORDS, seed=5)
