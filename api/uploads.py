"""Streaming multipart upload straight to the store.

The request body is parsed as it arrives (python-multipart's push parser over ``request.stream()``), so
it is never held whole in memory nor spooled to a temporary file: the ``file`` part goes to the store's
writer in ``upload_chunk_bytes`` writes (a local file, or an S3 multipart upload holding one part in
memory), hashed on the way, and the upload is aborted (413, nothing kept) the moment it passes
``max_upload_bytes``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from api.problems import FieldProblem, ProblemError, field_error
from service.storage import ObjectWriter, Storage, matched_suffix, sanitize_filename

# Multipart framing and small extra fields on top of the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
FILE_FIELD = "file"
_FILENAME_EXT = re.compile(r"filename\*\s*=\s*[A-Za-z0-9_-]*'[A-Za-z-]*'([^;\s]+)", re.IGNORECASE)


@dataclass
class StoredUpload:
    filename: str  # sanitised client name, display only
    relative_path: str  # the key, relative to the store's root
    size: int
    sha256: str


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        f"file: larger than the limit of {limit} bytes",
        slug="payload-too-large",
        errors=[FieldProblem(FILE_FIELD, f"larger than the limit of {limit} bytes")],
    )


@dataclass
class _State:
    """Parser callbacks run synchronously inside ``parser.write``; they only collect bytes here."""

    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, bytes] = field(default_factory=dict)
    in_file: bool = False
    file_seen: bool = False
    file_done: bool = False
    filename: str = ""
    suffix: str = ""
    pending: bytearray = field(default_factory=bytearray)
    size: int = 0
    max_bytes: int = 0
    allowed: tuple[str, ...] = ()

    def on_part_begin(self) -> None:
        self.headers = {}
        self.in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").strip().lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        disposition = self.headers.get("content-disposition", b"")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name != FILE_FIELD:
            return
        if self.file_seen:
            raise field_error(422, FILE_FIELD, "send exactly one 'file' part")
        self.filename = sanitize_filename(_part_filename(params, disposition))
        suffix = matched_suffix(self.filename, self.allowed)
        if suffix is None:
            raise field_error(
                415,
                FILE_FIELD,
                f"unsupported file type {self.filename!r}; allowed: {', '.join(self.allowed)}",
                slug="unsupported-media-type",
            )
        self.suffix = suffix
        self.in_file = self.file_seen = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise _too_large(self.max_bytes)
        self.pending += data[start:end]

    def on_part_end(self) -> None:
        if self.in_file:
            self.file_done = True
        self.in_file = False


def _part_filename(params: dict[bytes, bytes], disposition: bytes) -> str:
    """The part's file name: ``filename``, else RFC 5987 ``filename*=UTF-8''...``; 422 without either."""
    raw = params.get(b"filename")
    if raw is not None:
        return raw.decode("utf-8", "replace")
    # python-multipart drops the extended parameter, so it is read from the raw header.
    extended = _FILENAME_EXT.search(disposition.decode("latin-1"))
    if extended is not None:
        return unquote(extended.group(1), errors="replace")
    raise field_error(422, FILE_FIELD, "the 'file' part must be a file (with a filename)")


def _append(out: ObjectWriter, hasher: hashlib._Hash, chunk: bytes) -> None:
    hasher.update(chunk)
    out.write(chunk)


async def _abort(out: ObjectWriter | None) -> None:
    """Drop a partial upload, also when the request was cancelled (an S3 abort is a network call)."""
    if out is not None:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(out.abort)


def _multipart_boundary(request: Request, max_bytes: int) -> bytes:
    """The multipart boundary; 415 for another content type, 413 for a declared length over the limit."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise field_error(
            415,
            FILE_FIELD,
            "send multipart/form-data with the upload in a 'file' part",
            slug="unsupported-media-type",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise _too_large(max_bytes)
    return boundary


def _parser(boundary: bytes, state: _State) -> MultipartParser:
    return MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": state.on_part_begin,
            "on_part_data": state.on_part_data,
            "on_part_end": state.on_part_end,
            "on_header_field": state.on_header_field,
            "on_header_value": state.on_header_value,
            "on_header_end": state.on_header_end,
            "on_headers_finished": state.on_headers_finished,
        },
    )


@dataclass
class _Sink:
    """The store's writer, opened at the first write (the suffix is known by then), and the hash."""

    storage: Storage
    key_stem: str  # relative_dir/stem; the key is this plus the file's suffix
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    out: ObjectWriter | None = None

    def open(self, suffix: str) -> ObjectWriter:
        if self.out is None:
            self.out = self.storage.writer(f"{self.key_stem}{suffix}")
        return self.out

    async def flush(self, state: _State) -> None:
        """Write and clear ``state.pending``."""
        out = self.open(state.suffix)
        data, state.pending = bytes(state.pending), bytearray()
        await run_in_threadpool(_append, out, self.hasher, data)


async def _stream_body(
    request: Request, parser: MultipartParser, state: _State, sink: _Sink, *, max_bytes: int, chunk_bytes: int
) -> None:
    """Feed the body to the parser, writing the file part out every ``chunk_bytes`` and at its end."""
    body_bytes = 0
    async for chunk in request.stream():
        if not chunk:
            continue
        # Counted here too: a body without Content-Length (chunked) must not be unbounded either.
        body_bytes += len(chunk)
        if body_bytes > max_bytes + MULTIPART_OVERHEAD_BYTES:
            raise _too_large(max_bytes)
        try:
            parser.write(chunk)
        except ProblemError:
            raise
        except ValueError as exc:  # python-multipart's parse errors are ValueErrors
            raise field_error(422, FILE_FIELD, f"malformed multipart body: {exc}") from exc
        if state.pending and (len(state.pending) >= chunk_bytes or state.file_done):
            await sink.flush(state)


def _check_complete(parser: MultipartParser, state: _State) -> None:
    """422 unless the body ended cleanly after exactly one non-empty ``file`` part."""
    try:
        parser.finalize()
    except ValueError as exc:
        raise field_error(422, FILE_FIELD, f"malformed multipart body: {exc}") from exc
    if not state.file_seen:
        raise field_error(422, FILE_FIELD, "missing the 'file' part")
    if not state.file_done:
        raise field_error(422, FILE_FIELD, "the multipart body ended inside the 'file' part")
    if state.size == 0:
        raise field_error(422, FILE_FIELD, "the file is empty")


async def receive_upload(
    request: Request,
    *,
    storage: Storage,
    relative_dir: str,
    stem: str,
    allowed: tuple[str, ...],
    max_bytes: int,
    chunk_bytes: int,
) -> StoredUpload:
    """Stream the multipart ``file`` part of ``request`` to the key ``relative_dir/<stem><suffix>``.

    Raises ProblemError: 415 (not multipart, or a suffix outside ``allowed``), 413 (over ``max_bytes``),
    422 (no/empty/duplicate ``file`` part, malformed body); StorageError when the store fails. Nothing
    is kept after an error.
    """
    boundary = _multipart_boundary(request, max_bytes)
    state = _State(max_bytes=max_bytes, allowed=allowed)
    parser = _parser(boundary, state)
    sink = _Sink(storage, f"{relative_dir}/{stem}")
    try:
        await _stream_body(request, parser, state, sink, max_bytes=max_bytes, chunk_bytes=chunk_bytes)
        _check_complete(parser, state)
        out = sink.open(state.suffix)
        if state.pending:
            await sink.flush(state)
        await run_in_threadpool(out.commit)
    except ClientDisconnect as exc:
        await _abort(sink.out)
        # Nobody reads this answer; it keeps an aborted upload out of the 5xx counts.
        raise ProblemError(
            400, "the client disconnected during the upload", slug="client-disconnected"
        ) from exc
    except BaseException:
        await _abort(sink.out)
        raise
    return StoredUpload(
        filename=state.filename,
        relative_path=f"{relative_dir}/{stem}{state.suffix}",
        size=state.size,
        sha256=sink.hasher.hexdigest(),
    )
