"""The review page read back with the standard library's HTML parser (no browser)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any


@dataclass
class Card:
    ann_id: int
    category_id: int
    provenance: str
    image_id: int
    img: dict[str, str] = field(default_factory=dict)
    text: str = ""


@dataclass
class Page:
    cards: list[Card] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    metas: dict[str, str] = field(default_factory=dict)
    options: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    pictures: list[str] = field(default_factory=list)  # every img src, in order
    links: list[str] = field(default_factory=list)  # every src and href
    scripts: list[dict[str, str]] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)  # image id: its note
    groups: list[int] = field(default_factory=list)  # image ids in page order


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._card: Card | None = None
        self._card_depth = 0
        self._image_id = -1
        self._select: str | None = None
        self._option: str | None = None
        self._in: str | None = None  # "script" / "option" / "note"
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if key in a:
                self.page.links.append(a[key])
        if tag == "section" and "group" in a.get("class", "").split():
            self._image_id = int(a["data-image-id"])
            self.page.groups.append(self._image_id)
        elif tag == "figure" and "card" in a.get("class", "").split():
            self._card = Card(int(a["data-ann-id"]), int(a["data-category-id"]),
                              a["data-provenance"], self._image_id)
            self._card_depth = 0
            self.page.cards.append(self._card)
        if self._card is not None:
            self._card_depth += 1
        if tag == "img":
            self.page.pictures.append(a.get("src", ""))
            if self._card is not None:
                self._card.img = a
        elif tag == "meta" and "name" in a:
            self.page.metas[a["name"]] = a.get("content", "")
        elif tag == "select":
            self._select = a.get("id", "")
            self.page.options[self._select] = []
        elif tag == "option" and self._select is not None:
            self._option, self._in, self._buf = a.get("value", ""), "option", []
        elif tag == "script":
            self.page.scripts.append(a)
            self._in, self._buf = "script", []
        elif tag == "p" and a.get("class") == "note":
            self._in, self._buf = "note", []

    def handle_endtag(self, tag: str) -> None:
        if self._card is not None:
            self._card_depth -= 1
            if tag == "figure" and self._card_depth <= 0:
                self._card = None
        if tag == "option" and self._in == "option":
            assert self._select is not None and self._option is not None
            self.page.options[self._select].append((self._option, "".join(self._buf).strip()))
            self._in = None
        elif tag == "select":
            self._select = None
        elif tag == "script" and self._in == "script":
            attrs = self.page.scripts[-1]
            if attrs.get("id") == "review-meta":
                self.page.meta = json.loads("".join(self._buf))
            self._in = None
        elif tag == "p" and self._in == "note":
            self.page.notes[self._image_id] = "".join(self._buf)
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self._buf.append(data)
        if self._card is not None:
            self._card.text += data


def read_page(index: Path) -> Page:
    reader = _Reader()
    reader.feed(index.read_text(encoding="utf-8"))
    reader.close()
    return reader.page
