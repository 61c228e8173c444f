"""The request guard: framing checks, authentication and the body cap, on the ASGI stream, before any
route reads a byte.

FastAPI reads a JSON body before it solves dependencies, so a key checked in a dependency would be
checked only after the whole body sat in memory. This middleware therefore authenticates every
``/v1`` request from its headers alone (the owner id goes to ``request.state.owner_id``) and counts
the bytes of every other body as they arrive: the first chunk past ``Settings.max_body_bytes`` ends
the request with a 413, whether the client declared a Content-Length or sent it chunked. Uploads
stream to disk under their own limit (``api/uploads.py``) and are only authenticated here. Before
all that, a request whose line and headers exceed ``Settings.max_header_bytes`` is a 431 and one
that declares both Content-Length and Transfer-Encoding a 400.
"""

from __future__ import annotations

import logging
import re

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import authenticate
from api.problems import ProblemError, problem_response
from service.settings import Settings

log = logging.getLogger("api.guard")

API_PREFIX = "/v1"
# (method, path) of the streamed uploads; their bodies are bounded by RUC_MAX_UPLOAD_BYTES (prediction
# requests: RUC_PREDICT_MAX_UPLOAD_BYTES) instead.
UPLOAD_ROUTES = frozenset({("POST", "/v1/datasets"), ("POST", "/v1/checkpoints")})
_PREDICTION_UPLOAD = re.compile(r"/v1/jobs/[^/]+/predictions")


def is_upload(method: str | None, path: str) -> bool:
    return (method, path) in UPLOAD_ROUTES or (method == "POST" and bool(_PREDICTION_UPLOAD.fullmatch(path)))


OWNER_STATE_KEY = "owner_id"


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive``; FastAPI re-raises HTTPExceptions met while reading the body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, body_too_large_detail(limit))


def body_too_large_detail(limit: int) -> str:
    return f"request body over {limit} bytes (RUC_MAX_BODY_BYTES); a job spec is a few KB"


def _too_large_response(limit: int) -> ProblemError:
    # Connection: close, so uvicorn drops the connection instead of draining the rest of the body.
    return ProblemError(
        413, body_too_large_detail(limit), slug="payload-too-large", headers={"Connection": "close"}
    )


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == wanted:
            return value.decode("latin-1")
    return None


def _framing_problem(scope: Scope, max_header_bytes: int) -> ProblemError | None:
    """431 for a request line and headers over the cap (h11 enforces it only on a request that
    arrives in several reads); 400 for both Content-Length and Transfer-Encoding, a request two
    parsers may frame differently (smuggling). Both close the connection."""
    headers = scope.get("headers") or ()
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    size += sum(len(name) + len(value) + 4 for name, value in headers)
    close = {"Connection": "close"}
    if size > max_header_bytes:
        return ProblemError(
            431,
            f"request line and headers over {max_header_bytes} bytes (RUC_MAX_HEADER_BYTES)",
            slug="header-too-large",
            headers=close,
        )
    names = {name for name, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        problem = "send either Content-Length or Transfer-Encoding, not both"
        return ProblemError(400, problem, slug="bad-framing", headers=close)
    return None


async def _answer(exc: ProblemError, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(exc.status, exc.detail, slug=exc.slug, headers=exc.headers)
    await response(scope, receive, send)


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = _framing_problem(scope, self.settings.max_header_bytes)
        if refused is not None:
            await _answer(refused, scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            try:
                owner = await authenticate(
                    _header(scope, b"authorization"),
                    database_url=self.settings.database_url,
                    ttl=self.settings.api_key_cache_seconds,
                )
            except ProblemError as exc:
                await _answer(exc, scope, receive, send)
                return
            except Exception:  # the key store is down: say so without its error text
                log.exception("API key lookup failed on %s %s", scope.get("method"), path)
                await _answer(
                    ProblemError(503, "authentication is unavailable; retry later", slug="unavailable"),
                    scope,
                    receive,
                    send,
                )
                return
            scope.setdefault("state", {})[OWNER_STATE_KEY] = owner
        if is_upload(scope.get("method"), path):
            await self.app(scope, receive, send)
            return
        await self._capped(scope, receive, send)

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.settings.max_body_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _answer(_too_large_response(limit), scope, receive, send)
            return
        received = 0
        exceeded = False
        started = False

        async def capped_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's own answer to the aborted read; ours goes out below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except BodyTooLarge:
            if started:
                raise
        if exceeded and not started:
            await _answer(_too_large_response(limit), scope, receive, send)
