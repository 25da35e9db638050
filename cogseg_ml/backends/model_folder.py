"""The one check of a model folder in transformers' format, shared by the local segmenter
(:mod:`cogseg_ml.backends.sam2`) and the text-prompted detectors
(:mod:`cogseg_ml.detect.checkpoints`): it exists, is a folder, has a readable ``config.json``
whose ``model_type`` is one we drive, and holds weights. Each refusal names the folder, what
was expected and how to get one (nothing is ever downloaded)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path

from cogseg_ml.errors import ValidationError

__all__ = ["WEIGHT_FILES", "check_model_folder"]

#: The files that hold a transformers model's weights (one is enough).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _nothing(_: object) -> str:
    return ""


def check_model_folder(path: str | Path, *, kind: str, noun: str, model_types: Collection[str],
                       expected: str, download_hint: str, error: type[ValidationError],
                       file_hint: Callable[[Path], str] = _nothing,
                       no_config_hint: Callable[[Path], str] = _nothing,
                       type_hint: Callable[[object], str] = _nothing,
                       without_weights: Collection[str] = ()) -> str:
    """The folder's ``model_type`` (one of ``model_types``), or ``error`` saying what is wrong.

    Args:
        kind: what the folder is, as messages name it (``"SAM checkpoint"``, ``"detector"``).
        noun: what a wrong ``model_type`` is not (``"a SAM model"``).
        expected: what a usable folder holds, in a few words.
        download_hint: how to get one.
        error: the error class (raised with ``path=``).
        file_hint, no_config_hint, type_hint: extra words for a file given as the folder, a
            folder without ``config.json``, a ``model_type`` we do not drive.
        without_weights: model types whose folders hold no weights files.
    """
    p = Path(path).expanduser()
    where = str(path)
    if not p.exists():
        raise error(f"{kind} folder {where!r} does not exist ({expected}; nothing is "
                    f"downloaded: {download_hint})", path=where)  # type: ignore[call-arg]
    if not p.is_dir():
        raise error(f"{kind} {where!r} is a file, not a folder ({expected}){file_hint(p)}",
                    path=where)  # type: ignore[call-arg]
    config = p / "config.json"
    if not config.is_file():
        raise error(f"{kind} folder {where!r} has no config.json ({expected})"
                    f"{no_config_hint(p)}", path=where)  # type: ignore[call-arg]
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise error(f"{str(config)!r} is not a readable JSON config ({type(exc).__name__}: "
                    f"{exc})", path=where) from None  # type: ignore[call-arg]
    if model_type not in model_types:
        raise error(f"{kind} folder {where!r} holds a model of type {model_type!r}, not {noun} "
                    f"({expected}){type_hint(model_type)}", path=where)  # type: ignore[call-arg]
    if model_type not in without_weights and \
            not any((p / name).is_file() for name in WEIGHT_FILES):
        raise error(f"{kind} folder {where!r} has no weights (looked for "
                    f"{', '.join(WEIGHT_FILES)})", path=where)  # type: ignore[call-arg]
    return str(model_type)
