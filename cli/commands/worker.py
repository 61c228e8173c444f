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
    p.add_argument(
        "--devices",
        default=None,
        help="devices of each job: cuda:0,cuda:1 | all | cpu:N | one device (sets RUC_WORKER_DEVICES); "
        "several train one job data-parallel, so use --concurrency 1",
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


def _several(devices: str) -> bool:
    """True unless ``devices`` names one device (no torch here: ``all`` counts as several)."""
    d = devices.strip()
    return d == "all" or "," in d or (d.startswith("cpu:") and d != "cpu:1")


def run(args: argparse.Namespace) -> int:
    if args.devices:
        if _several(args.devices) and args.concurrency != 1:
            raise SystemExit(
                "--devices with several devices trains one job on all of them: use --concurrency 1 "
                "(or one worker per device group, e.g. CUDA_VISIBLE_DEVICES=0,1 and =2,3)"
            )
        os.environ["RUC_WORKER_DEVICES"] = args.devices  # read by the pool's Settings
        from service.settings import get_settings

        get_settings.cache_clear()

    from worker.celery_app import app

    if PREDICT_QUEUE in {q.strip() for q in args.queues.split(",")}:
        # Before the pool forks: every child then starts with torch and the predictor loaded, so a
        # client waiting on the first prediction does not wait for that import (seconds on 2 cores).
        import core.predict.predictor  # noqa: F401

    # Log lines reach `ruc-service up`'s terminal as they happen, not when a buffer fills.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app.worker_main(argv=celery_argv(args))
    return 0
