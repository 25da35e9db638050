"""Run in Label Studio's own environment: read ``{"config": XML, "predictions": [...]}`` on
stdin, print the JSON list of what ``label_studio_sdk``'s ``LabelInterface.validate_prediction``
finds wrong (``[]``: every prediction is valid for the config)."""

from __future__ import annotations

import json
import sys

from label_studio_sdk.label_interface import LabelInterface


def main() -> None:
    job = json.load(sys.stdin)
    interface = LabelInterface(job["config"])
    errors = []
    for n, prediction in enumerate(job["predictions"]):
        for error in interface.validate_prediction(prediction, return_errors=True) or []:
            errors.append(f"prediction {n}: {error}")
    json.dump(errors, sys.stdout)


if __name__ == "__main__":
    main()
