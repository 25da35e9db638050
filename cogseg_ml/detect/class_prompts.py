"""Class lists and the prompts built from them, in the form each detector expects.

* Grounding DINO (and MM-Grounding-DINO, LLMDet) reads one text: the class phrases, lower
  case, each followed by ``"."`` and separated by a space: ``"valve. pressure gauge.
  flange."``. It scores every *token* of that text against every box; this project maps the
  tokens back to the caller's whole phrase through the character spans of each phrase in the
  text (:func:`grounding_prompt`, :func:`token_spans`), so a detection is never named by a word
  piece (``"##ange"``) or by a merge of two phrases. ``"."`` and ``"?"`` split phrases for the
  model, so they cannot appear inside a class name.
* OWLv2 reads one short text per class (a query), here ``"a photo of a {class}"`` as in the
  published examples; it scores every box against every query directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cogseg_ml.errors import ValidationError

__all__ = ["GroundingPrompt", "check_classes", "grounding_prompt", "split_classes",
           "token_spans"]

#: Characters Grounding DINO treats as phrase delimiters (its special tokens).
DELIMITERS = (".", "?")


def split_classes(text: str, *, where: str = "--classes") -> tuple[str, ...]:
    """A comma-separated class list (``"valve, pressure gauge"``), checked (see
    :func:`check_classes`)."""
    if not isinstance(text, str):
        raise ValidationError(f"{where} takes class names separated by commas, got {text!r}")
    pieces = text.split(",")
    if not any(p.strip() for p in pieces):
        raise ValidationError(f"{where} is empty: give one or more class names separated by "
                              "commas, e.g. 'valve,pressure gauge'")
    return check_classes(pieces, where=where)


def check_classes(classes: Iterable[str], *, where: str = "classes") -> tuple[str, ...]:
    """The class phrases, stripped and with inner whitespace collapsed, in the given order.

    Raises:
        ValidationError: no classes, a blank or non-string one, one holding ``"."`` or ``"?"``
            (Grounding DINO's phrase delimiters), or the same name twice (compared without
            regard to case, as the detectors read them); the message names it.
    """
    if isinstance(classes, str):
        raise ValidationError(f"{where} takes a list of class names, got the string "
                              f"{classes!r}: pass [{classes!r}] or split it")
    out: list[str] = []
    seen: dict[str, str] = {}
    for k, raw in enumerate(classes):
        if not isinstance(raw, str):
            raise ValidationError(f"{where}[{k}] must be a string, got {raw!r}")
        name = " ".join(raw.split())
        if not name:
            raise ValidationError(f"{where}[{k}] is blank: every class needs a name (e.g. "
                                  "'valve, pressure gauge')")
        bad = [d for d in DELIMITERS if d in name]
        if bad:
            raise ValidationError(f"{where}[{k}] {name!r} holds {bad[0]!r}, which Grounding DINO "
                                  "reads as the end of a phrase: rename the class without it")
        key = name.casefold()
        if key in seen:
            also = "" if seen[key] == name else (f" (as {seen[key]!r} and {name!r}: detectors "
                                                 "read names without regard to case)")
            raise ValidationError(f"{where} names {name!r} twice{also}: list each class once")
        seen[key] = name
        out.append(name)
    if not out:
        raise ValidationError(f"{where} is empty: give one or more class names, e.g. "
                              "'valve, pressure gauge'")
    return tuple(out)


@dataclass(frozen=True)
class GroundingPrompt:
    """Grounding DINO's text for some classes and where each phrase lies in it.

    Attributes:
        text: e.g. ``"valve. pressure gauge. flange."``.
        spans: ``(start, end)`` character range of each class's phrase in ``text``.
    """

    text: str
    spans: tuple[tuple[int, int], ...]


def grounding_prompt(classes: Sequence[str]) -> GroundingPrompt:
    """The text Grounding DINO expects for ``classes``: lower case, ``". "``-separated, a
    final ``"."``; with each phrase's character span."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for name in classes:
        phrase = " ".join(name.split()).lower()
        spans.append((pos, pos + len(phrase)))
        parts.append(phrase + ".")
        pos += len(phrase) + 2  # the "." and the space after it
    return GroundingPrompt(" ".join(parts), tuple(spans))


def token_spans(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]],
                classes: Sequence[str]) -> list[list[int]]:
    """The token positions of each class phrase, from a tokenizer's offset mapping.

    A token belongs to a phrase when its characters lie inside the phrase's span; special
    tokens (offsets ``(0, 0)``) and the ``"."`` delimiters belong to none.

    Raises:
        ValidationError: a phrase got no token at all (naming the class).
    """
    out: list[list[int]] = []
    for name, (start, end) in zip(classes, spans, strict=True):
        toks = [i for i, (s, e) in enumerate(offsets) if e > s and s >= start and e <= end]
        if not toks:
            raise ValidationError(f"class {name!r} gives the detector's tokenizer no token: "
                                  "rename it with letters or digits")
        out.append(toks)
    return out
