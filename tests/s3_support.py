"""A real S3 HTTP endpoint for tests: moto's server (``moto_server``) as a subprocess on a free loopback
port, so boto3 talks to it over HTTP exactly as to AWS or MinIO (no in-process patching)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGION = "us-east-1"
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoS3:
    """A running moto server: ``endpoint`` URL, and a boto3 client on it."""

    endpoint: str
    proc: subprocess.Popen[bytes]
    _client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            )
        return self._client

    def new_bucket(self) -> str:
        name = f"ruc-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every object name in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def pending_uploads(self, bucket: str) -> int:
        """Multipart uploads started and neither completed nor aborted."""
        return len(self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The service's environment for this bucket (credentials through Settings)."""
        return {
            "RUC_STORAGE_BACKEND": "s3",
            "RUC_S3_BUCKET": bucket,
            "RUC_S3_PREFIX": prefix,
            "RUC_S3_ENDPOINT_URL": self.endpoint,
            "RUC_S3_REGION": REGION,
            "RUC_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "RUC_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }


@contextlib.contextmanager
def moto_s3(log_dir: Path) -> Iterator[MotoS3]:
    """Start ``moto_server`` and wait until it answers; stopped on exit."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    assert exe, "moto_server not installed (pip install 'moto[server]', in the test extra)"
    port = _free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"moto-{port}.log", "wb") as out:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out, env=env)
    server = MotoS3(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (log_dir / f"moto-{port}.log").read_text()[-2000:]
            try:
                server.client().list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
