"""Public value types: file references and segmentation prompts.

Coordinates are normalized to ``[0, 1]``, origin at the image's top-left corner, ``x`` to the
right and ``y`` down (CDF's convention for vision prompts and vertices; the segment pages show it
only by example, the sister Vision schemas state it). A pixel coordinate ``px`` in an image of
``width`` pixels maps to ``px / width``: ``px`` is continuous, ``0`` is the left edge of the first
pixel and ``width`` the right edge of the last, so the centre of pixel column ``i`` is
``(i + 0.5) / width``.

Every type validates on creation and raises :class:`~cogseg_ml.errors.PromptValidationError`
naming the bad field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cogseg_ml.errors import PromptValidationError, ValidationError

__all__ = ["Box", "FileRef", "InstanceId", "Point", "Prompt"]


def _check_unit(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PromptValidationError(f"{name} must be a number in [0, 1], got {value!r}")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise PromptValidationError(f"{name} must be a finite number in [0, 1], got {v}")
    if not 0.0 <= v <= 1.0:
        raise PromptValidationError(
            f"{name}={v} is outside [0, 1]: coordinates are normalized by the image size "
            "(use from_pixels(...) to convert pixel coordinates)"
        )
    return v


def _check_size(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise PromptValidationError(f"image {name} must be a positive integer, got {v!r}")


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
        if isinstance(value, bool):
            raise ValidationError(f"cannot read a file reference from {value!r}")
        if isinstance(value, int):
            return cls(id=value)
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
        if isinstance(self.label, bool) or self.label not in (0, 1):
            raise PromptValidationError(
                f"Point.label must be 1 (foreground) or 0 (background), got {self.label!r}"
            )

    @classmethod
    def from_pixels(cls, px: float, py: float, width: int, height: int, label: int = 1) -> Point:
        """Build from continuous pixel coordinates in an image of ``width`` x ``height``."""
        _check_size(width, height)
        return cls(x=float(px) / width, y=float(py) / height, label=label)


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
        _check_size(width, height)
        return cls(x0 / width, y0 / height, x1 / width, y1 / height)

    @classmethod
    def from_xywh_pixels(
        cls, x: float, y: float, w: float, h: float, width: int, height: int
    ) -> Box:
        """Build from a COCO-style ``[x, y, w, h]`` pixel box."""
        return cls.from_pixels(x, y, x + w, y + h, width, height)

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
    def of(
        cls,
        points: Iterable[Point | Sequence[float]] | None = None,
        box: Box | Sequence[float] | None = None,
    ) -> Prompt:
        """Build from Points/Box or plain ``(x, y[, label])`` tuples and ``(x0, y0, x1, y1)``."""
        pts: list[Point] = []
        for i, p in enumerate(points or ()):
            if isinstance(p, Point):
                pts.append(p)
            elif isinstance(p, Sequence) and len(p) in (2, 3):
                pts.append(Point(p[0], p[1], int(p[2]) if len(p) == 3 else 1))
            else:
                raise PromptValidationError(f"points[{i}] must be a Point or (x, y[, label])")
        if box is not None and not isinstance(box, Box):
            if not isinstance(box, Sequence) or len(box) != 4:
                raise PromptValidationError("box must be a Box or (x_min, y_min, x_max, y_max)")
            box = Box(*box)
        return cls(points=tuple(pts), box=box)
