"""Embedded mode: ``ruc-service up`` (SQLite + filesystem broker, workers and API as children) runs a
job end to end, and SIGTERM stops it leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from integration_support import (
    CLI,
    REPO,
    digits_npz,
    free_port,
    get_job,
    small_spec,
    upload,
    wait_for,
    wait_upload,
)


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (from /proc; zombies count as gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_up_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env.update({"RUC_LEASE_SECONDS": "5", "RUC_HEARTBEAT_SECONDS": "1", "OMP_NUM_THREADS": "1"})
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [
                *CLI,
                "up",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
                "--log-dir",
                str(tmp_path / "logs"),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        key_line = wait_for(
            lambda: (
                next((ln for ln in log.read_text().splitlines() if ln.startswith("api key: ")), None)
                or (up.poll() is not None and pytest.fail(f"up exited:\n{log.read_text()}"))
            ),
            120,
            0.3,
            "the bootstrap key",
        )
        key = key_line.split(": ", 1)[1].strip()
        assert (tmp_path / "data" / "ruc.sqlite3").is_file()
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            assert client.get("/readyz").status_code == 200
            ds = wait_upload(
                client, "/v1/datasets", upload(client, "/v1/datasets", "digits.npz", digits_npz())
            )
            assert ds["status"] == "ready", ds
            job_id = client.post("/v1/jobs", json=small_spec(ds["id"], epochs=2)).json()["id"]
            job = wait_for(
                lambda: (j := get_job(client, job_id))["status"] not in ("queued", "running") and j,
                240,
                0.5,
                "the embedded job",
            )
            assert job["status"] == "succeeded", job
            result = client.get(f"/v1/jobs/{job_id}/result").json()["result"]
            assert 0.0 <= result["refined"]["acc"] <= 1.0 and result["refined"]["acc"] > 0.3
        family = descendants(up.pid)
        assert len(family) >= 3, family  # two workers (with their pools) and the API
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            code = up.wait(timeout=40)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in family if alive(p)], "children left behind"


def test_demo_stopped_by_sigterm_mid_job_stops_its_stack_and_cleans_up(tmp_path: Path) -> None:
    """`timeout`, a supervisor or `kill` end the demo as Ctrl-C does: within the stack's grace
    period, exit code 130, no process left, the temporary data dir removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env.update({"OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)})
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            [*CLI, "demo", "--epochs", "30"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    family: set[int] = set()
    try:
        wait_for(
            lambda: (
                "submitted job" in log.read_text(errors="replace")
                or (demo.poll() is not None and pytest.fail(f"demo exited:\n{log.read_text()}"))
            ),
            180,
            0.3,
            "the demo's job",
        )
        family = descendants(demo.pid)
        assert len(family) >= 3, family
        data_dirs = list(tmp_path.glob("ruc-demo-*"))
        assert len(data_dirs) == 1
        demo.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = demo.wait(timeout=60)
        stopped_in = time.monotonic() - started
    finally:
        if demo.poll() is None:
            demo.kill()
    print(f"demo stopped {stopped_in:.1f} s after SIGTERM")
    text = log.read_text(errors="replace")
    assert code == 130 and "interrupted" in text, text[-3000:]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in family if alive(p)], "children left behind"
    assert not data_dirs[0].exists()
