"""``ruc-service keys create NAME | list | revoke ID``: manage API keys (direct DB access)."""

from __future__ import annotations

import argparse
import logging
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="create, list or revoke API keys")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    c = ksub.add_parser("create", help="create a key; the plaintext key is the last line of stdout")
    c.add_argument("name")
    c.set_defaults(func=run_create)
    ls = ksub.add_parser("list", help="list keys (id, prefix, name, revoked)")
    ls.set_defaults(func=run_list)
    r = ksub.add_parser("revoke", help="revoke a key by id")
    r.add_argument("key_id")
    r.set_defaults(func=run_revoke)


def schema_problem() -> str | None:
    """Make the schema usable, or say in one line why it is not. The embedded default (SQLite under
    the data dir) is migrated here, as ``up`` does; any other database is the operator's to migrate."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # before the import: it logs per plugin
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    from service.db.migrate import alembic_config, current_revision, upgrade_head
    from service.settings import get_settings

    settings = get_settings()
    try:
        if settings.is_sqlite:
            settings.ensure_dirs()
            upgrade_head(settings.database_url)
            return None
        head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
        current = current_revision(settings.database_url)
    except SQLAlchemyError as exc:
        first_line = str(exc).splitlines()[0]
        return f"cannot open the database (RUC_DATABASE_URL): {type(exc).__name__}: {first_line}"
    if current != head:
        revision = current or "none"
        return f"the database schema is at revision {revision}, not {head}: run `ruc-service migrate`"
    return None


def _ready() -> bool:
    problem = schema_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
    return problem is None


def create_key(name: str) -> tuple[str, str]:
    """Insert a key; returns (key id, plaintext)."""
    from service.db.crud import api_keys
    from service.db.session import session_scope

    with session_scope() as s:
        row, plaintext = api_keys.create_key(s, name)
        return row.id, plaintext


def run_create(args: argparse.Namespace) -> int:
    if not _ready():
        return 2
    key_id, plaintext = create_key(args.name)
    print(f"created key {key_id} ({args.name}); it is shown only once:")
    print(plaintext)
    return 0


def run_list(_args: argparse.Namespace) -> int:
    if not _ready():
        return 2
    from service.db.crud import api_keys
    from service.db.session import session_scope

    with session_scope() as s:
        for row in api_keys.list_keys(s):
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            print(f"{row.id}\t{row.prefix}...\t{row.name}\t{state}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    if not _ready():
        return 2
    from service.db.crud import api_keys
    from service.db.session import session_scope

    with session_scope() as s:
        ok = api_keys.revoke_key(s, args.key_id)
    print("revoked" if ok else f"no active key {args.key_id}")
    return 0 if ok else 1
