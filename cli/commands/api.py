"""``ruc-service api``: the FastAPI app under uvicorn."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="serve the REST API (uvicorn api.main:app)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.settings import get_settings

    # h11, not httptools: httptools buffers a header of any size (a 200 MiB header took the API to
    # 480 MB and 200 s of CPU), while h11 refuses a request line and headers over its buffer limit.
    # An import string (not the app object) so --workers > 1 can re-import it in each process.
    uvicorn.run(
        "api.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        http="h11",
        h11_max_incomplete_event_size=get_settings().max_header_bytes,
    )
    return 0
