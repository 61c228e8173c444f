"""docker-compose.yml, checked without a Docker engine: its shape, and each of our services' command and
health check run here against the local Postgres and Redis with the service's env translated."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from integration_support import REPO, free_port, spawn, wait_for
from sqlalchemy.engine import make_url

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = [name for name, svc in SERVICES.items() if str(svc.get("image", "")).startswith("ruc-service-")]


def _expand(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the defaults (no .env here)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m.group(1), m.group(2)), value)


def local_env(svc: dict[str, Any], *, pg_url: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    """The service's environment with hosts, credentials, database and data dir made local."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    local_pg = make_url(pg_url)
    local_redis_db = redis_url.rsplit("/", 1)[1]
    for key, raw in (svc.get("environment") or {}).items():
        value = _expand(str(raw))
        if key == "RUC_DATABASE_URL":
            url = make_url(value)
            assert url.host == "postgres", value
            value = url.set(
                host=local_pg.host,
                port=local_pg.port,
                username=local_pg.username,
                password=None,
                database=local_pg.database,
            ).render_as_string(hide_password=False)
        elif key == "RUC_BROKER_URL":
            assert value.startswith("redis://redis:6379/"), value
            value = f"redis://127.0.0.1:6379/{local_redis_db}"
        elif key == "RUC_DATA_DIR":
            value = str(data_dir)
        env[key] = value
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOSTNAME"] = socket.gethostname()
    return env


def local_argv(command: list[str]) -> list[str]:
    assert command[0] == "ruc-service", command
    exe = shutil.which("ruc-service", path=str(Path(sys.executable).parent))
    return [exe, *command[1:]] if exe else [sys.executable, "-m", "cli.main", *command[1:]]


def health_argv(svc: dict[str, Any]) -> list[str]:
    test = svc["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        # Compose turns `$$` into a literal `$` before the shell sees it.
        return ["sh", "-c", test[1].replace("$$", "$")]
    assert test[0] == "CMD", test
    return list(test[1:])


def test_compose_shape() -> None:
    assert {"postgres", "redis", "migrate", "api", "worker", "flower"} <= set(SERVICES)
    assert SERVICES["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert SERVICES["redis"]["image"].startswith("redis:7")
    assert "--appendonly" in SERVICES["redis"]["command"]
    assert SERVICES["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"][-2:]
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    api_deps = SERVICES["api"]["depends_on"]
    assert api_deps["migrate"]["condition"] == "service_completed_successfully"
    assert api_deps["redis"]["condition"] == "service_healthy"
    gpu = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "storage:/data" in SERVICES["api"]["volumes"] and "storage:/data" in SERVICES["worker"]["volumes"]
    assert SERVICES["flower"]["profiles"] == ["monitoring"]
    # Optional S3: MinIO and its bucket only under the profile; our services wait for the bucket only then.
    assert SERVICES["minio"]["profiles"] == SERVICES["minio-bucket"]["profiles"] == ["s3"]
    assert SERVICES["minio-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    env = SERVICES["api"]["environment"]
    assert _expand(env["RUC_STORAGE_BACKEND"]) == "local"  # the volume unless asked otherwise
    assert _expand(env["RUC_S3_ENDPOINT_URL"]) == "http://minio:9000"
    minio_env = SERVICES["minio"]["environment"]
    assert _expand(minio_env["MINIO_ROOT_USER"]) == _expand(env["RUC_S3_ACCESS_KEY_ID"])
    assert _expand(minio_env["MINIO_ROOT_PASSWORD"]) == _expand(env["RUC_S3_SECRET_ACCESS_KEY"])
    assert _expand(SERVICES["minio-bucket"]["environment"]["S3_BUCKET"]) == _expand(env["RUC_S3_BUCKET"])
    for name in OURS:
        assert {"RUC_DATABASE_URL", "RUC_BROKER_URL", "RUC_DATA_DIR"} <= set(SERVICES[name]["environment"])
        if name != "migrate":
            bucket_dep = SERVICES[name]["depends_on"]["minio-bucket"]
            assert bucket_dep == {"condition": "service_completed_successfully", "required": False}
    dockerfiles = {SERVICES[n].get("build", {}).get("dockerfile") for n in OURS} - {None}
    assert dockerfiles == {"docker/Dockerfile.api", "docker/Dockerfile.worker"}
    api_docker = (REPO / "docker/Dockerfile.api").read_text()
    assert "pip install '.[api]'" in api_docker and "[ml" not in api_docker and "torch==" not in api_docker
    worker_docker = (REPO / "docker/Dockerfile.worker").read_text()
    assert "torch==2.14.1 torchvision==0.29.1" in worker_docker and "'.[ml,api]'" in worker_docker


def test_our_services_run_and_pass_their_health_checks(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    assert set(OURS) >= {"migrate", "api", "worker"}, OURS
    data_dir = tmp_path / "data"
    log_dir = tmp_path / "logs"

    migrate_env = local_env(SERVICES["migrate"], pg_url=pg_url, redis_url=redis_url, data_dir=data_dir)
    done = subprocess.run(
        local_argv(SERVICES["migrate"]["command"]),
        env=migrate_env,
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    svc = SERVICES["api"]
    port = free_port()
    argv = [str(port) if a == "8000" else a for a in local_argv(svc["command"])]
    api = spawn(
        "compose-api", argv, local_env(svc, pg_url=pg_url, redis_url=redis_url, data_dir=data_dir), log_dir
    )
    try:
        health = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in health_argv(svc)]
        env = local_env(svc, pg_url=pg_url, redis_url=redis_url, data_dir=data_dir)
        wait_for(
            lambda: subprocess.run(health, env=env, capture_output=True, timeout=20).returncode == 0,
            60,
            0.5,
            f"api health check ({api.log()[-2000:]})",
        )
        import httpx

        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    finally:
        api.stop()

    for name in [n for n in OURS if n.startswith("worker")]:
        svc = SERVICES[name]
        env = local_env(svc, pg_url=pg_url, redis_url=redis_url, data_dir=data_dir)
        worker = spawn(f"compose-{name}", local_argv(svc["command"]), env, log_dir)
        try:
            wait_for(
                lambda env=env, svc=svc: (
                    subprocess.run(
                        health_argv(svc), env=env, cwd=REPO, capture_output=True, timeout=30
                    ).returncode
                    == 0
                ),
                90,
                1.0,
                f"{name} health check",
            )
            assert worker.alive(), worker.log()[-3000:]
        finally:
            worker.stop()
