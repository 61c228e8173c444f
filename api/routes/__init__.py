"""One router per resource; ``include_routers`` mounts them (resources under /v1) on the app."""

from fastapi import FastAPI

from api.routes import checkpoints, datasets, health, jobs

API_PREFIX = "/v1"


def include_routers(app: FastAPI) -> None:
    # Each router is included directly (not through a /v1 parent router): one level less of route
    # matching on every request, which is measurable on the poll path.
    app.include_router(health.router)
    for module in (datasets, checkpoints, jobs):
        app.include_router(module.router, prefix=API_PREFIX)


__all__ = ["API_PREFIX", "include_routers"]
