"""Request bodies are capped on the receive stream, after authentication, on a real uvicorn server.

A chunked body (no Content-Length) bigger than ``RUC_MAX_BODY_BYTES`` gets a 413 problem document
before it is buffered, and the API's resident memory stays flat; without a valid key the body is
never read at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_server import LiveServer, live_server, rss_peak

from service.db.crud.api_keys import create_key
from service.db.session import session_scope

MiB = 1024**2
BODY_BYTES = 200 * MiB
# The API holds at most a few receive chunks of the body; everything above this is buffering.
RSS_GROWTH_LIMIT = 40 * MiB


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    """A fresh server per test: freed heap is not given back to the OS, so RSS is compared per process."""
    with session_scope(sqlite_url) as session:
        key = create_key(session, "body-limit")[1]
    data_dir = tmp_path / "live"
    env = {"RUC_DATA_DIR": str(data_dir), "RUC_DATABASE_URL": sqlite_url, "RUC_BROKER_URL": "filesystem://"}
    with live_server(env, data_dir / "logs") as srv:
        yield srv, key


def _chunks(total: int, size: int = MiB) -> Iterator[bytes]:
    chunk = b" " * size  # JSON whitespace: a parser would keep reading
    for _ in range(total // size):
        yield chunk


def _post_chunked(
    srv: LiveServer, path: str, headers: dict[str, str]
) -> tuple[httpx.Response, dict[str, int]]:
    with rss_peak(srv.pid) as rss, httpx.Client(base_url=srv.base_url, timeout=60) as client:
        r = client.post(
            path, content=_chunks(BODY_BYTES), headers={"content-type": "application/json", **headers}
        )
    return r, rss


def test_chunked_oversize_body_is_413_and_memory_stays_flat(server: tuple[LiveServer, str]) -> None:
    srv, key = server
    path = "/v1/jobs"
    r, rss = _post_chunked(srv, path, {"Authorization": f"Bearer {key}"})
    growth = rss["peak"] - rss["before"]
    print(
        f"{path}: chunked {BODY_BYTES / MiB:.0f} MiB -> {r.status_code}; API RSS "
        f"{rss['before'] / MiB:.0f} -> peak {rss['peak'] / MiB:.0f} MiB (+{growth / MiB:.1f})"
    )
    assert r.status_code == 413, r.text[:300]
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "payload-too-large" and "RUC_MAX_BODY_BYTES" in body["detail"]
    assert growth < RSS_GROWTH_LIMIT, f"API RSS grew by {growth / MiB:.0f} MiB"
    assert httpx.get(f"{srv.base_url}/healthz", timeout=5).status_code == 200


def test_unauthenticated_body_is_never_read(server: tuple[LiveServer, str]) -> None:
    srv, _key = server
    r, rss = _post_chunked(srv, "/v1/jobs", {"Authorization": "Bearer ruc_not-a-key"})
    growth = rss["peak"] - rss["before"]
    print(
        f"unauthenticated: chunked {BODY_BYTES / MiB:.0f} MiB -> {r.status_code}; "
        f"API RSS +{growth / MiB:.1f} MiB"
    )
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert growth < RSS_GROWTH_LIMIT, f"API RSS grew by {growth / MiB:.0f} MiB"


def test_declared_oversize_body_and_small_chunked_body(server: tuple[LiveServer, str]) -> None:
    srv, key = server
    auth = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    # Content-Length over the cap: refused from the headers, on any route, the body unread.
    for path in ("/v1/jobs", "/v1/jobs/job_01jd5x5c9p2z6mbvyktq65jv87/cancel", "/healthz"):
        r = httpx.post(f"{srv.base_url}{path}", content=b" " * (300 * 1024), headers=auth, timeout=30)
        assert r.status_code == 413 and r.json()["code"] == "payload-too-large", (path, r.text[:200])
    # Chunked but small: parsed and validated as usual (422 names the field).
    r = httpx.post(
        f"{srv.base_url}/v1/jobs",
        content=iter([b'{"dataset_id": "ds_x",', b' "num_clusters": "ten"}']),
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "num_clusters", r.text
