"""Bearer-key authentication with a short in-process cache.

The poll path (``GET /v1/jobs/{id}``) must serve ~1,000 requests/s, so a key's hash -> owner mapping is
cached for ``Settings.api_key_cache_seconds``; a revoked key therefore stays usable for at most that long.
"""

from __future__ import annotations

import threading
import time

from starlette.concurrency import run_in_threadpool

from api.problems import ProblemError
from service.db.crud.api_keys import hash_key, owner_for_hash
from service.db.session import get_sessionmaker

# Bounded so a flood of random keys cannot grow memory; clearing all is cheap and rare.
_CACHE_MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> tuple[bool, str | None]:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return False, None
        return True, entry[0]

    def put(self, key_hash: str, owner_id: str | None, ttl: float) -> None:
        with self._lock:
            if len(self._entries) >= _CACHE_MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = (owner_id, time.monotonic() + ttl)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


key_cache = KeyCache()


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, detail, slug="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="ruc-service"'}
    )


def parse_bearer(header: str | None) -> str:
    if not header:
        raise _unauthorized("missing Authorization header; send 'Authorization: Bearer <api key>'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        raise _unauthorized("Authorization must be 'Bearer <api key>'")
    return token


def _lookup(database_url: str, key_hash: str) -> str | None:
    with get_sessionmaker(database_url)() as session:
        return owner_for_hash(session, key_hash)


async def authenticate(header: str | None, *, database_url: str, ttl: float) -> str:
    """Owner id for the Authorization header value, or a 401 problem."""
    key_hash = hash_key(parse_bearer(header))
    hit, owner = key_cache.get(key_hash)
    if not hit:
        owner = await run_in_threadpool(_lookup, database_url, key_hash)
        key_cache.put(key_hash, owner, ttl)
    if owner is None:
        raise _unauthorized("unknown or revoked API key")
    return owner
