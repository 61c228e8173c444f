"""The hostile inputs of issue 9 as a table: what each case sends and what the service must answer.

A case is answered at once (``status``: the 4xx expected, ``pattern`` searched in the body) or is an
upload the API accepts (201) that the cpu worker must mark ``invalid`` with a reason matching
``pattern``. Big payloads are built on disk and streamed in 1 MiB chunks; the files come from
``upload_bombs``. Nothing here unpickles the pickles it builds.
"""

from __future__ import annotations

import json
import socket
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from upload_bombs import (
    deflated_pt,
    many_entries_zip,
    pax_tar_gz,
    pickle_pt,
    png_bomb_zip,
    safetensors_with,
    tar_with,
    undecodable_tar,
    zero_itemsize_npz,
    zip_with,
)

MiB = 1024**2
MAX_UPLOAD_BYTES = 64 * MiB  # the stack's RUC_MAX_UPLOAD_BYTES: room for the 1M-entry zip (51 MB)
UPLOAD = 201  # the status of a case the worker decides
DS, CK, JOBS = "/v1/datasets", "/v1/checkpoints", "/v1/jobs"
JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


@dataclass
class Ctx:
    """The stack's URL and key, a folder for payloads, the file a pickle would create, a name that
    must never appear on disk, a ready dataset and a loopback port nothing may connect to."""

    base_url: str
    key: str
    build_dir: Path
    marker: Path
    token: str
    dataset_id: str = ""
    trap_port: int = 0


@dataclass
class Sent:
    """status: HTTP status (None: no answer); body; sent: request bytes; upload: (route, id) of an
    accepted upload; echo: request text an answer may repeat (not a leak)."""

    status: int | None
    body: bytes
    sent: int
    upload: tuple[str, str] | None = None
    echo: str = ""


@dataclass(frozen=True)
class Case:
    name: str
    item: str  # of issue 9
    send: Callable[[Ctx], Sent]
    status: int | tuple[int, ...]  # any of these
    pattern: str  # regex: in the answer's body, or in the invalid upload's reason

    @property
    def statuses(self) -> tuple[int, ...]:
        return self.status if isinstance(self.status, tuple) else (self.status,)


# --- sending --------------------------------------------------------------------------------------


class _Counted:
    """Chunks that count what they yield (httpx sends an iterator chunked, no Content-Length)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks, self.sent = chunks, 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sent += len(chunk)
            yield chunk


def _spaces(total: int) -> Iterator[bytes]:
    chunk = b" " * MiB  # JSON whitespace: a parser would keep reading
    for _ in range(total // MiB):
        yield chunk


def http(
    ctx: Ctx,
    method: str,
    path: str,
    *,
    auth: str | None = "key",
    content: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    **kw: object,
) -> Sent:
    """One request; ``auth``: "key" (the stack's), None (no header) or a header value."""
    head = dict(headers or {})
    if auth is not None:
        head["Authorization"] = f"Bearer {ctx.key}" if auth == "key" else auth
    counted = _Counted(content) if content is not None and not isinstance(content, bytes) else None
    with httpx.Client(base_url=ctx.base_url, timeout=60) as client:
        r = client.request(method, path, headers=head, content=counted or content, **kw)  # type: ignore[arg-type]
    sent = counted.sent if counted else int(r.request.headers.get("content-length", 0))
    return Sent(r.status_code, r.content, sent, echo=f"{r.request.url} {json.dumps(kw.get('json'))}")


def _complete(answer: bytes) -> bool:
    """Has ``answer`` (an HTTP response so far) reached the end its Content-Length gives?"""
    head, sep, body = answer.partition(b"\r\n\r\n")
    for line in head.lower().split(b"\r\n"):
        if sep and line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def raw(ctx: Ctx, request: bytes) -> Sent:
    """Bytes on a socket; the answer read to the end its Content-Length gives, or until the server
    closes."""
    host, port = ctx.base_url.removeprefix("http://").rsplit(":", 1)
    answer = b""
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        try:
            sock.sendall(request)
            while (chunk := sock.recv(65536)) and not _complete(answer := answer + chunk):
                pass
        except OSError:  # reset after the answer: what arrived is what counts
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return Sent(status, body, len(request), echo=request[:4096].decode("latin-1"))


def _multipart(name: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    yield (
        f'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from chunks
    yield b"\r\n--XyZ--\r\n"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            yield chunk


MULTIPART = {"content-type": "multipart/form-data; boundary=XyZ"}


def upload(ctx: Ctx, route: str, name: str, chunks: Iterable[bytes], *, auth: str | None = "key") -> Sent:
    """Stream ``chunks`` as the ``file`` part; a 201 becomes a pending upload."""
    sent = http(ctx, "POST", route, auth=auth, content=_multipart(name, chunks), headers=MULTIPART)
    if sent.status == UPLOAD:
        sent.upload = (route.split("?")[0], json.loads(sent.body)["id"])
    return sent


def good_npz(path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8), labels=np.arange(n) % 3)
    return path


# --- the table ------------------------------------------------------------------------------------

Build = Callable[[Ctx, Path], object]


def _up(route: str, name: str, build: Build, echo: str = "") -> Callable[[Ctx], Sent]:
    def send(ctx: Ctx) -> Sent:
        path = ctx.build_dir / f"{len(list(ctx.build_dir.iterdir()))}-{name}"
        build(ctx, path)
        sent = upload(ctx, route, name, _file_chunks(path))
        sent.echo = f"{name} {route} {echo.format(token=ctx.token)}"
        return sent

    return send


def upload_cases() -> list[Case]:
    """Files the API accepts and the worker must refuse (items 3, 4/5 and 7)."""
    t = "{token}"
    link, hard = tarfile.SYMTYPE, tarfile.LNKTYPE
    rows: list[tuple[str, str, str, str, Build, str]] = [
        ("pt: deflated data.pkl, 64 MiB inflated", "3", CK, "m.pt",
         lambda c, p: deflated_pt(p, inflated_bytes=64 * MiB), r"archive/data\.pkl: record is compressed"),
        ("tar.gz: 128 MiB pax header", "3", DS, "d.tar.gz",
         lambda c, p: pax_tar_gz(p, header_bytes=128 * MiB), r"pax or long-name\) header of 134217728 bytes"),
        ("npz: zero-itemsize |S0 x 3e7", "3", DS, "d.npz",
         lambda c, p: zero_itemsize_npz(p, count=30_000_000), r"class_names: has a zero-size dtype"),
        ("zip: 1M entries (zip64 count)", "3", DS, "d.zip",
         lambda c, p: many_entries_zip(p, entries=1_000_000), r"archive: has more than 500000 members"),
        ("npz: 500001 entries, EOCD says 1", "3", DS, "d.npz",
         lambda c, p: many_entries_zip(p, entries=500_001, claimed=1), r"npz: has more than 500000 members"),
        ("zip: 10000^2 zero PNG (100 MB decoded)", "3", DS, "d.zip",
         lambda c, p: png_bomb_zip(p, side=10_000), r"cls/bomb\.png: image is 10000x10000 .*decompression"),
        ("tar: 300-level directory nesting", "3", DS, "d.tar",
         lambda c, p: tar_with(p, "d/" * 300 + "x.png"), r"archive: unsupported layout"),
        ("zip: ../../ member name", "3", DS, "d.zip",
         lambda c, p: zip_with(p, f"../../{c.token}.png"), r"escapes the archive \('\.\.' component\)"),
        ("tar: absolute member name", "3", DS, "d.tar",
         lambda c, p: tar_with(p, f"/tmp/{c.token}.png"), r"absolute member path escapes the archive"),
        ("tar: symlink member -> /etc/passwd", "3", DS, "d.tar",
         lambda c, p: tar_with(p, "a/l.png", kind=link, linkname="/etc/passwd"), r"a/l\.png: is a symbolic"),
        ("tar: hardlink member", "3", DS, "d.tar",
         lambda c, p: tar_with(p, "a/h.png", kind=hard, linkname="../../x"), r"a/h\.png: is a hard link"),
        ("pt: pickle __reduce__ -> exec", "3", CK, "m.pt",
         lambda c, p: pickle_pt(p, c.marker, legacy=False), r"the Python object (builtins\.)?exec"),
        ("pth: legacy pickle -> os.system", "3", CK, "m.pth",
         lambda c, p: pickle_pt(p, c.marker, legacy=True), r"the Python object posix\.system"),
        ("tar: non-UTF-8 member name", "4/5", DS, "d.tar",
         lambda c, p: undecodable_tar(p), r"^archive:cat/\\xff\\x07img\.png: unreadable image"),
        ("safetensors: metadata mean [NaN]", "7", CK, "m.safetensors",
         lambda c, p: safetensors_with(p, mean="[NaN]", std="[0.5]"), r"^checkpoint\.metadata\.mean:"),
        ("checkpoint: ?mean=nan&std=1e400", "7", CK + "?mean=nan&std=1e400", "m.safetensors",
         lambda c, p: safetensors_with(p), r"^mean: .*finite"),
    ]  # fmt: skip
    return [
        Case(name, item, _up(route, fn, build, t), UPLOAD, pat) for name, item, route, fn, build, pat in rows
    ]


def _r(request: bytes) -> Callable[[Ctx], Sent]:
    return lambda c: raw(c, request.replace(b"KEY", c.key.encode()))


def _post(path: str, content: bytes) -> Callable[[Ctx], Sent]:
    return lambda c: http(c, "POST", path, content=content, headers=JSON)


def _get(path: str) -> Callable[[Ctx], Sent]:
    return lambda c: http(c, "GET", path)


HEAD = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\n"
# Over RUC_MAX_HEADER_BYTES (16 KiB): h11 refuses a head still incomplete past it (400), the guard one
# that arrived complete in a single read (431). Sizes stay small enough that the server reads all of it
# before it hangs up (unread bytes would turn its close into a reset that can lose the answer).
TOO_LONG, LONG = (400, 431), "Invalid HTTP request|RUC_MAX_HEADER_BYTES"
BIG = 32 * MiB


def request_cases() -> list[Case]:
    """Bodies, headers and paths answered by the API itself (items 1 and 6)."""
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000
    headers = b"".join(b"X-%d: a\r\n" % i for i in range(2000))
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    up_head = HEAD.replace(b"jobs", b"datasets") + b"Content-Type: multipart/form-data; boundary=b\r\n"
    rows: list[tuple[str, str, int, str, Callable[[Ctx], Sent]]] = [
        ("no key, 32 MiB chunked JSON", "1", 401, "Authorization",
         lambda c: http(c, "POST", JOBS, auth=None, content=_spaces(BIG), headers=JSON)),
        ("wrong key, 32 MiB chunked JSON", "1", 401, "unknown or revoked",
         lambda c: http(c, "POST", JOBS, auth="Bearer ruc_nope", content=_spaces(BIG), headers=JSON)),
        ("key, 32 MiB chunked JSON", "1", 413, "RUC_MAX_BODY_BYTES",
         lambda c: http(c, "POST", JOBS, content=_spaces(BIG), headers=JSON)),
        ("key, 300 KB JSON with Content-Length", "1", 413, "RUC_MAX_BODY_BYTES", _post(JOBS, b" " * 300_000)),
        ("Content-Length 10 GB, no body", "1", 413, "RUC_MAX_BODY_BYTES",
         _r(HEAD + b"Content-Length: 10000000000\r\n\r\n")),
        ("no key, 32 MiB chunked upload", "1", 401, "Authorization",
         lambda c: upload(c, DS, "d.npz", _spaces(BIG), auth=None)),
        ("upload 1 MiB over the limit, chunked", "1", 413, "file: larger than the limit of 67108864",
         lambda c: upload(c, DS, "d.npz", _spaces(MAX_UPLOAD_BYTES + MiB))),
        ("upload, Content-Length 10 GB", "1", 413, "larger than the limit",
         _r(up_head + b"Content-Length: 10000000000\r\n\r\n")),
        ("20 KB header", "1", TOO_LONG, LONG, _r(big + b"\r\n\r\n")),
        ("2000 headers", "1", TOO_LONG, LONG, _r(many)),
        ("20 KB request line", "1", TOO_LONG, LONG,
         _r(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("20 KB header that never ends", "1", 400, "Invalid HTTP request", _r(big)),
        ("Content-Length and chunked together", "1", 400, "not both",
         _r(HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("negative Content-Length", "1", 400, "Invalid HTTP request",
         _r(HEAD + b"Content-Length: -1\r\n\r\n")),
        ("8 KiB bearer token", "1", 401, "Authorization must be",
         lambda c: http(c, "GET", JOBS, auth="Bearer " + "a" * 8192)),
        ("latin-1 bytes in Authorization", "1", 401, "unknown or revoked",
         _r(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")),
        ("JSON nested 100000 deep", "3", 422, "nested too deeply",
         _post(JOBS, b"[" * 100_000 + b"]" * 100_000)),
        ("JSON body not UTF-8", "4/5", 422, "not UTF-8 text",
         _post(JOBS, b'{"dataset_id": "\xff\xfe"}')),
        ("upload named x.exe", "1", 415, "unsupported file type", lambda c: upload(c, DS, "x.exe", [b"MZ"])),
        ("upload without a boundary", "1", 415, "multipart/form-data",
         lambda c: http(c, "POST", DS, content=b"x", headers={"content-type": "multipart/form-data"})),
        ("upload of an empty file", "1", 422, "the file is empty", lambda c: upload(c, DS, "d.npz", [])),
        ("upload ending inside the file part", "1", 422, "ended inside the 'file' part",
         lambda c: http(c, "POST", DS, content=next(_multipart("d.npz", [])) + b"abc", headers=MULTIPART)),
        ("JSON {not json", "1", 422, "not valid JSON", _post(JOBS, b"{not json")),
        ("JSON null", "1", 422, "body", _post(JOBS, b"null")),
        ("num_clusters 10**30", "1", 422, '"field":"num_clusters"',
         _post(JOBS, b'{"num_clusters": 1' + b"0" * 30 + b"}")),
        ("dataset_id of 10000 chars", "1", 422, '"field":"dataset_id"',
         _post(JOBS, b'{"dataset_id": "' + b"x" * 10_000 + b'"}')),
        ("form-encoded job", "1", 422, "body", lambda c: http(c, "POST", JOBS, content=b"a=1", headers=FORM)),
        ("upload with two file parts", "1", 422, "exactly one 'file' part",
         lambda c: http(c, "POST", CK, files=[("file", ("a.pt", b"1")), ("file", ("b.pt", b"2"))])),
        ("limit=abc", "1", 422, '"field":"limit"', _get("/v1/jobs?limit=abc")),
        ("job id of 5000 chars", "6", 404, "(?i)not found", _get("/v1/jobs/" + "a" * 5000)),
        ("artifact ..\\..\\x", "6", 404, "(?i)not found", _get("/v1/jobs/job_x/artifacts/..%5C..%5Cx")),
        ("job id ../../etc/passwd", "6", 404, "(?i)not found", _get("/v1/jobs/..%2F..%2Fetc%2Fpasswd")),
        ("artifact name ../../../etc/passwd", "6", 404, "(?i)not found",
         _get("/v1/jobs/job_x/artifacts/..%2F..%2F..%2Fetc%2Fpasswd")),
        ("dataset id with a NUL", "6", 404, "not found", _get("/v1/datasets/ds_%00x")),
        ("SQL in a cursor", "6", 422, "after", _get("/v1/checkpoints?after=%27%20OR%201%3D1%20--")),
        ("SQL in a status filter", "6", 422, "status", _get("/v1/jobs?status=queued%3BDROP%20TABLE%20jobs")),
    ]  # fmt: skip
    return [Case(name, item, send, status, pat) for name, item, status, pat, send in rows]


def _spec(ctx: Ctx, **extra: object) -> dict[str, object]:
    return {"dataset_id": ctx.dataset_id, "num_clusters": 2, **extra}


def _callback(url: str) -> Callable[[Ctx], Sent]:
    def send(ctx: Ctx) -> Sent:
        target = url.format(trap=ctx.trap_port, host=socket.gethostname())
        return http(ctx, "POST", JOBS, json=_spec(ctx, callback_url=target))

    return send


def _nonfinite(fragment: str) -> Callable[[Ctx], Sent]:
    def send(ctx: Ctx) -> Sent:
        body = f'{{"dataset_id": "{ctx.dataset_id}", "num_clusters": 2, {fragment}}}'
        return http(ctx, "POST", JOBS, content=body.encode(), headers=JSON)

    return send


SSRF = [
    ("127.0.0.1, trap port", "http://127.0.0.1:{trap}/hook"),
    ("127.0.0.2", "http://127.0.0.2:{trap}/"),
    ("localhost (name -> loopback)", "http://localhost:{trap}/"),
    ("this machine's host name", "http://{host}:{trap}/"),
    ("localhost. (trailing dot)", "http://localhost.:{trap}/"),
    ("decimal 2130706433", "http://2130706433:{trap}/"),
    ("hex 0x7f.1", "http://0x7f.1:{trap}/"),
    ("0.0.0.0", "http://0.0.0.0:{trap}/"),
    ("10.0.0.1", "http://10.0.0.1/"),
    ("172.16.0.1", "http://172.16.0.1/"),
    ("192.168.1.1:8080", "http://192.168.1.1:8080/"),
    ("100.64.0.1 (shared)", "http://100.64.0.1/"),
    ("169.254.169.254 (metadata)", "http://169.254.169.254/latest/meta-data/"),
    ("[::1]", "http://[::1]:{trap}/"),
    ("[::ffff:127.0.0.1]", "http://[::ffff:127.0.0.1]:{trap}/"),
    ("[::ffff:169.254.169.254]", "http://[::ffff:169.254.169.254]/"),
    ("[fe80::1] (link-local)", "http://[fe80::1]/"),
    ("[fd00::1] (unique local)", "http://[fd00::1]/"),
    ("[64:ff9b::a9fe:a9fe] (NAT64 metadata)", "http://[64:ff9b::a9fe:a9fe]/"),
    ("224.0.0.1 (multicast)", "http://224.0.0.1/"),
    ("user info trick 8.8.8.8@127.0.0.1", "http://8.8.8.8@127.0.0.1:{trap}/"),
    ("user:password on a public host", "https://user:pw@8.8.8.8/"),
    ("port 0", "http://8.8.8.8:0/"),
    ("port 99999", "http://8.8.8.8:99999/"),
    ("[2002:a00:1::] (6to4 of 10.0.0.1)", "http://[2002:a00:1::]/"),
    ("file://", "file:///etc/passwd"),
    ("ftp://", "ftp://8.8.8.8/x"),
    ("gopher:// to a local port", "gopher://127.0.0.1:{trap}/_INFO"),
    ("dict://", "dict://127.0.0.1:{trap}/"),
]
NON_FINITE = [
    ('"refine": {"lambda_u": NaN}', "refine.lambda_u"),
    ('"refine": {"lambda_u": Infinity}', "refine.lambda_u"),
    ('"refine": {"mixup_alpha": -Infinity}', "refine.mixup_alpha"),
    ('"refine": {"lr": 1e400}', "refine.lr"),
    ('"refine": {"confidence_threshold": NaN}', "refine.confidence_threshold"),
    ('"base": {"method": "idec", "deep": {"gamma": Infinity}}', "base.deep.gamma"),
    ('"evaluate": {"attacks": [{"kind": "fgsm", "eps": [NaN]}]}', "evaluate.attacks.0.eps.0"),
]


def spec_cases() -> list[Case]:
    """Job specs that need the ready dataset: callback URLs (item 2) and non-finite numbers (item 7)."""
    ssrf = [Case(f"callback_url {n}", "2", _callback(u), 422, '"field":"callback_url"') for n, u in SSRF]
    nums = [Case(f"spec {f[:44]}", "7", _nonfinite(f), 422, f'"field":"{field}"') for f, field in NON_FINITE]
    key = Case("Idempotency-Key of 300 chars", "1", _long_key, 422, '"field":"Idempotency-Key"')
    return [*ssrf, *nums, key]


def _long_key(ctx: Ctx) -> Sent:
    return http(ctx, "POST", JOBS, json=_spec(ctx), headers={"Idempotency-Key": "k" * 300})
