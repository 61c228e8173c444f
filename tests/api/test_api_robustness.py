"""Malformed input of every kind gets a 4xx problem document, never a 500."""

from __future__ import annotations

import re

from api_support import Keys, ready_dataset
from fastapi.testclient import TestClient

from service.settings import Settings

PROBLEM = "application/problem+json"


def test_malformed_requests_never_500(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    h = keys.a
    json_h = {**h, "content-type": "application/json"}
    requests: list[tuple[str, str, dict]] = [
        ("POST", "/v1/jobs", {"content": b"{not json", "headers": json_h}),
        ("POST", "/v1/jobs", {"content": b"[]", "headers": json_h}),
        ("POST", "/v1/jobs", {"content": b"null", "headers": json_h}),
        ("POST", "/v1/jobs", {"content": b"\xff\xfe\x00", "headers": json_h}),
        ("POST", "/v1/jobs", {"json": {"dataset_id": ds, "num_clusters": "ten"}, "headers": h}),
        ("POST", "/v1/jobs", {"json": {"dataset_id": ds, "num_clusters": 10**30}, "headers": h}),
        ("POST", "/v1/jobs", {"json": {"dataset_id": "x" * 10_000, "num_clusters": 2}, "headers": h}),
        ("POST", "/v1/jobs", {"json": {"dataset_id": ds, "num_clusters": 2, "refine": "fast"}, "headers": h}),
        ("POST", "/v1/jobs", {"json": {"dataset_id": ds, "num_clusters": 2, "seed": -1}, "headers": h}),
        (
            "POST",
            "/v1/jobs",
            {"json": {"dataset_id": ds, "num_clusters": 2, "evaluate": {"attacks": [{}]}}, "headers": h},
        ),
        ("POST", "/v1/jobs", {"content": b"x" * 300_000, "headers": json_h}),
        (
            "POST",
            "/v1/jobs",
            {"json": {"dataset_id": ds, "num_clusters": 2}, "headers": {**h, "Idempotency-Key": "k" * 300}},
        ),
        (
            "POST",
            "/v1/jobs",
            {"content": b"a=1", "headers": {**h, "content-type": "application/x-www-form-urlencoded"}},
        ),
        ("GET", "/v1/jobs", {"params": {"limit": "abc"}, "headers": h}),
        ("GET", "/v1/jobs", {"params": {"after": "z" * 500}, "headers": h}),
        ("GET", "/v1/jobs/job_x/events", {"params": {"after": "-5"}, "headers": h}),
        ("GET", "/v1/jobs/%00/events", {"headers": h}),
        ("GET", "/v1/jobs/" + "a" * 5000, {"headers": h}),
        ("DELETE", "/v1/jobs", {"headers": h}),
        ("PUT", "/v1/datasets/ds_x", {"headers": h}),
        ("GET", "/v1/nothing-here", {"headers": h}),
        (
            "POST",
            "/v1/datasets",
            {
                "content": b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
                "headers": {**h, "content-type": "multipart/form-data; boundary=b"},
            },
        ),
        (
            "POST",
            "/v1/datasets",
            {
                "content": b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.npz"\r\n\r\nabc',
                "headers": {**h, "content-type": "multipart/form-data; boundary=b"},
            },
        ),
        (
            "POST",
            "/v1/datasets",
            {"content": b"garbage", "headers": {**h, "content-type": "multipart/form-data"}},
        ),
        (
            "POST",
            "/v1/checkpoints",
            {"files": [("file", ("a.pt", b"1")), ("file", ("b.pt", b"2"))], "headers": h},
        ),
        ("POST", "/v1/jobs/job_x/cancel", {"headers": h}),
        ("GET", "/v1/jobs/job_x/artifacts/..%5C..%5Cx", {"headers": h}),
    ]
    for method, path, kwargs in requests:
        r = client.request(method, path, **kwargs)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
        assert r.headers["content-type"] == PROBLEM, (method, path, r.headers["content-type"])
        body = r.json()
        assert body["status"] == r.status_code and body["title"] and body["type"].startswith("/problems/")


def test_control_characters_in_filenames_are_sanitised(client: TestClient, keys: Keys) -> None:
    r = client.post("/v1/checkpoints", headers=keys.a, files={"file": ("\x00\x01<x>.pt", b"abc")})
    assert r.status_code == 201
    name = r.json()["filename"]
    assert name.endswith(".pt") and re.fullmatch(r"[A-Za-z0-9._ ()+-]+", name), name
