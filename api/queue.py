"""Enqueue worker tasks by name through a broker-only Celery client.

The API never imports worker/ (which imports torch): tasks are addressed by their names
(``service.task_names``) and
carry ids only. Call ``enqueue`` only after the row the id names is committed.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from celery import Celery

from service.settings import Settings
from service.task_names import TASK_QUEUES

log = logging.getLogger("api.queue")


# A request must not hang on a dead broker: two quick retries, then the caller answers 503.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.5}


class EnqueueError(RuntimeError):
    """The broker did not accept the message."""


@lru_cache(maxsize=8)
def _client(broker_url: str, transport_options_json: str) -> Celery:
    app = Celery("ruc-api", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=json.loads(transport_options_json),
        broker_connection_retry_on_startup=False,
        task_serializer="json",
        accept_content=["json"],
        task_create_missing_queues=True,
    )
    return app


def celery_client(settings: Settings) -> Celery:
    return _client(settings.broker_url, json.dumps(settings.broker_transport_options(), sort_keys=True))


def enqueue(settings: Settings, task_name: str, args: list[Any]) -> None:
    """Publish ``task_name(*args)`` to its queue; raises EnqueueError when the broker is unreachable."""
    queue = TASK_QUEUES[task_name]
    try:
        celery_client(settings).send_task(
            task_name, args=args, queue=queue, retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )
    except Exception as exc:  # kombu raises transport-specific errors; all mean "not enqueued"
        log.error("enqueue of %s%s on %s failed: %s", task_name, args, queue, exc)
        raise EnqueueError(str(exc)) from exc
