"""A worker with RUC_WORKER_DEVICES=cpu:2 runs a job on two gloo ranks end to end (DB, lease, storage)."""

from __future__ import annotations

import argparse

import pytest
import torch
from test_worker_parts import _blobs_npz, _job_with_dataset, settings  # noqa: F401 (fixture)

from cli.commands.worker import run as worker_cli
from service.db.crud import job_runs
from service.db.session import session_scope
from service.settings import Settings


def test_a_two_rank_worker_runs_a_job_to_success_and_reports_its_devices(settings: Settings) -> None:  # noqa: F811
    from worker.job_runner import run_job_delivery

    job_id = _job_with_dataset(settings, _blobs_npz())
    two = settings.model_copy(update={"worker_devices": "cpu:2"})
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # one per rank
    try:
        assert run_job_delivery(job_id, settings=two, owner="w1") == "succeeded"
    finally:
        torch.set_num_threads(before)
    with session_scope() as s:
        job = job_runs.get_job(s, job_id)
    assert job is not None and job.status == "succeeded" and job.epoch == 3
    assert job.result is not None
    assert (job.result["world_size"], job.result["devices"], job.result["device"]) == (
        2,
        ["cpu", "cpu"],
        "cpu",
    )
    assert [e["epoch"] for e in job.result["per_epoch"]] == [1, 2, 3]
    assert job.result["refined"]["acc"] is not None


def test_worker_cli_refuses_several_devices_with_concurrency_above_one() -> None:
    args = argparse.Namespace(devices="cuda:0,cuda:1", concurrency=2, queues="gpu")
    with pytest.raises(SystemExit, match="--concurrency 1"):
        worker_cli(args)
