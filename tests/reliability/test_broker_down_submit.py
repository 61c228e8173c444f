"""A submit while the broker (the suite's own redis-server) is down is refused with a 503 problem; the same
request with the same Idempotency-Key, once the broker is back, gives the same job, which a real worker
runs to ``succeeded``."""

from __future__ import annotations

import re
import time
import uuid

from integration_support import Services, get_job, small_spec, wait_job_finished
from private_instances import PrivateRedis


def test_a_submit_refused_while_the_broker_is_down_runs_after_a_retry(
    fault_stack: Services, fault_dataset: str, own_redis: PrivateRedis
) -> None:
    spec = small_spec(fault_dataset, epochs=2)
    headers = {"Idempotency-Key": f"broker-down-{uuid.uuid4().hex[:8]}"}
    with fault_stack.client() as client:
        own_redis.stop()
        try:
            t0 = time.monotonic()
            refused = client.post("/v1/jobs", json=spec, headers=headers)
            refused_seconds = time.monotonic() - t0
            named = re.search(r"\bjob (job_\w+)", refused.json().get("detail", ""))
            unsent = get_job(client, named[1]) if named else None
        finally:
            own_redis.start()
        back = time.monotonic()
        retried = client.post("/v1/jobs", json=spec, headers=headers)
        assert retried.status_code == 202, retried.text
        job = wait_job_finished(client, retried.json()["id"], 120)
        ran_seconds = time.monotonic() - back
        replay = client.post("/v1/jobs", json=spec, headers=headers)
        listed = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    print(f"503 after {refused_seconds:.2f} s with the broker down")
    print(f"retried once it was back: {job['status']} {ran_seconds:.1f} s later, attempts {job['attempts']}")

    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    body = refused.json()
    assert body["status"] == 503 and body["code"] == "broker-unavailable", body
    assert int(refused.headers["Retry-After"]) > 0
    assert "Idempotency-Key" in body["detail"] and str(own_redis.port) not in refused.text
    assert refused_seconds < 5, refused_seconds  # a dead broker does not hang the request

    # The 503 names the job it stored as unsent; the retry answers with that job and queues it.
    assert unsent is not None and unsent["status"] == "failed", (body, unsent)
    assert unsent["error_code"] == "broker_unavailable", unsent
    job_id = retried.json()["id"]
    assert job_id == unsent["id"]
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["error"] is None, job
    assert replay.status_code == 202 and replay.json()["id"] == job_id
    assert replay.json()["status"] == "succeeded"
    assert sum(1 for j in listed if j["id"] == job_id) == 1
