"""``cogseg label``: prompts in, a COCO file out (resumable, atomic).

Prompts come from a prompts file, a COCO file of boxes, CDF annotations, or class names
(``--classes "valve,pressure gauge" --detector DIR``): a text-prompted detector boxes every
image of a file listing (``--files-filter JSON``) or a list of files (``--file-ids FILE``) and
each box is segmented like any box prompt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from cogseg_ml.cli.common import (
    AUTH_HINT,
    EXIT_AUTH,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNAVAILABLE,
    MODEL_HELP,
    RESUME_HINT,
    UNREACHABLE_HINT,
    count,
    device,
    file_ids,
    files_filter,
    fraction,
    guard_outputs,
    hinted,
    input_file,
    local_model,
    output_file,
    positive,
    retired_line,
    say,
    seconds,
    signals_stop_the_run,
    write_atomically,
)
from cogseg_ml.errors import ForeignOutputError, ValidationError
from cogseg_ml.outputs.owned_files import REPORT_MARKER, check_replaceable, written_by

if TYPE_CHECKING:
    from cogseg_ml.labeler import LabelingReport

def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n

def _cross_class(text: str) -> float | None:
    return None if text.lower() in ("off", "none") else fraction(text)


def _partitions(text: str) -> int:
    n = positive(text)
    if n > 10:
        raise argparse.ArgumentTypeError(f"files/list splits into at most 10 partitions, got "
                                         f"{text!r}")
    return n


def _stopped(summary: str | None, name: str) -> int:
    """The run's summary (its first line says what was finished and stored and how to
    resume), or one line when no labelling had started."""
    if summary:
        print(summary, file=sys.stderr)
    else:
        say(f"stopped by {name}: {RESUME_HINT}")
    return EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT


#: What became of a run refused at its end: its masks are in the cache.
_CACHED = "nothing was written; the masks are cached, so running again with another path is quick"


def _report_json(report: LabelingReport, detection: Any = None) -> str:
    """``--report``'s text: cogseg's marker first (so a later run may replace the file), then
    the run's report and, for a run from class names, its detection counts."""
    details = {REPORT_MARKER: written_by(), **report.as_dict()}
    if detection is not None:
        details["detection"] = detection.as_dict()
    return json.dumps(details, indent=2)


def _report_when_stopped(path: Any, report: LabelingReport, detection: Any) -> None:
    """``--report`` of a stopped run: what was finished and stored, written like any report
    (atomically, never over a file cogseg did not write); a failure is one line, not a
    different exit code."""
    try:
        check_replaceable(path, "--report", note="the report was not written")
        write_atomically(path, _report_json(report, detection))
    except ValidationError as exc:
        say(str(exc))
    except OSError as exc:
        say(f"--report {path} was not written ({exc.strerror or exc})")


def _failure_kinds(report: LabelingReport) -> set[str]:
    return {reason.split(":", 1)[0] for reason in report.failure_reasons}


def _cdf_unusable(report: LabelingReport, retired: Any = None) -> int | None:
    """When nothing was labelled and every failure says CDF could not be reached (or refused
    the credentials, or its Vision API is retired: ``retired``, the error if known), the run
    as a whole failed: say so once (exit 3 or 4), write nothing."""
    if report.labelled or not report.failed or not report.failures:
        return None
    kinds = _failure_kinds(report)
    unreachable = {"ApiUnavailableError", "CdfUnreachableError", "TokenEndpointUnavailable"}
    reason = str(report.failures[0]["reason"]).split(": ", 1)[-1]
    if kinds == {"ApiRetiredError"}:
        say(retired_line(retired))
        return EXIT_UNAVAILABLE
    if kinds == {"AuthenticationError"}:
        say("credentials refused: " + hinted(reason, AUTH_HINT))
        return EXIT_AUTH
    if kinds <= unreachable:
        say("CDF unreachable: " + hinted(reason, UNREACHABLE_HINT))
        return EXIT_UNAVAILABLE
    return None


def _no_annotations(client: Any, ids: list[int], got: Any) -> str:
    """Why ``--from-annotations`` found nothing to label, with the statuses CDF does hold."""
    from collections import Counter

    line = f"nothing to label: {got.summary()}"
    if got.status is not None and not got.read:
        held = Counter(a.status for a in client.list_annotations(
            ids, annotation_type="images.ObjectDetection", status=None))
        if held:
            found = ", ".join(f"{n} {st}" for st, n in sorted(held.items()))
            line += (f"; these files hold {found} (choose with --annotation-status "
                     "approved|suggested|rejected|any)")
        else:
            line += "; these files hold no ObjectDetection annotations at all"
    return line + "; --out was not written"


def _no_overwrites(args: argparse.Namespace, out: Any, report_path: Any) -> None:
    """No output of the run may be one of its inputs or a file of its cache."""
    at_file = args.files_filter[1:] if args.files_filter and \
        args.files_filter.startswith("@") else None
    inputs = [("--prompts", args.prompts), ("--coco-boxes", args.coco_boxes),
              ("--file-ids", args.file_ids), ("--files-filter", at_file),
              ("--detector", args.detector), ("--model", args.model)]
    outputs = [("--out", out)] + ([("--report", report_path)] if report_path else [])
    guard_outputs(outputs, inputs, cache=args.cache)


def _text_input(args: argparse.Namespace) -> tuple[tuple[str, ...], Any, Any] | None:
    """``(classes, filter, refs)`` of a run from class names (``None`` for other runs), all
    checked before anything is loaded or asked."""
    from cogseg_ml.detect.class_prompts import split_classes
    from cogseg_ml.samples.file_listing import read_file_refs

    extras = [flag for flag, v in (("--detector", args.detector),
                                   ("--files-filter", args.files_filter),
                                   ("--file-ids", args.file_ids), ("--space", args.space))
              if v is not None]
    if args.classes is None:
        if extras:
            raise ValidationError(f"{extras[0]} goes with --classes (labelling from class "
                                  "names)")
        return None
    classes = split_classes(args.classes)
    if not args.detector:
        raise ValidationError("--classes needs --detector DIR: a Grounding DINO or OWLv2 folder "
                              "in transformers' format, e.g. from `hf download "
                              "IDEA-Research/grounding-dino-tiny --local-dir DIR`")
    if args.files_filter is None and args.file_ids is None:
        raise ValidationError("--classes needs the images to box: --files-filter JSON (a CDF "
                              "files/list filter, e.g. '{\"directoryPrefix\": \"/site-a/\"}') "
                              "or --file-ids FILE (one file id or external id a line)")
    if args.space is not None and args.files_filter is None:
        raise ValidationError("--space lists CogniteFile nodes: give --files-filter too (e.g. "
                              "'{}' for every file of the space)")
    if args.file_ids is not None:
        return classes, None, read_file_refs(input_file(args.file_ids, "--file-ids"))
    return classes, files_filter(args.files_filter), None


def _detector(args: argparse.Namespace) -> Any:
    """The detector of ``--detector DIR`` (loaded now: a bad folder stops before any request)."""
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValidationError(f"--device {args.device}: no CUDA device is available here; "
                                  "use --device cpu (or auto)")
    try:
        from cogseg_ml.detect.text_boxes import TextBoxDetector

        return TextBoxDetector.from_pretrained(
            args.detector, device=args.device, box_threshold=args.box_threshold,
            text_threshold=args.text_threshold, nms_iou=args.nms_iou,
            cross_class_iou=args.cross_class_iou, max_per_image=args.max_per_image)
    except ImportError as exc:  # the optional extra is not installed
        raise ValidationError(f"--detector {args.detector}: {exc}") from None


def _label_backend(args: argparse.Namespace, config: Any) -> tuple[Any, Any]:
    """``(backend, api)`` for ``--backend``: what the labeler runs, and the API backend in it
    (``None`` for ``local``). The local model is loaded here, before any request."""
    from cogseg_ml.backends.api_backend import ApiBackend
    from cogseg_ml.backends.fallback import FallbackBackend

    if args.backend == "api":
        if args.model:
            raise ValidationError("--model goes with --backend local or --backend fallback "
                                  "(--backend api segments through CDF's Vision API)")
        api = ApiBackend(config, concurrency=args.concurrency)
        return api, api
    local = local_model(args.model, args.device, f"--backend {args.backend}")
    if args.backend == "local":
        return local, None
    api = ApiBackend(config, concurrency=args.concurrency)
    return FallbackBackend(api, local), api


def run(args: argparse.Namespace) -> int:
    from cogseg_ml.api.client import SegmentationClient
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.errors import RunInterrupted
    from cogseg_ml.labeler import SegmentationLabeler
    from cogseg_ml.samples import (
        load_records,
        samples_from_annotations,
        samples_from_coco,
        samples_from_records,
    )

    # Every path is checked before any request: a run never fails at its end on a typo.
    text = _text_input(args)
    prompts = input_file(args.prompts, "--prompts") if args.prompts else None
    coco = input_file(args.coco_boxes, "--coco-boxes") if args.coco_boxes else None
    ids = file_ids(args.from_annotations) if args.from_annotations else []
    out = output_file(args.out, "--out")
    report_path = output_file(args.report, "--report") if args.report is not None else None
    _no_overwrites(args, out, report_path)
    config = CdfConfig.from_env()
    if args.job_timeout is not None:  # 0: no limit
        config = config.with_options(retry=dataclasses.replace(
            config.retry, job_timeout_s=args.job_timeout or None))
    detector = _detector(args) if text is not None else None
    backend, api = _label_backend(args, config)
    retired = None
    t0 = time.perf_counter()
    labeler: SegmentationLabeler | None = None
    samples: Any = None
    text_samples: Any = None  # a run from class names: the detector's samples
    with signals_stop_the_run() as received:
        try:
            if prompts is not None:
                samples = samples_from_records(load_records(prompts),
                                               on_bad_prompt=args.on_bad_prompt)
            elif coco is not None:
                samples = samples_from_coco(coco, file_key=args.coco_file_key,
                                            on_bad_prompt=args.on_bad_prompt)
            elif text is None:
                with SegmentationClient(config) as client:
                    samples = samples_from_annotations(client, ids,
                                                       status=None if args.annotation_status
                                                       == "any" else args.annotation_status,
                                                       on_bad_prompt=args.on_bad_prompt)
                    if not samples:  # say why before the labeler says "nothing labelled"
                        say(_no_annotations(client, ids, samples))
                        return EXIT_PARTIAL
                    print(samples.summary(), file=sys.stderr)
            labeler = SegmentationLabeler(backend, config=config, cache=args.cache,
                                          categories=list(text[0]) if text else None,
                                          min_score=args.min_score, min_area=args.min_area,
                                          keep=args.keep, concurrency=args.concurrency,
                                          shard=args.shard, progress=not args.no_progress)
            if text is not None:
                samples = text_samples = _boxes_from_classes(args, config, text, detector,
                                                             labeler)
            report = labeler.label(samples)
            retired = api.retired if api is not None and \
                "ApiRetiredError" in _failure_kinds(report) else None
            failed_run = _cdf_unusable(report, retired)
            if failed_run is not None:
                return failed_run  # --out is left as it was
            if not report.labelled:  # nothing to write: --out is left as it was
                print(report.summary(), file=sys.stderr)
                say(f"nothing was labelled: {out} was not written"
                    f"{' (left as it was)' if out.exists() else ''}")
                return EXIT_PARTIAL
            for flag, path in (("--out", out), ("--report", report_path)):
                if path is not None:  # saved there by someone while the run went on?
                    check_replaceable(path, flag, note=_CACHED)
            try:  # atomic: all or nothing; from class names, the detector named per label
                labeler.to_coco(out, segmentation=args.segmentation,
                                samples=samples if text is not None else None)
            except ForeignOutputError:  # saved at --out while the file was being written
                check_replaceable(out, "--out", note=_CACHED)  # say so in --out's words
                raise
            if args.write_back:
                wb = labeler.write_back(creating_app=args.creating_app)
                print(f"write-back: {wb.created} created, {wb.already_present} already "
                      f"present, {wb.skipped} skipped", file=sys.stderr)
        except RunInterrupted as exc:
            if labeler is not None and report_path is not None:
                _report_when_stopped(report_path, labeler.report, text_samples)
            return _stopped(exc.summary, received[0] if received else exc.signal_name)
        except KeyboardInterrupt as exc:
            name = received[0] if received else (str(exc.args[0]) if exc.args else "SIGINT")
            summary = None
            if labeler is not None:
                labeler.report.seconds = time.perf_counter() - t0
                labeler.report.interrupted = name
                summary = labeler.report.summary()
                if report_path is not None:
                    _report_when_stopped(report_path, labeler.report, text_samples)
            return _stopped(summary, name)
        finally:  # nothing of the run stays open once the command returns (its cache above all)
            if labeler is not None:
                labeler.close()
    if report_path is not None:
        write_atomically(report_path, _report_json(report, text_samples))
    print(report.summary(), file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    if retired is not None:  # some items failed on it, others were labelled (e.g. cached)
        say(retired_line(retired))
    images_failed = bool(text is not None and text_samples.failed)
    return EXIT_OK if report.failed == 0 and not images_failed else EXIT_PARTIAL


def _boxes_from_classes(args: argparse.Namespace, config: Any, text: Any, detector: Any,
                        labeler: Any) -> Any:
    """The listing (or the files given), then the detector's boxes as samples."""
    from cogseg_ml.api.client import SegmentationClient
    from cogseg_ml.samples.file_listing import samples_from_files
    from cogseg_ml.samples.from_text import samples_from_text

    classes, flt, refs = text
    if refs is None:
        with SegmentationClient(config) as client:
            refs = samples_from_files(client, flt, space=args.space, partitions=args.partitions)
        print(refs.summary(), file=sys.stderr)
    found = samples_from_text(refs, classes, detector, store=labeler.store,
                              progress=not args.no_progress)
    print(found.summary(), file=sys.stderr)
    return found



def register(sub: Any) -> None:
    """Add ``label`` to the subcommands ``sub``."""
    lab = sub.add_parser(
        "label", help="label images from prompts into a COCO file",
        description="Segment every prompt through the CDF API, or a local model (--backend "
                    "local --model DIR; images are still read from CDF files), keep results in "
                    "the mask cache (a re-run resumes), and write a COCO instance-segmentation "
                    "file (written only when the run ends, atomically). Credentials come from "
                    "COGNITE_* variables. Exit 0: all labelled; 1: some prompts failed (see the "
                    "summary); 2: bad input, a path or model folder that cannot be used; 3: CDF "
                    "unreachable, or its Vision API retired (with --backend api); 4: "
                    "credentials refused; 130/143: stopped by SIGINT/SIGTERM (run the same "
                    "command again to resume).")
    src = lab.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="JSON list or JSONL of {file, points, box, category}")
    src.add_argument("--coco-boxes", help="COCO detection file: its boxes become prompts")
    src.add_argument("--from-annotations", metavar="FILE_IDS",
                     help="CDF file ids (comma separated): their ObjectDetection boxes")
    src.add_argument("--classes", metavar="NAMES",
                     help="class names, comma separated (e.g. 'valve,pressure gauge'): "
                          "--detector DIR boxes them in the images of --files-filter or "
                          "--file-ids, and each box is segmented")
    txt = lab.add_argument_group("labelling from class names (--classes)")
    txt.add_argument("--detector", metavar="DIR",
                     help="a Grounding DINO, MM-Grounding-DINO/LLMDet or OWLv2 folder in "
                          "transformers' format (local files only)")
    files = txt.add_mutually_exclusive_group()
    files.add_argument("--files-filter", metavar="JSON",
                       help="a CDF files/list filter as JSON (or @FILE holding it), e.g. "
                            "'{\"dataSetIds\": [{\"externalId\": \"inspections\"}], "
                            "\"directoryPrefix\": \"/site-a/\"}'; non-JPEG/PNG and "
                            "not-uploaded files are skipped and counted")
    files.add_argument("--file-ids", metavar="FILE",
                       help="a text file of files to box: one id, external id or JSON "
                            "reference a line")
    txt.add_argument("--space", help="with --files-filter: list the CogniteFile nodes of this "
                                     "data-modeling space (Instances API) instead of files/list")
    txt.add_argument("--partitions", type=_partitions, default=None, metavar="N",
                     help="read files/list in N partitions at once (1..10)")
    txt.add_argument("--box-threshold", type=fraction, default=0.3,
                     help="keep boxes scoring at least this (default 0.3)")
    txt.add_argument("--text-threshold", type=fraction, default=0.25,
                     help="the class phrase must match at least this well (default 0.25)")
    txt.add_argument("--nms-iou", type=fraction, default=0.5,
                     help="IoU at which two boxes of one class are one object (default 0.5)")
    txt.add_argument("--cross-class-iou", type=_cross_class, default=0.7, metavar="IOU|off",
                     help="IoU at which boxes of two classes are one object, which keeps the "
                          "better class (default 0.7; off keeps both)")
    txt.add_argument("--max-per-image", type=positive, default=100,
                     help="at most this many boxes per image (default 100)")
    lab.add_argument("--on-bad-prompt", choices=["fail", "skip", "clip"], default="fail",
                     help="a malformed prompt (e.g. a zero-width box): fail the run listing "
                          "them all (default), skip them, or clip boxes into the image")
    lab.add_argument("--coco-file-key", default="file_name",
                     help="COCO image field naming the CDF file (file_name = external id)")
    lab.add_argument("--annotation-status", default="approved",
                     choices=["approved", "suggested", "rejected", "any"],
                     help="with --from-annotations: only annotations of this status (CDF's "
                          "three, or any)")
    lab.add_argument("--backend", choices=["api", "local", "fallback"], default="api",
                     help="where masks come from: api (CDF's Vision API, default), local (the "
                          "model of --model only), fallback (the API, the local model when the "
                          "API is unavailable, for good once it is retired)")
    lab.add_argument("--model", metavar="DIR",
                     help=f"with --backend local or fallback: {MODEL_HELP}")
    lab.add_argument("--device", type=device, default="auto",
                     help="where the local model runs: auto (CUDA when available), cpu, cuda, "
                          "cuda:N")
    lab.add_argument("--out", required=True,
                     help="the COCO JSON file to write (an existing file is replaced only when "
                          "cogseg wrote it)")
    lab.add_argument("--segmentation", choices=["rle", "polygon"], default="rle")
    lab.add_argument("--concurrency", type=positive, default=32, help="jobs in flight")
    lab.add_argument("--job-timeout", type=seconds, default=None, metavar="SECONDS",
                     help="give up on a segmentation job not Completed or Failed this many "
                          "seconds after its creation: the item fails with JobTimeoutError "
                          "and the run goes on (exit 1); default 900 "
                          "(RetryConfig.job_timeout_s); 0: no limit")
    lab.add_argument("--min-score", type=fraction, default=0.0,
                     help="drop segments scoring below this (0..1)")
    lab.add_argument("--min-area", type=count, default=0, help="drop segments under N pixels")
    lab.add_argument("--keep", choices=["best", "all"], default="best",
                     help="best segment per prompt, or all")
    lab.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                     help="label only shard I of N (merge caches with 'cogseg cache merge')")
    lab.add_argument("--cache", default=None, help="mask cache path (default: user cache)")
    lab.add_argument("--write-back", action="store_true",
                     help="also create 'suggested' ObjectDetection polygon annotations in CDF")
    lab.add_argument("--creating-app", default="cogseg-ml")
    lab.add_argument("--report", help="also write the run's report as JSON here (also when "
                                      "stopped; an existing file is replaced only when cogseg "
                                      "wrote it)")
    lab.add_argument("--no-progress", action="store_true")
    lab.set_defaults(func=run)
