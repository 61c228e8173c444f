"""What the HTTP commands share: a ``Client`` from ``RUC_API_URL`` / ``RUC_API_KEY`` and one-line errors."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from ruc_client import ApiError, Client, RucClientError

Handler = Callable[[Client, argparse.Namespace], int]


def with_client(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Run ``handler`` with a client; any client error becomes ``error: ...`` on stderr and exit 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            with Client() as client:
                return handler(client, args)
        except ApiError as exc:
            fields = "; ".join(f"{e.field}: {e.problem}" for e in exc.errors)
            print(f"error: {exc.status} {exc.code or exc.title}: {fields or exc.detail}", file=sys.stderr)
        except (RucClientError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
        return 1

    return run


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))
