"""Flower in docker-compose.yml (it can revoke tasks and shows their arguments) sits behind basic auth
from FLOWER_BASIC_AUTH and refuses to start without it. Its command runs here with ``sh`` (the image's
entrypoint), the final ``exec celery`` replaced by an echo."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    flower = yaml.safe_load(COMPOSE.read_text())["services"]["flower"]
    assert flower["entrypoint"] == ["sh", "-c"] and flower["ports"] == ["127.0.0.1:5555:5555"]
    script = flower["command"][0].replace("$$", "$")  # compose's escape for a literal $
    assert "exec celery " in script
    script = script.replace("exec celery ", "echo celery ")
    base = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    return subprocess.run(
        ["sh", "-c", script], env={**base, **env}, capture_output=True, text=True, timeout=10
    )


def test_flower_needs_basic_auth() -> None:
    refused = _run({})
    assert refused.returncode != 0 and "FLOWER_BASIC_AUTH" in refused.stderr
    started = _run({"FLOWER_BASIC_AUTH": "ops:s3cret"})
    assert started.returncode == 0, started.stderr
    assert "flower" in started.stdout and "--basic-auth=ops:s3cret" in started.stdout
