"""``ruc-service datasets upload FILE [--wait]``, through the API (``RUC_API_URL``, ``RUC_API_KEY``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.commands.client_support import with_client
from ruc_client import Client


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="upload datasets through the API (RUC_API_URL, RUC_API_KEY)")
    dsub = p.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    up = dsub.add_parser("upload", help="upload an npz / zip / tar; prints the dataset id last")
    up.add_argument("file", type=Path)
    up.add_argument("--wait", action="store_true", help="wait until it is ready (exit 1 when invalid)")
    up.set_defaults(func=with_client(run_upload))


def run_upload(client: Client, args: argparse.Namespace) -> int:
    dataset = client.upload_dataset(args.file, progress=sys.stderr.isatty())
    print(f"uploaded {dataset.filename}: {dataset.size} bytes, sha256 {dataset.sha256} (verified)")
    if args.wait:
        dataset = client.wait_dataset(dataset.id)
        if dataset.status != "ready":
            print(f"error: dataset {dataset.id} is {dataset.status}: {dataset.reason}", file=sys.stderr)
            return 1
        print(f"ready: {dataset.facts}")
    print(dataset.id)
    return 0
