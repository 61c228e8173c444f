"""``ruc-service keys`` on a fresh data dir migrates its SQLite first; on an unmigrated Postgres it
says in one line what to run, with no traceback."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from integration_support import CLI, PG_ADMIN_URL, REPO


def _keys(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env.update(env_extra, PYTHONPATH=str(REPO))
    return subprocess.run(
        [*CLI, "keys", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_keys_create_on_a_fresh_data_dir(tmp_path: Path) -> None:
    data = {"RUC_DATA_DIR": str(tmp_path / "fresh")}
    created = _keys(data, "create", "me")
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[-1].startswith("ruc_") and "Traceback" not in created.stderr
    listed = _keys(data, "list")
    assert listed.returncode == 0 and "\tme\tactive" in listed.stdout


def test_keys_on_an_unmigrated_database_names_the_command() -> None:
    import psycopg

    name = f"ruc_keys_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
        out = _keys({"RUC_DATABASE_URL": url}, "create", "me")
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.strip().endswith("run `ruc-service migrate`") and out.stderr.count("\n") == 1
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
