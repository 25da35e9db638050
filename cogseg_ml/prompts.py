"""Public value types: file references and segmentation prompts.

Coordinates are normalized to ``[0, 1]``, origin at the image's top-left corner, ``x`` to the
right and ``y`` down (CDF's convention for vision prompts and vertices; the segment pages show it
only by example, the sister Vision schemas state it). A pixel coordinate ``px`` in an image of
``width`` pixels maps to ``px / width``: ``px`` is continuous, ``0`` is the left edge of the first
pixel and ``width`` the right edge of the last, so the centre of pixel column ``i`` is
``(i + 0.5) / width``.

Every type validates on creation and raises :class:`~cogseg_ml.errors.PromptValidationError`
naming the bad field.

Accepted values (converted to plain Python ``float``/``int`` on creation, so a prompt built from
numpy or torch values equals, hashes and caches like one built from Python numbers):

- coordinates: ``int``, ``float``, numpy scalars (``np.float32``, ``np.int64``, ...), 0-d numpy
  arrays or torch tensors; never ``bool`` or strings;
- labels: ``1`` (foreground) or ``0`` (background) as an int (numpy ints too) or a float that is
  exactly ``1.0``/``0.0`` (what an ``(N, 3)`` float array holds); ``0.5``, ``1.9``, ``True``,
  ``"1"`` are refused, never truncated;
- image sizes: positive integers (numpy ints too);
- points (:meth:`Prompt.of`): a list of :class:`Point`, ``(x, y[, label])`` sequences or CDF's wire
  objects ``{"x", "y"[, "label"]}``, or an ``(N, 2)``/``(N, 3)`` numpy array or torch tensor;
- a box (:meth:`Box.parse`): a :class:`Box`, ``(x_min, y_min, x_max, y_max)``, a ``(4,)`` array or
  tensor, CDF's wire object ``{"xMin", "yMin", "xMax", "yMax"}`` or the snake_case keys.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cogseg_ml.errors import PromptValidationError, ValidationError

__all__ = ["Box", "FileRef", "InstanceId", "Point", "Prompt", "box_corners"]

_BOX_KEYS = (("xMin", "yMin", "xMax", "yMax"), ("x_min", "y_min", "x_max", "y_max"))
_POINT_KEYS = frozenset({"x", "y", "label"})


def _scalar(value: object) -> object:
    """A 0-d numpy array or torch tensor as its Python value; anything else unchanged."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()  # type: ignore[attr-defined]
    return value


def _number(name: str, value: object, what: str = "number") -> float:
    """A finite real number as a plain float (numpy and 0-d tensors too; never bool or str)."""
    v = _scalar(value)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise PromptValidationError(f"{name} must be a {what}, got {value!r}")
    out = float(v)
    if math.isnan(out) or math.isinf(out):
        raise PromptValidationError(f"{name} must be a finite {what}, got {out}")
    return out


def _check_unit(name: str, value: object) -> float:
    out = _number(name, value, "number in [0, 1]")
    if not 0.0 <= out <= 1.0:
        raise PromptValidationError(
            f"{name}={out} is outside [0, 1]: coordinates are normalized by the image size "
            "(use from_pixels(...) to convert pixel coordinates)"
        )
    return out


def _check_label(name: str, value: object) -> int:
    """1 or 0 as a plain int: ints (numpy too) or floats exactly 1.0/0.0; nothing else."""
    v = _scalar(value)
    if not isinstance(v, bool) and isinstance(v, numbers.Real) and float(v) in (0.0, 1.0):
        return 1 if float(v) == 1.0 else 0
    raise PromptValidationError(
        f"{name} must be 1 (foreground) or 0 (background), got {value!r}"
    )


def _positive_int(name: str, value: object) -> int:
    v = _scalar(value)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) <= 0:
        raise PromptValidationError(f"image {name} must be a positive integer, got {value!r}")
    return int(v)


def _check_size(width: object, height: object) -> tuple[int, int]:
    return _positive_int("width", width), _positive_int("height", height)


def _array_rows(value: object) -> tuple[tuple[int, ...], Any] | None:
    """``(shape, nested lists)`` of a numpy array or torch tensor; ``None`` for anything else."""
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "tolist") or isinstance(value, (str, bytes)):
        return None
    return tuple(int(n) for n in shape), value.tolist()  # type: ignore[attr-defined]


def box_corners(value: object, name: str = "box") -> tuple[float, float, float, float]:
    """The four numbers ``(x_min, y_min, x_max, y_max)`` of any accepted box shape.

    Takes a :class:`Box`, a sequence of 4 numbers, a ``(4,)`` numpy array or torch tensor, or a
    mapping with CDF's keys ``xMin, yMin, xMax, yMax`` (or ``x_min, ...``). The numbers are
    checked to be finite, not to lie in ``[0, 1]`` (:class:`Box` does that), so callers can clip.

    Raises:
        PromptValidationError: naming ``name`` and what is wrong with the shape or a number.
    """
    if isinstance(value, Box):
        return (value.x_min, value.y_min, value.x_max, value.y_max)
    if isinstance(value, Mapping):
        for keys in _BOX_KEYS:
            if any(k in value for k in keys):
                missing = [k for k in keys if k not in value]
                extra = sorted(str(k) for k in value if k not in keys)
                if missing or extra:
                    raise PromptValidationError(
                        f"{name} takes the keys {', '.join(keys)}; "
                        + (f"missing {', '.join(missing)}" if missing else
                           f"unknown {', '.join(repr(k) for k in extra)}"))
                x0, y0, x1, y1 = (_number(f"{name}.{k}", value[k]) for k in keys)
                return (x0, y0, x1, y1)
        raise PromptValidationError(
            f"{name} as a mapping takes xMin, yMin, xMax, yMax, got keys {sorted(map(str, value))}")
    arr = _array_rows(value)
    if arr is not None:
        shape, rows = arr
        if shape != (4,):
            raise PromptValidationError(
                f"{name} must be 4 numbers (x_min, y_min, x_max, y_max), got an array of shape "
                f"{shape}")
        value = rows
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 4:
        raise PromptValidationError(
            f"{name} must be a Box, 4 numbers (x_min, y_min, x_max, y_max) or "
            f"{{xMin, yMin, xMax, yMax}}, got {value!r}")
    labels = ("x_min", "y_min", "x_max", "y_max")
    x0, y0, x1, y1 = (_number(f"{name}.{k}", v) for k, v in zip(labels, value, strict=True))
    return (x0, y0, x1, y1)


def _text(value: str, name: str) -> None:
    """Refuse a string that is not text: one holding a lone UTF-16 surrogate (``"\\ud800"``,
    e.g. from a JSON escape) cannot be sent to CDF or stored."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"{name} {value!r} holds a lone UTF-16 surrogate at position "
                              f"{exc.start}, which is not text; fix the name") from None


@dataclass(frozen=True, slots=True)
class InstanceId:
    """A data-modeling instance id (``space`` + ``external_id``)."""

    space: str
    external_id: str

    def __post_init__(self) -> None:
        for name in ("space", "external_id"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ValidationError(f"InstanceId.{name} must be a non-empty string, got {v!r}")
            _text(v, f"InstanceId.{name}")


@dataclass(frozen=True, slots=True)
class FileRef:
    """A reference to one CDF file: exactly one of ``id``, ``external_id`` or ``instance_id``.

    Examples:
        ``FileRef(id=123)``, ``FileRef(external_id="pump-7.jpg")``,
        ``FileRef(instance_id=InstanceId("space", "xid"))``.
    """

    id: int | None = None
    external_id: str | None = None
    instance_id: InstanceId | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("id", "external_id", "instance_id") if getattr(self, n) is not None]
        fid = _scalar(self.id)
        if isinstance(fid, numbers.Integral) and not isinstance(fid, bool):
            object.__setattr__(self, "id", int(fid))  # numpy ints become plain ints
        if len(given) != 1:
            raise ValidationError(
                "FileRef takes exactly one of id, external_id or instance_id; "
                f"got {', '.join(given) or 'none'}"
            )
        if self.id is not None and (
            isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 1
        ):
            raise ValidationError(f"FileRef.id must be a positive integer, got {self.id!r}")
        if self.external_id is not None and (
            not isinstance(self.external_id, str) or not self.external_id
        ):
            raise ValidationError(
                f"FileRef.external_id must be a non-empty string, got {self.external_id!r}"
            )
        if self.external_id is not None:
            _text(self.external_id, "FileRef.external_id")
        if self.instance_id is not None and not isinstance(self.instance_id, InstanceId):
            raise ValidationError("FileRef.instance_id must be an InstanceId")

    @classmethod
    def parse(cls, value: FileRef | int | str | Mapping[str, Any]) -> FileRef:
        """Build a reference from an int (id), a str (external id) or a mapping.

        Mappings may use the Files API keys (``id``, ``externalId``, ``instanceId``), the
        segment keys (``fileId``, ``fileExternalId``, ``fileInstanceId``) or snake_case.
        """
        if isinstance(value, FileRef):
            return value
        value = _scalar(value)  # type: ignore[assignment]
        if isinstance(value, bool):
            raise ValidationError(f"cannot read a file reference from {value!r}")
        if isinstance(value, numbers.Integral):
            return cls(id=int(value))
        if isinstance(value, str):
            return cls(external_id=value)
        if isinstance(value, Mapping):
            keys = {
                "id": "id", "fileId": "id", "file_id": "id",
                "externalId": "external_id", "fileExternalId": "external_id",
                "external_id": "external_id",
                "instanceId": "instance_id", "fileInstanceId": "instance_id",
                "instance_id": "instance_id",
            }  # fmt: skip
            kwargs: dict[str, Any] = {}
            for k, v in value.items():
                if k in keys and v is not None:
                    kwargs[keys[k]] = v
            inst = kwargs.get("instance_id")
            if isinstance(inst, Mapping):
                kwargs["instance_id"] = InstanceId(
                    space=inst.get("space", ""),
                    external_id=inst.get("externalId", inst.get("external_id", "")),
                )
            return cls(**kwargs)
        raise ValidationError(f"cannot read a file reference from {type(value).__name__}")

    def describe(self) -> str:
        """A short human label, e.g. ``id=123`` or ``externalId='a.jpg'``."""
        if self.id is not None:
            return f"id={self.id}"
        if self.external_id is not None:
            return f"externalId={self.external_id!r}"
        assert self.instance_id is not None
        return f"instanceId={self.instance_id.space}/{self.instance_id.external_id}"


@dataclass(frozen=True, slots=True)
class Point:
    """A point prompt: normalized ``x``, ``y`` and ``label`` (1 foreground, 0 background)."""

    x: float
    y: float
    label: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", _check_unit("Point.x", self.x))
        object.__setattr__(self, "y", _check_unit("Point.y", self.y))
        object.__setattr__(self, "label", _check_label("Point.label", self.label))

    @classmethod
    def from_pixels(cls, px: float, py: float, width: int, height: int, label: int = 1) -> Point:
        """Build from continuous pixel coordinates in an image of ``width`` x ``height``."""
        w, h = _check_size(width, height)
        return cls(x=_number("px", px) / w, y=_number("py", py) / h, label=label)

    @classmethod
    def parse(cls, value: Point | Sequence[float] | Mapping[str, Any], name: str = "point"
              ) -> Point:
        """A point from a :class:`Point`, ``(x, y[, label])`` or ``{"x", "y"[, "label"]}``.

        Raises:
            PromptValidationError: prefixed with ``name``.
        """
        if isinstance(value, Point):
            return value
        try:
            if isinstance(value, Mapping):
                extra = sorted(str(k) for k in value if k not in _POINT_KEYS)
                if extra or "x" not in value or "y" not in value:
                    what = (f"unknown {', '.join(repr(k) for k in extra)}" if extra else
                            f"missing {'x' if 'x' not in value else repr('y')}")
                    raise PromptValidationError(f"a point takes the keys x, y[, label]; {what}")
                return cls(value["x"], value["y"], value.get("label", 1))
            arr = _array_rows(value)
            row: object = arr[1] if arr is not None else value
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or \
                    len(row) not in (2, 3):
                raise PromptValidationError(
                    f"must be a Point, (x, y[, label]) or {{x, y[, label]}}, got {value!r}")
            return cls(row[0], row[1], row[2] if len(row) == 3 else 1)
        except PromptValidationError as exc:
            raise PromptValidationError(f"{name}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Box:
    """A box prompt, normalized, with ``x_min < x_max`` and ``y_min < y_max`` (strictly)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def __post_init__(self) -> None:
        for name in ("x_min", "y_min", "x_max", "y_max"):
            object.__setattr__(self, name, _check_unit(f"Box.{name}", getattr(self, name)))
        if not self.x_min < self.x_max:
            raise PromptValidationError(
                f"Box.x_min ({self.x_min}) must be smaller than Box.x_max ({self.x_max})"
            )
        if not self.y_min < self.y_max:
            raise PromptValidationError(
                f"Box.y_min ({self.y_min}) must be smaller than Box.y_max ({self.y_max})"
            )

    @classmethod
    def from_pixels(
        cls, x0: float, y0: float, x1: float, y1: float, width: int, height: int
    ) -> Box:
        """Build from continuous pixel corners (XYXY) in an image of ``width`` x ``height``."""
        w, h = _check_size(width, height)
        return cls(_number("x0", x0) / w, _number("y0", y0) / h, _number("x1", x1) / w,
                   _number("y1", y1) / h)

    @classmethod
    def from_xywh_pixels(
        cls, x: float, y: float, w: float, h: float, width: int, height: int
    ) -> Box:
        """Build from a COCO-style ``[x, y, w, h]`` pixel box."""
        x0, y0 = _number("x", x), _number("y", y)
        return cls.from_pixels(x0, y0, x0 + _number("w", w), y0 + _number("h", h), width, height)

    @classmethod
    def parse(cls, value: object, name: str = "box") -> Box:
        """A box from any shape :func:`box_corners` takes."""
        if isinstance(value, Box):
            return value
        x0, y0, x1, y1 = box_corners(value, name)
        try:
            return cls(x0, y0, x1, y1)
        except PromptValidationError as exc:
            raise PromptValidationError(f"{name}: {exc}") from None

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Return ``(x0, y0, x1, y1)`` in continuous pixel coordinates."""
        return (self.x_min * width, self.y_min * height, self.x_max * width, self.y_max * height)


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt set for one job: points and/or a box; at least one of them.

    Points must be unique (the API's schema requires it); their order is kept as given.
    """

    points: tuple[Point, ...] = field(default_factory=tuple)
    box: Box | None = None

    def __post_init__(self) -> None:
        pts = tuple(self.points)
        for i, p in enumerate(pts):
            if not isinstance(p, Point):
                raise PromptValidationError(f"points[{i}] must be a Point, got {type(p).__name__}")
        if self.box is not None and not isinstance(self.box, Box):
            raise PromptValidationError(f"box must be a Box, got {type(self.box).__name__}")
        if len(set(pts)) != len(pts):
            seen: set[Point] = set()
            for i, p in enumerate(pts):
                if p in seen:
                    raise PromptValidationError(
                        f"points[{i}] repeats an earlier point ({p.x}, {p.y}, label {p.label}): "
                        "the API requires unique points"
                    )
                seen.add(p)
        if not pts and self.box is None:
            raise PromptValidationError(
                "a prompt needs at least one point or a box; both are missing"
            )
        object.__setattr__(self, "points", pts)

    @classmethod
    def of(cls, points: Iterable[Point | Sequence[float] | Mapping[str, Any]] | Any = None,
           box: Box | Sequence[float] | Mapping[str, Any] | Any = None) -> Prompt:
        """Build from points and/or a box in any accepted shape (see the module docstring).

        ``points``: Points, ``(x, y[, label])`` tuples, ``{"x", "y"[, "label"]}`` objects, or an
        ``(N, 2)``/``(N, 3)`` numpy array or torch tensor. ``box``: what :meth:`Box.parse`
        takes. Numbers become plain Python floats and ints.
        """
        return cls(points=tuple(_points(points)), box=None if box is None else Box.parse(box))


def _points(points: object) -> list[Point]:
    if points is None:
        return []
    arr = _array_rows(points)
    if arr is not None:
        shape, rows = arr
        if len(shape) == 1:
            raise PromptValidationError(
                f"points must be a list of points, got a flat array of shape {shape}: wrap a "
                "single point as [[x, y]] (or shape (1, 2))")
        if len(shape) != 2 or shape[1] not in (2, 3):
            raise PromptValidationError(
                f"points as an array must have shape (N, 2) or (N, 3), got {shape}")
        points = rows
    if isinstance(points, Mapping):
        raise PromptValidationError(
            f"points must be a list of points, got one mapping {dict(points)!r}: wrap a single "
            "point in a list")
    if isinstance(points, (str, bytes)) or not isinstance(points, Iterable):
        raise PromptValidationError(
            f"points must be a list of (x, y[, label]) or {{x, y, label}}, got {points!r}")
    items = list(points)
    if items and all(isinstance(_scalar(p), numbers.Real) for p in items):
        raise PromptValidationError(
            f"points must be a list of points, got the flat numbers {items!r}: wrap a single "
            "point as [[x, y]]")
    return [Point.parse(p, f"points[{i}]") for i, p in enumerate(items)]
