"""RFC 7807 problem details: the one error shape of the API.

Every error leaves as ``application/problem+json`` with ``type``, ``title``, ``status``, ``detail``,
``code`` (a stable slug a client can branch on: ``payload-too-large``, ``quota-exceeded``, ...) and, for
input errors, ``errors: [{field, problem}]`` where ``field`` is a dotted path into the request
(``refine.lr``, ``evaluate.attacks.0.eps``, ``file``, ``limit``). Details are written for clients: an
exception's own text (SQL, hosts, paths) goes to the log, never into a response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.errors import CoreInputError
from service.storage import StorageError

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("api.problems")


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class FieldProblem(dict[str, str]):
    """``{"field": ..., "problem": ...}``; a dict so it serialises as-is."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field=field, problem=problem)


class ProblemError(Exception):
    """Raise anywhere below a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: Sequence[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or _title(status).lower().replace(" ", "-")
        self.title = title or _title(status)
        self.errors = list(errors) if errors else None
        self.headers = headers
        self.extra = extra or {}


def not_found(what: str, ident: str) -> ProblemError:
    return ProblemError(404, f"{what} {ident!r} not found", slug="not-found")


def field_error(status: int, field: str, problem: str, *, slug: str = "invalid-request") -> ProblemError:
    return ProblemError(status, f"{field}: {problem}", slug=slug, errors=[FieldProblem(field, problem)])


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: Sequence[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    code = slug or _title(status).lower().replace(" ", "-")
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title or _title(status),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors:
        body["errors"] = list(errors)
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


# Where FastAPI reports an error; the client knows its fields by name, not by location.
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


def dotted_field(loc: Sequence[str | int]) -> str:
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    # pydantic adds the validator kind for tagged/union members (e.g. 'function-after[...]'); drop it.
    parts = [p for p in parts if not (isinstance(p, str) and "[" in p)]
    return ".".join(str(p) for p in parts) or (str(loc[0]) if loc else "body")


def _validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for err in exc.errors():
        loc = err.get("loc") or ()
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "json_invalid":
            msg = f"body is not valid JSON: {err.get('ctx', {}).get('error', msg)}"
            loc = ("body",)  # FastAPI puts the character offset here; it is not a field
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        out.append(FieldProblem(dotted_field(loc), msg))
    return out


async def _on_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _on_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    detail = "; ".join(f"{e['field']}: {e['problem']}" for e in errors[:5]) or "invalid request"
    return problem_response(422, detail, slug="validation-error", title="Invalid request", errors=errors)


# Probed one by one: FastAPI nests included routers, so a route's methods are not listed anywhere flat.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's own 405 names only the first route whose
    path matched: ``Allow: POST`` for ``/v1/jobs``, which serves GET too."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


# FastAPI answers a JSON body that json.loads rejects with something other than a JSONDecodeError with a
# bare 400; invalid JSON is a 422 naming `body` (``_validation_errors``), and so are these.
_UNPARSABLE_BODY = {UnicodeDecodeError: "not UTF-8 text", RecursionError: "nested too deeply"}


def _unparsable_body(exc: StarletteHTTPException) -> JSONResponse | None:
    reason = next((r for t, r in _UNPARSABLE_BODY.items() if isinstance(exc.__cause__, t)), None)
    if exc.status_code != 400 or reason is None:
        return None
    problem = f"body is not valid JSON: {reason}"
    return problem_response(
        422,
        f"body: {problem}",
        slug="validation-error",
        title="Invalid request",
        errors=[FieldProblem("body", problem)],
    )


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    unparsable = _unparsable_body(exc)
    if unparsable is not None:
        return unparsable
    detail = exc.detail if isinstance(exc.detail, str) else _title(exc.status_code)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(exc.status_code, detail, headers=headers or None)


async def _on_core_input(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CoreInputError)
    return problem_response(
        422, str(exc), slug="validation-error", errors=[FieldProblem(exc.field, exc.problem)]
    )


# A store that failed (S3 unreachable, a full disk) may be back soon; the log has what failed.
STORAGE_RETRY_AFTER_S = 5


async def _on_storage(request: Request, exc: Exception) -> JSONResponse:
    log.error("storage failed on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        503,
        "the file store is unavailable; try again",
        slug="storage-unavailable",
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal error; the request was logged", slug="internal-error")


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(CoreInputError, _on_core_input)
    app.add_exception_handler(StorageError, _on_storage)
    app.add_exception_handler(Exception, _on_unexpected)
