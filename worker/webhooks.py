"""``callback_url`` deliveries: vetted address, hard deadline, bounded answer, Standard Webhooks signature.

A callback URL is a request the service makes on a caller's behalf, so it is treated as hostile:

* only ``http``/``https``; the host is resolved once and every address must be one
  ``service.callback_urls`` permits (public, or allow-listed by ``RUC_WEBHOOK_ALLOW_HOSTS``); the API
  refused the URLs it could judge at submit, this check is the one that counts;
* the connection goes to the address that was checked (the Host header and TLS SNI / certificate
  check carry the name), so a second DNS answer cannot switch it (DNS rebinding);
* one deadline (``DEADLINE_SECONDS``) bounds resolving, connecting, TLS, sending and reading together,
  and only the status line is read (at most ``MAX_ANSWER_BYTES``);
* the outcome is one of a few fixed messages. Every way of getting no HTTP answer (refused, reset,
  filtered, TLS failure, timeout, not HTTP) gives the same message and takes the whole deadline, so
  the events cannot tell a closed port from a filtered one.

Signing follows Standard Webhooks: ``webhook-id`` (the same for every retry of one delivery),
``webhook-timestamp`` (unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">``. The key is ``RUC_WEBHOOK_SECRET`` (``whsec_<base64>`` is decoded,
anything else is used as UTF-8 bytes) or, when that is empty, one deployment-wide ``whsec_`` secret
generated once into ``{data_dir}/webhook_secret``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from service.callback_urls import AllowList, IpAddress, resolve
from service.settings import Settings

DEADLINE_SECONDS = 5.0
MAX_ANSWER_BYTES = 4096
MAX_ATTEMPTS = 6
SECRET_FILE = "webhook_secret"
SECRET_PREFIX = "whsec_"
USER_AGENT = "ruc-service-webhooks"


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to; ``message`` is safe to show the caller."""

    result: Literal["delivered", "retry", "give_up"]
    message: str


class Refused(Exception):
    """The URL may not be called; the message is the event text."""


class NoAnswer(Exception):
    """No HTTP status line arrived within the deadline, for whatever reason."""


# --- addresses -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A vetted callback: connect to ``ip``, speak to ``host``."""

    scheme: str
    host: str
    port: int
    request_target: str
    family: int
    ip: IpAddress

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


def vet(url: str, settings: Settings, deadline: float) -> Target:
    """Parse, resolve and check ``url``; raises Refused (permanent) or NoAnswer (DNS failed)."""
    try:
        parts = urlsplit(url)
        given = parts.port
    except ValueError as exc:
        raise Refused("callback refused: invalid URL") from exc
    if given == 0:  # not "the default port", which ``parts.port or 80`` would make of it
        raise Refused("callback refused: invalid URL")
    port = given or (443 if parts.scheme == "https" else 80)
    if parts.scheme not in ("http", "https"):
        raise Refused("callback refused: only http and https URLs are called")
    host = (parts.hostname or "").rstrip(".")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not host or any(ord(c) <= 32 or ord(c) == 127 for c in host + target):
        raise Refused("callback refused: invalid URL")
    addresses = resolve(host, port, deadline)
    if not addresses:
        raise NoAnswer("host did not resolve")
    allowed = AllowList.of(settings)
    if not all(allowed.permits(host, ip) for _family, ip in addresses):
        raise Refused("callback refused: address not public")
    family, ip = addresses[0]
    return Target(parts.scheme, host, port, target, family, ip)


# --- HTTP ----------------------------------------------------------------------------------------


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise NoAnswer("deadline")
    return left


def post(target: Target, body: bytes, headers: dict[str, str], deadline: float) -> int:
    """POST ``body`` to the vetted address; the status code. Raises NoAnswer.

    Each socket operation gets the time left until ``deadline`` (``sendall`` and the TLS handshake
    treat it as their total), so a peer that drips bytes is cut at the deadline.
    """
    head = [f"POST {target.request_target} HTTP/1.1", f"Host: {target.host_header}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    request = "\r\n".join(head).encode("ascii") + body
    sock: socket.socket | None = None
    try:
        sock = socket.socket(target.family, socket.SOCK_STREAM)
        sock.settimeout(_remaining(deadline))
        sock.connect((str(target.ip), target.port))
        if target.scheme == "https":
            sock.settimeout(_remaining(deadline))
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        sock.settimeout(_remaining(deadline))
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer and len(answer) < MAX_ANSWER_BYTES:
            sock.settimeout(_remaining(deadline))
            chunk = sock.recv(MAX_ANSWER_BYTES - len(answer))
            if not chunk:
                break
            answer += chunk
    except (OSError, ValueError) as exc:  # socket.timeout, ssl.SSLError, resets: all "no answer"
        raise NoAnswer(type(exc).__name__) from exc
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
    status_line = answer.split(b"\r\n", 1)[0].split(b" ")
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
        raise NoAnswer("not HTTP")
    return int(status_line[1])


# --- signing -------------------------------------------------------------------------------------


def signing_key(settings: Settings) -> bytes:
    """The HMAC key: from ``RUC_WEBHOOK_SECRET``, else the deployment's generated secret."""
    secret = settings.webhook_secret or deployment_secret(settings)
    if secret.startswith(SECRET_PREFIX):
        with contextlib.suppress(ValueError):
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    return secret.encode()


def deployment_secret(settings: Settings) -> str:
    """``{data_dir}/webhook_secret``, created once (mode 0600) by whichever worker needs it first."""
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        # link() fails if another worker published first: every worker then reads that one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    return path.read_text().strip()


def sign(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- one attempt ---------------------------------------------------------------------------------


def payload_body(job_id: str, status: str, error: str | None) -> bytes:
    return json.dumps(
        {"id": job_id, "object": "job", "status": status, "error": error}, sort_keys=True
    ).encode()


def attempt_delivery(
    url: str, message_id: str, body: bytes, settings: Settings, *, deadline_seconds: float = DEADLINE_SECONDS
) -> Attempt:
    """Vet ``url`` and POST the signed ``body`` once; never raises."""
    deadline = time.monotonic() + deadline_seconds
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sign(signing_key(settings), message_id, timestamp, body),
    }
    try:
        status = post(vet(url, settings, deadline), body, headers, deadline)
    except Refused as exc:
        return Attempt("give_up", str(exc))
    except NoAnswer:
        # Pad to the deadline: a refused connection must look (and last) like a filtered one.
        time.sleep(max(0.0, deadline - time.monotonic()))
        return Attempt("retry", f"callback failed: no HTTP answer within {deadline_seconds:g} s")
    if 200 <= status < 300:
        return Attempt("delivered", f"callback delivered ({status})")
    # 410 Gone: the receiver asks to stop. Other answers (redirects are not followed) are retried.
    return Attempt("give_up" if status == 410 else "retry", f"callback answered {status}")


def backoff_seconds(settings: Settings, attempt: int) -> float:
    """Delay after failed attempt ``attempt`` (1-based): retry_seconds * 2**(attempt-1)."""
    return settings.webhook_retry_seconds * 2 ** (attempt - 1)


# --- a job's delivery ----------------------------------------------------------------------------


def callback_url_of(spec: Any) -> str | None:
    """The raw ``callback_url`` of a stored spec, also when the rest of the spec no longer validates."""
    url = spec.get("callback_url") if isinstance(spec, dict) else None
    return url if isinstance(url, str) and url else None


def deliver_job_callback(job_id: str, message_id: str, attempt: int, settings: Settings) -> float | None:
    """Attempt ``attempt`` of the finished job's callback; the delay before the next one, or None.

    Every attempt leaves one job event with a fixed message; the last says why it was the last.
    """
    from service.db.crud import job_runs
    from service.db.session import session_scope

    with session_scope() as s:
        job = job_runs.get_job(s, job_id)
        if job is None or job.status not in ("succeeded", "failed", "cancelled"):
            return None
        url, body = callback_url_of(job.spec), payload_body(job.id, job.status, job.error)
    if url is None:
        return None
    outcome = attempt_delivery(url, message_id, body, settings)
    delay: float | None = None
    if outcome.result == "delivered":
        level, message = "info", outcome.message
    elif outcome.result == "retry" and attempt < MAX_ATTEMPTS:
        delay = backoff_seconds(settings, attempt)
        level, message = (
            "warning",
            f"{outcome.message}; attempt {attempt} of {MAX_ATTEMPTS}, next in {delay:g} s",
        )
    else:
        level, message = "warning", f"{outcome.message}; giving up after attempt {attempt}"
    with session_scope() as s:
        job_runs.add_finished_job_event(s, job_id, level, message)
    return delay
