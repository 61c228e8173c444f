"""Ten SIGKILLs of the gpu worker's whole process group (main process and pool), each in the middle of an
epoch of the same job: every time a fresh worker resumes the job from its last epoch checkpoint, and the
job ends with exactly the result of an uninterrupted run of the same spec, data and seed.

The uninterrupted run is ``core.pipeline.run_job`` (what the worker calls) in a process of the workers'
environment (one thread), started with the job, so it runs while the killed job's leases run out."""

from __future__ import annotations

import copy
import json
import re
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from integration_support import (
    Proc,
    Services,
    get_job,
    job_event_rows,
    small_spec,
    spawn,
    wait_for,
    wait_job_finished,
)

KILLS = 10
# Every attempt runs at least one epoch, so 10 kills need 10; the slack absorbs attempts that run
# two before their kill (short epochs, polled over HTTP).
EPOCHS = 16
# Where in the epoch after a checkpoint the kill lands, as a fraction of the last epoch's duration.
KILL_AT_EPOCH_FRACTION = 0.3
RESUMED = re.compile(r"resumed from epoch (\d+) \(attempt (\d+)\)")


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    """The result without what differs by how it was run: wall-clock measurements (stage timings,
    seconds per epoch), the memory preflight (the worker's measures its process; the reference runs
    without one) and whether the base came from the job's cache (a resumed attempt's did)."""
    out = copy.deepcopy(result)
    out.pop("timings", None)
    out.pop("preflight", None)
    out["base_info"].pop("reused_from_cache", None)
    for row in out["per_epoch"]:
        row.pop("seconds", None)
    return out


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths (``.runs[0].refined.acc``) where two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


# Run in a child process: argv is the spec file, the dataset file, the work folder and the result file.
_UNINTERRUPTED_RUN = """
import json, sys
from pathlib import Path
from core.datasets import load_dataset
from core.pipeline import run_job
from core.spec import JobSpec
from worker.progress import jsonable
spec, data, work, out = map(Path, sys.argv[1:])
job = JobSpec.model_validate_json(spec.read_text())
outcome = run_job(job, load_dataset(data), device="cpu", work_dir=work)
out.write_text(json.dumps(jsonable(outcome.result)))
"""


def _start_uninterrupted(stack: Services, spec: dict[str, Any], content: bytes, tmp: Path) -> Proc:
    """One run of ``spec`` on the npz ``content``, start to end, as the worker stores its result."""
    (tmp / "spec.json").write_text(json.dumps(spec))
    (tmp / "dataset.npz").write_bytes(content)
    files = [str(tmp / name) for name in ("spec.json", "dataset.npz", "work", "result.json")]
    return spawn(
        "uninterrupted", [sys.executable, "-c", _UNINTERRUPTED_RUN, *files], stack.env, stack.log_dir
    )


def _wait_progress_past(client: httpx.Client, job_id: str, epoch: int) -> dict[str, Any]:
    """The job once it finished an epoch after ``epoch`` (a checkpoint past the last kill's)."""

    def progressed() -> dict[str, Any] | None:
        job = get_job(client, job_id)
        assert job["status"] in ("queued", "running"), f"the job ended before all {KILLS} kills: {job}"
        return job if job["status"] == "running" and (job["epoch"] or 0) > epoch else None

    return wait_for(progressed, 120, 0.1, f"job {job_id} to finish an epoch after {epoch}")


def _kill_mid_epoch(
    stack: Services, client: httpx.Client, job_id: str, after: int
) -> tuple[dict, dict, float]:
    """Wait for an epoch past ``after``, SIGKILL the gpu worker part-way into the next, start a new one.

    Returns the job as seen before and right after the kill, and the time of the kill."""
    seen = _wait_progress_past(client, job_id, after)
    rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    time.sleep(KILL_AT_EPOCH_FRACTION * float(rows[-1]["metrics"]["seconds"]))
    worker = stack.workers["gpu"]
    worker.kill_group()  # SIGKILL to the worker and its pool: no cleanup runs
    killed_at = time.time()
    worker.popen.wait(timeout=10)
    at_kill = get_job(client, job_id)
    stack.start_worker("gpu")
    return seen, at_kill, killed_at


def _recovery_phases(events: list[dict[str, Any]], kills: list[float]) -> dict[str, list[float]]:
    """Seconds from each kill to the re-enqueue (the lease lapsed, a sweep ran), from there to training
    again (claim, start of the pool process, resume), and from there to the next kill."""
    times = [(datetime.fromisoformat(e["created_at"]).timestamp(), e["message"]) for e in events]

    def first_after(t: float, message: str) -> float:
        return next(at for at, m in times if at >= t and m == message)

    phases: dict[str, list[float]] = {"to re-enqueue": [], "to training": [], "to next kill": []}
    for i, killed in enumerate(kills):
        requeued = first_after(killed, "worker lost (lease expired); job re-enqueued")
        training = first_after(requeued, "stage refining")
        phases["to re-enqueue"].append(requeued - killed)
        phases["to training"].append(training - requeued)
        if i + 1 < len(kills):
            phases["to next kill"].append(kills[i + 1] - training)
    return phases


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
    with fault_stack.client() as client:
        resp = client.post("/v1/jobs", json=spec)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        reference = _start_uninterrupted(fault_stack, spec, fault_dataset_npz, tmp_path)
        try:
            kill_epochs: list[int] = []
            kill_times: list[float] = []
            for _ in range(KILLS):
                last = kill_epochs[-1] if kill_epochs else 0
                seen, at_kill, killed_at = _kill_mid_epoch(fault_stack, client, job_id, last)
                assert at_kill["status"] == "running" and at_kill["epoch"] >= seen["epoch"], (seen, at_kill)
                kill_epochs.append(at_kill["epoch"])
                kill_times.append(killed_at)
            job = wait_job_finished(client, job_id, 120)
            wall = time.monotonic() - started
            assert reference.popen.wait(timeout=300) == 0, reference.log()[-4000:]
        finally:
            reference.stop()  # a failed test leaves no run behind
        events = job_event_rows(client, job_id)
        rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
        result = client.get(f"/v1/jobs/{job_id}/result").json()["result"]
    expected = json.loads((tmp_path / "result.json").read_text())

    resumes = [(int(m[1]), int(m[2])) for m in (RESUMED.fullmatch(e["message"]) for e in events) if m]
    print(f"kills: {len(kill_epochs)} at epochs {kill_epochs}; attempts: {job['attempts']}")
    print(f"resumed from epochs {[e for e, _ in resumes]} (attempts {[a for _, a in resumes]})")
    for phase, seconds in _recovery_phases(events, kill_times).items():
        print(f"  seconds {phase}: median {statistics.median(seconds):.1f}, max {max(seconds):.1f}")
    print(f"killed job:    {_headline(result)}")
    print(f"uninterrupted: {_headline(expected)}")
    print(f"wall time: {wall:.1f} s")

    assert job["status"] == "succeeded", job
    # Every kill cost exactly one attempt; no duplicate delivery ran it twice at once.
    assert job["attempts"] == KILLS + 1, job
    # Each attempt went on from the checkpoint of the last epoch reported before its kill (or of the
    # one before, had the kill fallen between an epoch's report and its checkpoint): only the epoch in
    # progress was lost, and every kill came after progress past the previous one's epoch.
    assert [a for _, a in resumes] == list(range(2, KILLS + 2)), resumes
    assert all(k - 1 <= r <= k for (r, _), k in zip(resumes, kill_epochs, strict=True)), (
        resumes,
        kill_epochs,
    )
    assert all(b > a for a, b in zip(kill_epochs, kill_epochs[1:], strict=False)), kill_epochs
    # One metrics row per epoch, none duplicated or missing, each the one the result reports.
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), [r["epoch"] for r in rows]
    assert all(r["metrics"].items() <= e.items() for r, e in zip(rows, result["per_epoch"], strict=True))
    # Exact equality (fp32 on the CPU, one thread: a resumed run repeats the same arithmetic).
    assert _differences(_comparable(result), _comparable(expected)) == []
