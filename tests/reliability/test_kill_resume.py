"""Ten SIGKILLs of the gpu worker's whole process group (main process and pool), each in the middle of an
epoch of the same job: every time a fresh worker resumes the job from its last epoch checkpoint, and the
job ends with exactly the result of an uninterrupted run of the same spec, data and seed.

The uninterrupted run is ``core.pipeline.run_job`` (what the worker calls) in this process, in a thread
while the killed job's leases run out, so it costs no wall time of its own."""

from __future__ import annotations

import copy
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from integration_support import (
    Services,
    get_job,
    job_events,
    small_spec,
    wait_for,
    wait_job_finished,
)

KILLS = 10
# Every attempt runs at least one epoch, so 10 kills need 10; the slack absorbs attempts that run
# two or three before their kill (short epochs, polled over HTTP).
EPOCHS = 24
# Where in the epoch after a checkpoint the kill lands, as a fraction of the last epoch's duration.
KILL_AT_EPOCH_FRACTION = 0.3
RESUMED = re.compile(r"resumed from epoch (\d+) \(attempt (\d+)\)")


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    """The result without what differs by how it was run: wall-clock measurements (stage timings,
    seconds per epoch) and whether the base came from the job's cache (a resumed attempt's did)."""
    out = copy.deepcopy(result)
    out.pop("timings", None)
    out["base_info"].pop("reused_from_cache", None)
    for row in out["per_epoch"]:
        row.pop("seconds", None)
    return out


def _uninterrupted(spec: dict[str, Any], content: bytes, work: Path) -> dict[str, Any]:
    """The result of one run of ``spec`` on the npz ``content``, start to end, as the worker stores it."""
    from core.datasets import load_dataset
    from core.pipeline import run_job
    from core.spec import JobSpec
    from worker.progress import jsonable

    data = work / "dataset.npz"
    data.write_bytes(content)
    outcome = run_job(JobSpec.model_validate(spec), load_dataset(data), device="cpu", work_dir=work / "job")
    return jsonable(outcome.result)


def _wait_progress_past(client: httpx.Client, job_id: str, epoch: int) -> dict[str, Any]:
    """The job once it finished an epoch after ``epoch`` (a checkpoint past the last kill's)."""

    def progressed() -> dict[str, Any] | None:
        job = get_job(client, job_id)
        assert job["status"] in ("queued", "running"), f"the job ended before all {KILLS} kills: {job}"
        return job if job["status"] == "running" and (job["epoch"] or 0) > epoch else None

    return wait_for(progressed, 120, 0.1, f"job {job_id} to finish an epoch after {epoch}")


def _kill_mid_epoch(stack: Services, client: httpx.Client, job_id: str, after: int) -> tuple[dict, dict]:
    """Wait for an epoch past ``after``, SIGKILL the gpu worker part-way into the next, start a new one.

    Returns the job as seen before and right after the kill."""
    seen = _wait_progress_past(client, job_id, after)
    rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    time.sleep(KILL_AT_EPOCH_FRACTION * float(rows[-1]["metrics"]["seconds"]))
    worker = stack.workers["gpu"]
    worker.kill_group()  # SIGKILL to the worker and its pool: no cleanup runs
    worker.popen.wait(timeout=10)
    at_kill = get_job(client, job_id)
    stack.start_worker("gpu")
    return seen, at_kill


def _headline(result: dict[str, Any]) -> str:
    return ", ".join(
        f"{block} " + " ".join(f"{m}={result[block][m]:.4f}" for m in ("acc", "nmi", "ari", "ece"))
        for block in ("base", "refined")
    )


def test_ten_kills_mid_epoch_resume_to_the_uninterrupted_result(
    fault_stack: Services, fault_dataset: str, fault_dataset_npz: bytes, tmp_path: Path
) -> None:
    started = time.monotonic()
    spec = small_spec(fault_dataset, epochs=EPOCHS)
    with fault_stack.client() as client, ThreadPoolExecutor(1) as pool:
        resp = client.post("/v1/jobs", json=spec)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        reference = pool.submit(_uninterrupted, spec, fault_dataset_npz, tmp_path)
        kill_epochs: list[int] = []
        cycle_seconds: list[float] = []
        for _ in range(KILLS):
            t0 = time.monotonic()
            seen, at_kill = _kill_mid_epoch(
                fault_stack, client, job_id, kill_epochs[-1] if kill_epochs else 0
            )
            cycle_seconds.append(time.monotonic() - t0)
            assert at_kill["status"] == "running" and at_kill["epoch"] >= seen["epoch"], (seen, at_kill)
            kill_epochs.append(at_kill["epoch"])
        job = wait_job_finished(client, job_id, 120)
        wall = time.monotonic() - started
        messages = job_events(client, job_id)
        rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
        result = client.get(f"/v1/jobs/{job_id}/result").json()["result"]
        expected = reference.result(timeout=300)

    resumes = [(int(m[1]), int(m[2])) for m in map(RESUMED.fullmatch, messages) if m]
    print(f"kills: {len(kill_epochs)} at epochs {kill_epochs}; attempts: {job['attempts']}")
    print(f"resumed from epochs {[e for e, _ in resumes]} (attempts {[a for _, a in resumes]})")
    print(f"seconds from a (re)start to its kill: {[round(s, 1) for s in cycle_seconds]}")
    print(f"killed job:    {_headline(result)}")
    print(f"uninterrupted: {_headline(expected)}")
    print(f"wall time: {wall:.1f} s")

    assert job["status"] == "succeeded", job
    # Every kill cost exactly one attempt; no duplicate delivery ran it twice at once.
    assert job["attempts"] == KILLS + 1, job
    # Each attempt went on from the checkpoint of the last epoch finished before its kill: only the
    # epoch in progress was lost, and every kill came after progress past the previous checkpoint.
    assert resumes == [(epoch, attempt) for attempt, epoch in enumerate(kill_epochs, start=2)], resumes
    assert all(b > a for a, b in zip(kill_epochs, kill_epochs[1:], strict=False)), kill_epochs
    # One metrics row per epoch, none duplicated or missing, each the uninterrupted run's epoch.
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), [r["epoch"] for r in rows]
    assert [r["metrics"] for r in rows] == result["per_epoch"]
    # Exact equality (fp32 on the CPU, one thread: a resumed run repeats the same arithmetic).
    assert _comparable(result) == _comparable(expected)
