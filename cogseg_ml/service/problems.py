"""CDF's error answers, shared by the emulator and the segment service.

Handlers raise :class:`ApiProblem`; one registered handler renders it as CDF's error body
``{"error": {"code", "message", "missing"?, "duplicated"?}}`` (reference section 4).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["ApiProblem", "error_response", "parse_body"]

ModelT = TypeVar("ModelT", bound=BaseModel)


class ApiProblem(Exception):
    """Raised by handlers; rendered as CDF's error body by one handler.

    Args:
        status: the HTTP status (>= 400).
        message: the ``error.message`` text.
        missing: ``error.missing`` (identifiers that do not exist), when relevant.
        duplicated: ``error.duplicated``, when relevant.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    def __init__(self, status: int, message: str, *, missing: list[dict[str, Any]] | None = None,
                 duplicated: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.missing = missing
        self.duplicated = duplicated
        self.headers = headers or {}


def error_response(problem: ApiProblem) -> JSONResponse:
    """CDF's error body: ``{"error": {"code", "message", "missing"?, "duplicated"?}}``."""
    err: dict[str, Any] = {"code": problem.status, "message": problem.message}
    if problem.missing:
        err["missing"] = problem.missing
    if problem.duplicated:
        err["duplicated"] = problem.duplicated
    return JSONResponse({"error": err}, status_code=problem.status, headers=problem.headers)


async def parse_body(request: Request, model: type[ModelT]) -> ModelT:
    """Validate a JSON body against a wire model; 400 naming the bad fields otherwise."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except PydanticValidationError as exc:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(p) for p in e["loc"]) or "body"
            parts.append(f"{loc}: {e['msg']}")
        raise ApiProblem(400, "Invalid request body: " + "; ".join(parts)) from None
