"""``ruc-service up``: the whole service in one command (migrations, workers, API), no other services.

Defaults to the embedded mode: a SQLite file and a file-backed Celery broker under ``--data-dir``.
SIGINT/SIGTERM stop every child (see ``cli.stack``); a child that dies stops the rest.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from cli.stack import EmbeddedStack


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run migrations, a worker and the API in one command (embedded mode)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", type=Path, default=None, help="default: RUC_DATA_DIR or ./.ruc-data")
    p.add_argument("--log-dir", type=Path, default=None, help="write child logs here instead of the terminal")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    received: list[int] = []

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = EmbeddedStack(host=args.host, port=args.port, data_dir=args.data_dir, log_dir=args.log_dir)
    code = 0
    try:
        stack.start()
        stack.wait_ready()
        key = stack.create_key("bootstrap")
        print(f"ruc-service is up: {stack.url} (docs at {stack.url}/docs)", flush=True)
        print(f"api key: {key}", flush=True)
        while not stop.wait(0.5):
            dead = stack.dead_child()
            if dead is not None:
                rc = dead.proc.returncode if dead.proc else None
                print(f"{dead.name} exited (code {rc}); stopping", flush=True)
                code = 1
                break
    except Exception as exc:
        print(f"ruc-service up failed: {type(exc).__name__}: {exc}", flush=True)
        code = 1
    finally:
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        print(f"stopped ({signal.Signals(received[0]).name})", flush=True)
    return code
