"""``ruc-service keys create NAME | list | revoke ID``: manage API keys (direct DB access)."""

from __future__ import annotations

import argparse


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


def create_key(name: str) -> tuple[str, str]:
    """Insert a key; returns (key id, plaintext)."""
    from api.db.crud import api_keys
    from api.db.session import session_scope

    with session_scope() as s:
        row, plaintext = api_keys.create_key(s, name)
        return row.id, plaintext


def run_create(args: argparse.Namespace) -> int:
    key_id, plaintext = create_key(args.name)
    print(f"created key {key_id} ({args.name}); it is shown only once:")
    print(plaintext)
    return 0


def run_list(_args: argparse.Namespace) -> int:
    from api.db.crud import api_keys
    from api.db.session import session_scope

    with session_scope() as s:
        for row in api_keys.list_keys(s):
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            print(f"{row.id}\t{row.prefix}...\t{row.name}\t{state}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from api.db.crud import api_keys
    from api.db.session import session_scope

    with session_scope() as s:
        ok = api_keys.revoke_key(s, args.key_id)
    print("revoked" if ok else f"no active key {args.key_id}")
    return 0 if ok else 1
