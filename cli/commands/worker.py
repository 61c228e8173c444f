"""``ruc-service worker``: a Celery worker consuming the job, validation and prediction queues."""

from __future__ import annotations

import argparse
import os

from service.task_names import CPU_QUEUE, GPU_QUEUE, PREDICT_QUEUE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run a Celery worker (jobs on queue gpu, upload checks on queue cpu, predictions on predict)",
    )
    p.add_argument(
        "--queues", "-Q", default=f"{GPU_QUEUE},{CPU_QUEUE},{PREDICT_QUEUE}", help="comma-separated queues"
    )
    p.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=1,
        help="processes; 1 per GPU for the gpu queue (two jobs on one GPU only slow each other down)",
    )
    p.add_argument("--hostname", "-n", default=None, help="Celery node name (default celery@%%h)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=run)


def celery_argv(args: argparse.Namespace) -> list[str]:
    queues = ",".join(q.strip() for q in args.queues.split(",") if q.strip())
    hostname = args.hostname or "celery@%h"
    return [
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(args.concurrency),
        "--pool",
        "prefork",
        "--hostname",
        hostname,
        "--loglevel",
        args.loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


def run(args: argparse.Namespace) -> int:
    from worker.celery_app import app

    if PREDICT_QUEUE in {q.strip() for q in args.queues.split(",")}:
        # Before the pool forks: every child then starts with torch and the predictor loaded, so a
        # client waiting on the first prediction does not wait for that import (seconds on 2 cores).
        import core.predict.predictor  # noqa: F401

    # Log lines reach `ruc-service up`'s terminal as they happen, not when a buffer fills.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app.worker_main(argv=celery_argv(args))
    return 0
