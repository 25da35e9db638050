"""The review page: a static HTML file and one thumbnail per mask, opened from disk.

:func:`write_review_page` writes ``out/index.html`` and ``out/thumbs-<token>/<ann id>.png``.
The page lists every mask of a COCO labels file, grouped by image, the images with the lowest
score first and the masks within each image lowest first; each shows its category, score, area
and source (the CDF API or a local model). A reviewer filters by category, source and decision,
accepts or rejects masks by click or key, and saves the decisions as a JSON file (see
:mod:`cogseg_ml.review.decisions`) that ``cogseg export --decisions`` applies. The page embeds
the labels file's name and digest, so its decisions name the labels they were made on.

The page needs no server and no network: its script and style are inlined, its pictures are
files beside it. The folder is written whole (:mod:`cogseg_ml.exports.folder_writer`): built
aside and
put in place at once, replacing an earlier page there; the thumbnails folder has a new name each
time, so a browser never mixes an old page's pictures with a new one's.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cogseg_ml.strict_json as strict_json
from cogseg_ml.backends.api_backend import API_BACKEND
from cogseg_ml.errors import CogsegError, ValidationError
from cogseg_ml.exports.folder_writer import output_folder
from cogseg_ml.image_decode import decode_array
from cogseg_ml.progress import progress_bar
from cogseg_ml.review.decisions import labels_digest
from cogseg_ml.review.images import ImageSource
from cogseg_ml.review.thumbnails import annotation_mask, thumbnail

__all__ = ["ReviewPage", "provenance_of", "write_review_page"]

PROVENANCE_LABELS = {"api": "API", "local": "local model", "unknown": "unknown source"}


@dataclass(frozen=True)
class ReviewPage:
    """What :func:`write_review_page` wrote.

    Attributes:
        index: the page (``out/index.html``).
        masks: masks on the page.
        images: images on the page (those without masks are left out).
        without_picture: file name to the reason, for images whose masks are drawn on grey
            because their bytes could not be had.
    """

    index: Path
    masks: int
    images: int
    without_picture: dict[str, str] = field(default_factory=dict)


def provenance_of(source: object) -> str:
    """``"api"`` for masks from the CDF API, ``"local"`` for a local model's, else
    ``"unknown"`` (a labels file from elsewhere, without ``source``)."""
    if not isinstance(source, str) or not source:
        return "unknown"
    return "api" if source == API_BACKEND else "local"


def _int(record: Mapping[str, Any], key: str, what: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} needs an integer {key!r}, got {value!r}; is the labels "
                              "file COCO?")
    return value


def _score(ann: Mapping[str, Any]) -> float | None:
    s = ann.get("score")
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None


def _plan(coco: Mapping[str, Any]) -> tuple[list[tuple[Mapping[str, Any], list[Any]]],
                                             dict[int, str], dict[int, int]]:
    """Images with their masks in page order, category names, and category colours.

    Raises:
        ValidationError: the file is not a consistent COCO file (ids missing or repeated, an
            annotation on an image it does not list).
    """
    if not isinstance(coco, Mapping):
        raise ValidationError("a COCO labels file is a JSON object")
    images, anns = coco.get("images"), coco.get("annotations")
    cats = coco.get("categories", [])
    if not isinstance(images, list) or not isinstance(anns, list) or not isinstance(cats, list):
        raise ValidationError("a COCO labels file has lists 'images', 'annotations' and "
                              "'categories'")
    names = {_int(c, "id", "a category"): str(c.get("name", "")) for c in cats}
    colours = {cid: i for i, cid in enumerate(names)}
    by_id: dict[int, Mapping[str, Any]] = {}
    for im in images:
        image_id = _int(im, "id", "an image")
        if image_id in by_id:
            raise ValidationError(f"image id {image_id} is listed twice in the labels file")
        _int(im, "height", f"image {image_id}")
        _int(im, "width", f"image {image_id}")
        by_id[image_id] = im
    masks: dict[int, list[Any]] = {}
    seen: set[int] = set()
    for ann in anns:
        ann_id = _int(ann, "id", "an annotation")
        if ann_id in seen:
            raise ValidationError(f"annotation id {ann_id} is used twice in the labels file; "
                                  "decisions are kept by annotation id, so ids must be unique")
        seen.add(ann_id)
        image_id = _int(ann, "image_id", f"annotation {ann_id}")
        if image_id not in by_id:
            raise ValidationError(f"annotation {ann_id} is on image {image_id}, which the "
                                  "labels file does not list")
        cat = _int(ann, "category_id", f"annotation {ann_id}")
        names.setdefault(cat, f"category {cat}")
        colours.setdefault(cat, len(colours))
        masks.setdefault(image_id, []).append(ann)

    def low(a: Mapping[str, Any]) -> tuple[float, int]:
        s = _score(a)
        return (-1.0 if s is None else s, int(a["id"]))

    order = []
    for image_id, group in masks.items():
        group.sort(key=low)
        order.append((by_id[image_id], group))
    order.sort(key=lambda g: (low(g[1][0]), int(g[0]["id"])))
    return order, names, colours


def _pixels(record: Mapping[str, Any], images: ImageSource | None) -> tuple[Any, str | None]:
    """The image's ``(H, W, 3)`` pixels, or ``None`` and why."""
    if images is None:
        return None, "no image source was given"
    got = images(record)
    if isinstance(got, str):
        return None, got
    try:
        px = decode_array(got)
    except CogsegError as exc:
        return None, f"not decodable ({exc})"
    h, w = int(record["height"]), int(record["width"])
    if px.shape[:2] != (h, w):
        return None, (f"its pixels are {px.shape[0]}x{px.shape[1]}, the labels say {h}x{w}")
    return px, None


def _asset(name: str) -> str:
    return (resources.files("cogseg_ml.review") / "assets" / name).read_text("utf-8")


def _fmt_score(s: float | None) -> str:
    return "–" if s is None else f"{s:.3f}"


def _options(label: str, counts: dict[str, tuple[str, int]], total: int) -> str:
    opts = [f'<option value="">all {html.escape(label)} ({total})</option>']
    opts += [f'<option value="{html.escape(v)}">{html.escape(name)} ({n})</option>'
             for v, (name, n) in counts.items()]
    return "".join(opts)


def _card(ann: Mapping[str, Any], thumb: str, size: tuple[int, int], image_name: str,
          cat_name: str) -> str:
    ann_id = int(ann["id"])
    source = ann.get("source")
    prov = provenance_of(source)
    src = PROVENANCE_LABELS[prov] + (f" ({source})" if isinstance(source, str) and source
                                     and prov == "local" else "")
    area = ann.get("area")
    area_text = f"{int(area):,} px" if isinstance(area, (int, float)) else "–"
    e = html.escape
    return (
        f'<figure class="card" id="ann-{ann_id}" tabindex="-1" data-ann-id="{ann_id}" '
        f'data-category-id="{int(ann["category_id"])}" data-provenance="{prov}" '
        f'data-decision="undecided">'
        f'<img src="{e(thumb)}" width="{size[0]}" height="{size[1]}" loading="lazy" '
        f'alt="{e(f"mask {ann_id}: {cat_name} on {image_name}")}">'
        f'<figcaption><span class="cat">{e(cat_name)}</span> '
        f'<span class="dim">#{ann_id}</span>'
        f'<div class="facts">score <span class="score">{_fmt_score(_score(ann))}</span> · '
        f'area <span class="area">{area_text}</span></div>'
        f'<div class="facts source">{e(src)}</div>'
        f'<div class="actions"><button type="button" data-decide="accept" aria-pressed="false">'
        f'Accept</button><button type="button" data-decide="reject" aria-pressed="false">'
        f'Reject</button></div></figcaption></figure>')


def _write_thumbs(plan: list[tuple[Mapping[str, Any], list[Any]]], colours: dict[int, int],
                  folder: Path, images: ImageSource | None, max_side: int, progress: bool
                  ) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    """Every mask's thumbnail into ``folder``; their sizes and the images without pictures."""
    sizes: dict[int, tuple[int, int]] = {}
    missing: dict[int, str] = {}
    total = sum(len(g) for _, g in plan)
    with progress_bar(total, "thumbnails", progress=progress, unit="masks") as bar:
        for record, group in plan:
            h, w = int(record["height"]), int(record["width"])
            px, why = _pixels(record, images)
            if why is not None:
                missing[int(record["id"])] = why
            for ann in group:
                img = thumbnail(px, annotation_mask(ann, h, w), max_side=max_side,
                                colour=colours[int(ann["category_id"])])
                img.save(folder / f"{int(ann['id'])}.png", optimize=False)
                sizes[int(ann["id"])] = (img.width, img.height)
                bar.update(1)
    return sizes, missing


def _html(coco: Mapping[str, Any], labels_name: str, digest: str, thumbs: str,
          plan: list[tuple[Mapping[str, Any], list[Any]]], names: dict[int, str],
          sizes: dict[int, tuple[int, int]], missing: dict[int, str]) -> str:
    e = html.escape
    n_masks = sum(len(g) for _, g in plan)
    cat_counts: dict[str, tuple[str, int]] = {}
    prov_counts: dict[str, tuple[str, int]] = {}
    for _, group in plan:
        for ann in group:
            cid = str(int(ann["category_id"]))
            cat_counts[cid] = (names[int(cid)], cat_counts.get(cid, ("", 0))[1] + 1)
            prov = provenance_of(ann.get("source"))
            prov_counts[prov] = (PROVENANCE_LABELS[prov], prov_counts.get(prov, ("", 0))[1] + 1)
    cat_counts = dict(sorted(cat_counts.items(), key=lambda kv: kv[1][0]))
    prov_counts = {k: prov_counts[k] for k in PROVENANCE_LABELS if k in prov_counts}
    sections = []
    for record, group in plan:
        name = str(record.get("file_name", record["id"]))
        image_id = int(record["id"])
        cards = "".join(_card(a, f"{thumbs}/{int(a['id'])}.png", sizes[int(a["id"])], name,
                              names[int(a["category_id"])]) for a in group)
        note = (f'<p class="note">drawn without the picture: {e(missing[image_id])}</p>'
                if image_id in missing else "")
        sections.append(
            f'<section class="group" data-image-id="{image_id}"><h2>{e(name)} '
            f'<span class="dim">{int(record["width"])}×{int(record["height"])} · '
            f'{len(group)} mask{"s" if len(group) != 1 else ""} · lowest score '
            f'{_fmt_score(_score(group[0]))}</span></h2>{note}<div class="grid">{cards}</div>'
            f'</section>')
    stem = Path(labels_name).stem or "labels"
    meta = {"labels_file": labels_name, "labels_digest": digest,
            "download_name": f"{stem}.decisions.json"}
    meta_json = strict_json.dumps(meta).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="cogseg-labels-file" content="{e(labels_name)}">
<meta name="cogseg-labels-digest" content="{digest}">
<title>Review {e(labels_name)}</title>
<style>
{_asset("review.css")}</style>
</head>
<body>
<header>
<h1>Review <span id="labels-file">{e(labels_name)}</span></h1>
<p class="sub">{n_masks} masks on {len(plan)} images, lowest score first · labels digest
<code title="{digest}">{digest[:12]}</code></p>
<div class="toolbar">
<label>Category <select id="filter-category">{_options("categories", cat_counts, n_masks)}
</select></label>
<label>Source <select id="filter-provenance">{_options("sources", prov_counts, n_masks)}
</select></label>
<label>Show <select id="filter-status"><option value="">all decisions</option>
<option value="undecided">undecided</option><option value="accept">accepted</option>
<option value="reject">rejected</option></select></label>
<button type="button" id="accept-rest">Accept the undecided shown</button>
<button type="button" id="save" class="primary">Save decisions</button>
</div>
<p class="counts"><span class="accepted">accepted <b id="count-accepted">0</b></span>
<span class="rejected">rejected <b id="count-rejected">0</b></span>
<span>undecided <b id="count-undecided">{n_masks}</b></span>
<span>shown <b id="count-shown">{n_masks}</b> of <b id="count-total">{n_masks}</b></span>
<span id="status" role="status"></span></p>
<p class="keys">Keys: <kbd>j</kbd> or <kbd>→</kbd> next, <kbd>k</kbd> or <kbd>←</kbd> previous,
<kbd>a</kbd> accept, <kbd>r</kbd> reject, <kbd>u</kbd> undecided. Save the decisions, then
<code>cogseg export {e(labels_name)} --to coco --decisions {e(meta["download_name"])} --out
DIR</code> writes the accepted masks only.</p>
</header>
<main id="groups">
{"".join(sections)}
</main>
<script type="application/json" id="review-meta">{meta_json}</script>
<script>
{_asset("review.js")}</script>
</body>
</html>
"""


def write_review_page(coco: Mapping[str, Any], out: str | Path, *, labels_name: str,
                      images: ImageSource | None = None, max_side: int = 256,
                      progress: bool = False) -> ReviewPage:
    """Write the review page of a COCO labels file to the folder ``out``.

    Args:
        coco: the labels file's content (RLE or polygon segmentations).
        out: the folder to write (see :mod:`cogseg_ml.exports.folder_writer`): missing, empty, or an
            earlier review page's unchanged output, which is replaced whole; ``index.html``
            and a ``thumbs-*`` folder (a new name each time) go in it.
        labels_name: the labels file's name, shown on the page and saved with its decisions.
        images: where image bytes come from (see :mod:`cogseg_ml.review.images`); an image
            whose bytes cannot be had gets its masks drawn on grey, and is reported.
        max_side: a thumbnail's larger side in pixels.
        progress: show a progress bar while the thumbnails are drawn.

    Raises:
        ValidationError: the labels are not a consistent COCO file, or ``out`` cannot be used
            (a file, a folder holding anything the review did not write, a failed write);
            ``out`` is then left as it was.
    """
    plan, names, colours = _plan(coco)
    digest = labels_digest(coco)
    thumbs = f"thumbs-{secrets.token_hex(4)}"
    with output_folder(out, "review") as folder:
        (folder / thumbs).mkdir()
        sizes, missing = _write_thumbs(plan, colours, folder / thumbs, images, max_side,
                                       progress)
        page = _html(coco, labels_name, digest, thumbs, plan, names, sizes, missing)
        (folder / "index.html").write_text(page, encoding="utf-8")
    by_id = {int(r["id"]): str(r.get("file_name", r["id"])) for r, _ in plan}
    return ReviewPage(Path(out) / "index.html", sum(len(g) for _, g in plan), len(plan),
                      {by_id[i]: why for i, why in missing.items()})
