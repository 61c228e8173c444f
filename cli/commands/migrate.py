"""``ruc-service migrate``: wait for the database, then bring its schema to the newest revision."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="wait for the database and run Alembic migrations to head")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the database (default 60)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.db.migrate import current_revision, upgrade_head, wait_for_db
    from service.settings import get_settings

    settings = get_settings()
    settings.ensure_dirs()
    wait_for_db(settings.database_url, timeout_s=args.wait)
    upgrade_head(settings.database_url)
    print(f"database at revision {current_revision(settings.database_url)}")
    return 0
