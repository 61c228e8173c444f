"""Named dependencies: ``SessionDep``, ``OwnerDep``, ``SettingsDep``, ``StorageDep``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import authenticate
from api.guard import OWNER_STATE_KEY
from service.db.session import get_sessionmaker
from service.settings import Settings, get_settings
from service.storage import Storage


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(_settings)]


async def _storage(request: Request) -> Storage:
    return request.app.state.storage


StorageDep = Annotated[Storage, Depends(_storage)]


def _commit_close(session: Session) -> None:
    try:
        session.commit()
    finally:
        session.close()


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    """One session per request: committed when the route returns, rolled back when it raises.

    Creating a Session does no I/O. On the way out, pending writes are committed in the thread pool (a
    commit may wait on a lock); a session with nothing pending is closed on the event loop, which only
    returns its connection to the pool: a thread hop there would cost more than the poll query itself.
    """
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
    except BaseException:
        session.close()
        raise
    if session.new or session.dirty or session.deleted:
        await run_in_threadpool(_commit_close, session)
    else:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_owner(request: Request, settings: SettingsDep) -> str:
    """The owner the request guard authenticated (``api/guard.py``), before any body was read."""
    owner = getattr(request.state, OWNER_STATE_KEY, None)
    if isinstance(owner, str):
        return owner
    return await authenticate(
        request.headers.get("authorization"),
        database_url=settings.database_url,
        ttl=settings.api_key_cache_seconds,
    )


OwnerDep = Annotated[str, Depends(get_owner)]

__all__ = ["OwnerDep", "SessionDep", "SettingsDep", "StorageDep", "get_settings"]
