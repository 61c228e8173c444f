"""What the sync and async clients share besides the routes: retry timing, the hashing upload reader,
the progress bars and the settings read from the environment."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import httpx

from ruc_client.errors import ApiError, ChecksumError, PredictionFailed, RucClientError, retry_after
from ruc_client.models import Job, Prediction

ENV_URL = "RUC_API_URL"
ENV_KEY = "RUC_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
CHUNK_BYTES = 1 << 20


def resolve_settings(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    url = base_url or os.environ.get(ENV_URL) or DEFAULT_URL
    key = api_key or os.environ.get(ENV_KEY)
    if not key:
        raise RucClientError(f"no API key: pass api_key or set {ENV_KEY} (ruc-service keys create NAME)")
    return url.rstrip("/"), key


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for calls that are safe to repeat: ``base_s * 2**attempt`` capped at
    ``cap_s``, or the server's ``Retry-After`` when it sent one (also capped)."""

    attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        after = retry_after(response) if response is not None else None
        if after is not None:
            return min(after, self.cap_s)
        return min(self.base_s * 2**attempt, self.cap_s)


def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise ApiError.from_response(response)
    return response


def settled(prediction: Prediction) -> Prediction | None:
    """A succeeded prediction as is, None while it is queued or running; PredictionFailed otherwise."""
    if prediction.status == "succeeded":
        return prediction
    if prediction.finished:
        raise PredictionFailed(prediction)
    return None


def _bar(**kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


class HashingReader(io.RawIOBase):
    """A binary file seen through ``read``: hashes (sha256) and counts what the upload streams.
    httpx seeks to 0 before sending a file; that restarts the hash, so a re-sent body is hashed once."""

    def __init__(self, raw: BinaryIO, *, name: str, progress: bool) -> None:
        super().__init__()
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = _length(raw)
        self._bar = _bar(
            total=self.size, unit="B", unit_scale=True, desc=f"upload {name}", disable=not progress
        )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self._raw.seek(offset, whence)
        if position == 0:
            self._sha = hashlib.sha256()
            self._bar.reset(total=self.size)
        return position

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        self._sha.update(chunk)
        self._bar.update(len(chunk))
        return chunk

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        self._bar.close()
        super().close()


def _length(raw: BinaryIO) -> int:
    offset = raw.tell()
    end = raw.seek(0, io.SEEK_END)
    raw.seek(offset)
    return end - offset


def open_upload(file: str | Path | bytes | BinaryIO, filename: str | None) -> tuple[BinaryIO, str, bool]:
    """(binary stream, file name sent, whether we opened it and must close it)."""
    if isinstance(file, bytes):
        return io.BytesIO(file), filename or "upload.bin", True
    if isinstance(file, str | Path):
        path = Path(file)
        return open(path, "rb"), filename or path.name, True  # noqa: SIM115 - closed by the caller
    return file, filename or Path(str(getattr(file, "name", "upload.bin"))).name, False


def prediction_body(
    file: str | Path | bytes | BinaryIO | None, filename: str | None, dataset_id: str | None
) -> tuple[dict[str, Any], BinaryIO | None]:
    """httpx ``post`` keywords of a prediction request and the file to close after it (None: nothing
    to close): the images of ``file`` as multipart, or the JSON ``{"dataset_id": ...}``."""
    if (file is None) == (dataset_id is None):
        raise RucClientError(
            "a prediction takes either a file of images or a dataset_id, not both or neither"
        )
    if dataset_id is not None:
        return {"json": {"dataset_id": dataset_id}}, None
    assert file is not None
    raw, name, owned = open_upload(file, filename)
    return {"files": {"file": (name, raw, "application/octet-stream")}}, raw if owned else None


def verify_upload(what: str, sent: HashingReader, server_sha256: str) -> None:
    if sent.hexdigest() != server_sha256:
        raise ChecksumError(what, server_sha256, sent.hexdigest())


class ArtifactSink:
    """Writes a download to ``<dest>.part``, hashing it; ``finish`` checks the sha256 and renames."""

    def __init__(self, dest: Path, *, name: str, size: int, progress: bool) -> None:
        self.dest = dest
        self.part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(self.part, "wb")  # noqa: SIM115 - closed in finish/abort
        self._sha = hashlib.sha256()
        self._bar = _bar(total=size, unit="B", unit_scale=True, desc=f"download {name}", disable=not progress)

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._sha.update(chunk)
        self._bar.update(len(chunk))

    def finish(self, expected_sha256: str) -> Path:
        self._file.close()
        self._bar.close()
        actual = self._sha.hexdigest()
        if actual != expected_sha256:
            self.part.unlink(missing_ok=True)
            raise ChecksumError(f"artifact {self.dest.name}", expected_sha256, actual)
        os.replace(self.part, self.dest)
        return self.dest

    def abort(self) -> None:
        self._file.close()
        self._bar.close()
        self.part.unlink(missing_ok=True)


class JobBar:
    """A live bar of one job: overall progress in percent (tqdm's ETA comes from its rate), the stage
    as description and ``epoch i/N`` as postfix."""

    def __init__(self, job_id: str, *, enabled: bool) -> None:
        self._bar = _bar(
            total=100,
            desc=job_id,
            disable=not enabled,
            bar_format="{desc} |{bar}| {percentage:3.0f}%{postfix} [{elapsed}<{remaining}]",
        )

    def update(self, job: Job) -> None:
        target = round(100 * job.progress, 1)
        if target > self._bar.n:
            self._bar.update(target - self._bar.n)
        self._bar.set_description_str(job.stage or job.status, refresh=False)
        epoch = f" epoch {job.epoch or 0}/{job.total_epochs}" if job.total_epochs else ""
        self._bar.set_postfix_str(f"{job.status}{epoch}", refresh=True)

    def close(self) -> None:
        self._bar.close()
