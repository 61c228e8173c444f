"""``ruc-service gc``: remove the files of failed/cancelled jobs and invalid uploads past the retention."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gc",
        help="remove failed/cancelled jobs' files and invalid uploads older than RUC_RETENTION_DAYS",
    )
    p.add_argument(
        "--days",
        type=float,
        default=None,
        help="retention in days for this run (default: RUC_RETENTION_DAYS; 0 keeps everything)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def run(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from worker.gc import collect_garbage

    settings = get_settings()
    days = settings.retention_days if args.days is None else args.days
    if days <= 0:
        print("retention is 0 days: everything is kept, nothing removed")
        return 0
    removed = collect_garbage(settings, retention_days=days, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for r in removed:
        print(f"{verb} {r.path}  {_size(r.bytes)}  ({r.why})")
    total = sum(r.bytes for r in removed)
    freed = "would free" if args.dry_run else "freed"
    print(f"{len(removed)} folders {verb}, {freed} {_size(total)} ({total} bytes)")
    return 0
