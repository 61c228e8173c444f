"""callback_url deliveries against real local servers: signature, refused addresses, deadline,
bounded answer, indistinguishable failures, and retries with backoff through a real Celery worker."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from integration_support import Services, digits_npz, upload, wait_for, wait_upload

from service import callback_urls
from service.db.crud import job_runs
from service.db.models import Job, new_id
from service.db.session import dispose_engines, session_scope
from service.settings import Settings, get_settings
from worker import webhooks


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Embedded settings, no RUC_WEBHOOK_SECRET (so the deployment secret is generated)."""
    for key in ("RUC_DATABASE_URL", "RUC_BROKER_URL", "RUC_WEBHOOK_SECRET", "RUC_WEBHOOK_ALLOW_HOSTS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RUC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    dispose_engines()
    yield get_settings()
    dispose_engines()
    get_settings.cache_clear()


def allow(settings: Settings, hosts: str) -> Settings:
    return settings.model_copy(update={"webhook_allow_hosts": hosts})


class RawServer:
    """A TCP server on 127.0.0.1 whose connection handler the test writes; records what it read."""

    def __init__(self, handle: Callable[[socket.socket, RawServer], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook?x=1"
        self.handle = handle
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.sent = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handle(conn, self)

    def read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers["content-length"]):
            body += conn.recv(65536)
        self.requests.append((time.monotonic(), {"request-line": lines[0], **headers}, body))

    def close(self) -> None:
        self.sock.close()


def answering(status: int) -> Callable[[socket.socket, RawServer], None]:
    def handle(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())

    return handle


@pytest.fixture()
def server_factory() -> Iterator[Callable[[Callable[[socket.socket, RawServer], None]], RawServer]]:
    made: list[RawServer] = []

    def make(handle: Callable[[socket.socket, RawServer], None]) -> RawServer:
        made.append(RawServer(handle))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_delivery_is_signed_by_standard_webhooks_with_the_deployment_secret(
    settings: Settings, server_factory: Any
) -> None:
    server = server_factory(answering(204))
    body = webhooks.payload_body("job_x", "succeeded", None)
    outcome = webhooks.attempt_delivery(server.url, "msg_1", body, allow(settings, "127.0.0.1"))
    assert outcome == webhooks.Attempt("delivered", "callback delivered (204)")
    ((_, headers, received),) = server.requests
    assert (
        headers["request-line"] == "POST /hook?x=1 HTTP/1.1" and headers["host"] == f"127.0.0.1:{server.port}"
    )
    assert received == body and json.loads(received) == {
        "id": "job_x",
        "object": "job",
        "status": "succeeded",
        "error": None,
    }
    secret_file = settings.data_dir / "webhook_secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text().strip()
    assert secret.startswith("whsec_")
    # Independent check, as a receiver following the Standard Webhooks spec would do it.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    assert len(key) == 32
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + received
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-id"] == "msg_1" and headers["webhook-signature"] == expected
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    # Every worker signs with the same secret: a second call reads the file instead of making one.
    assert webhooks.signing_key(settings) == key


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "http://[::1]:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/",
        "http://192.168.0.1:5555/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0:{port}/",
        "http://[fe80::1]/",
        "http://224.0.0.1/",
        "http://[64:ff9b::a9fe:a9fe]/",
    ],
)
def test_non_public_addresses_are_refused_unless_allow_listed(
    settings: Settings, server_factory: Any, url: str
) -> None:
    server = server_factory(answering(200))
    url = url.format(port=server.port)
    started = time.monotonic()
    outcome = webhooks.attempt_delivery(url, "msg_1", b"{}", settings)
    assert outcome == webhooks.Attempt("give_up", "callback refused: address not public")
    assert time.monotonic() - started < 1.0 and server.requests == []
    if "127.0.0.1" in url:
        assert (
            webhooks.attempt_delivery(url, "m", b"{}", allow(settings, "127.0.0.0/8")).result == "delivered"
        )


def test_only_http_and_https_are_called(settings: Settings) -> None:
    for url in ("ftp://example.com/x", "file:///etc/passwd", "gopher://127.0.0.1:70/"):
        assert webhooks.attempt_delivery(url, "m", b"{}", settings) == webhooks.Attempt(
            "give_up", "callback refused: only http and https URLs are called"
        )


def test_public_address_checks() -> None:
    import ipaddress

    public = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
    private = [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "2002:a00:1::",
        "240.0.0.1",
        "255.255.255.255",
        "::",
    ]
    assert [callback_urls.is_public(ipaddress.ip_address(a)) for a in public] == [True] * len(public)
    assert [callback_urls.is_public(ipaddress.ip_address(a)) for a in private] == [False] * len(private)


def test_a_drip_feeding_server_is_cut_at_the_deadline(settings: Settings, server_factory: Any) -> None:
    def drip(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        for byte in b"HTTP/1.1 200 OK\r\n\r\n":
            conn.sendall(bytes([byte]))
            server.sent += 1
            time.sleep(0.4)

    server = server_factory(drip)
    started = time.monotonic()
    outcome = webhooks.attempt_delivery(
        server.url, "m", b"{}", allow(settings, "127.0.0.1"), deadline_seconds=1.5
    )
    elapsed = time.monotonic() - started
    print(f"drip server (1 byte / 0.4 s): cut after {elapsed:.2f} s, {server.sent} bytes read")
    assert outcome == webhooks.Attempt("retry", "callback failed: no HTTP answer within 1.5 s")
    assert 1.4 < elapsed < 2.0 and server.sent < 8


def test_a_huge_answer_is_not_read(settings: Settings, server_factory: Any) -> None:
    chunk = b"x" * (1 << 20)

    def huge(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 419430400\r\n\r\n")
        for _ in range(400):  # 400 MiB, unless the client hangs up
            conn.sendall(chunk)
            server.sent += len(chunk)

    server = server_factory(huge)
    started = time.monotonic()
    outcome = webhooks.attempt_delivery(server.url, "m", b"{}", allow(settings, "127.0.0.1"))
    elapsed = time.monotonic() - started
    time.sleep(0.5)  # the server notices the hang-up at its next send
    print(
        f"400 MiB answer: delivered in {elapsed:.3f} s; "
        f"{server.sent / 2**20:.0f} MiB left the server before the hang-up"
    )
    assert outcome.result == "delivered" and elapsed < 1.0
    assert server.sent < 64 << 20


def test_a_closed_port_and_a_silent_one_look_the_same(settings: Settings, server_factory: Any) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens: connection refused at once

    def silent(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        time.sleep(3)

    server = server_factory(silent)
    local = allow(settings, "127.0.0.1")
    results = []
    for url in (f"http://127.0.0.1:{closed_port}/", server.url, "http://no-such-host.invalid/"):
        started = time.monotonic()
        outcome = webhooks.attempt_delivery(url, "m", b"{}", local, deadline_seconds=1.0)
        results.append((outcome, round(time.monotonic() - started, 1)))
    print(f"closed port / silent server / unresolvable host: {results}")
    expected = webhooks.Attempt("retry", "callback failed: no HTTP answer within 1 s")
    assert [o for o, _ in results] == [expected] * 3
    assert all(0.9 <= t <= 1.3 for _, t in results)


def test_a_failing_receiver_is_retried_with_backoff_and_an_invalid_spec_still_calls_back(
    services: Services, server_factory: Any
) -> None:
    from api.queue import enqueue
    from service.task_names import TASK_RUN_JOB

    answers = iter([500, 503, 200])

    def flaky(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        conn.sendall(f"HTTP/1.1 {next(answers)} X\r\nContent-Length: 0\r\n\r\n".encode())

    server = server_factory(flaky)
    with services.client() as client:
        ds = wait_upload(client, "/v1/datasets", upload(client, "/v1/datasets", "d.npz", digits_npz(n=50)))
        with session_scope(services.database_url) as s:
            stored = job_runs.get_dataset(s, ds["id"])
            assert stored is not None
            job = Job(
                id=new_id("job"),
                owner_id=stored.owner_id,
                dataset_id=stored.id,
                # A row no current JobSpec accepts (as one written by an older version could be).
                spec={"dataset_id": stored.id, "num_clusters": "many", "callback_url": server.url},
            )
            s.add(job)
            s.flush()
            job_id = job.id
        env_settings = Settings(database_url=services.database_url, broker_url=services.env["RUC_BROKER_URL"])
        enqueue(env_settings, TASK_RUN_JOB, [job_id])
        wait_for(lambda: len(server.requests) >= 3, 90, 0.2, "three callback attempts")
        row = client.get(f"/v1/jobs/{job_id}").json()
        assert row["status"] == "failed" and row.get("error_code") == "invalid_spec", row
        assert row["error"].startswith("the job spec is not valid: num_clusters"), row
        times = [t for t, _, _ in server.requests]
        gaps = [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]
        print(f"callback attempts answered 500, 503, 200; gaps {gaps} s (backoff 0.5 s doubling)")
        assert 0.5 <= gaps[0] < gaps[1] and gaps[1] >= 1.0
        ids = {h["webhook-id"] for _, h, _ in server.requests}
        assert len(ids) == 1  # one delivery, retried: the receiver can deduplicate on webhook-id
        _, headers, body = server.requests[-1]
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        mac = base64.b64encode(hmac.new(b"test-secret", signed, hashlib.sha256).digest()).decode()
        assert headers["webhook-signature"] == f"v1,{mac}"
        assert json.loads(body)["status"] == "failed"

        def messages() -> list[str]:
            page = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()
            return [e["message"] for e in page["data"] if e["message"].startswith("callback")]

        assert wait_for(lambda: len(messages()) == 3 and messages(), 10, 0.2, "callback events") == [
            "callback answered 500; attempt 1 of 6, next in 0.5 s",
            "callback answered 503; attempt 2 of 6, next in 1 s",
            "callback delivered (200)",
        ]
