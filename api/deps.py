"""Named dependencies: ``SessionDep``, ``OwnerDep``, ``SettingsDep``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import authenticate
from api.db.session import get_sessionmaker
from api.settings import Settings, get_settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(_settings)]


def _finish(session: Session, ok: bool) -> None:
    try:
        if ok:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    """One session per request: committed when the route returns, rolled back when it raises.

    Creating a Session does no I/O, so it happens on the event loop; closing returns a connection to
    the pool (and may commit), so it runs in the thread pool.
    """
    session = get_sessionmaker(settings.database_url)()
    ok = False
    try:
        yield session
        ok = True
    finally:
        await run_in_threadpool(_finish, session, ok)


SessionDep = Annotated[Session, Depends(get_session)]


async def get_owner(request: Request, settings: SettingsDep) -> str:
    return await authenticate(
        request.headers.get("authorization"),
        database_url=settings.database_url,
        ttl=settings.api_key_cache_seconds,
    )


OwnerDep = Annotated[str, Depends(get_owner)]

__all__ = ["OwnerDep", "SessionDep", "SettingsDep", "get_settings"]
