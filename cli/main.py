"""Entry point of ``ruc-service``: dispatches to ``cli.commands.<name>.run``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cli.commands import api, datasets, demo, gc, jobs, keys, migrate, up, worker

COMMANDS = (api, worker, migrate, keys, up, demo, datasets, jobs, gc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ruc-service", description="Refine image clusterings with RUC, as a REST service."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One INFO line per HTTP request would bury the demo's progress bar and the workers' logs.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
