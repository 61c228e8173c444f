"""``bench/gpu_check.sh --cpu-smoke``: the GPU check's every step runs on the CPU at small sizes and
writes its figures, so the script a lent GPU runs (once, on a 15-minute budget) has not rotted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_every_step_at_smoke_sizes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env["PY"] = sys.executable
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["check"]["mode"] == "cpu-smoke"
    steps = {"cuda_tests", "service_job", "ruc_epoch", "kmeans", "preflight"}
    assert set(summary["check"]["steps_s"]) == steps
    job = summary["service_job"]
    assert job["device"] == "cpu" and job["n"] == 300
    assert {"base_clustering", "refining", "evaluating"} <= set(job["stages_s"])
    assert all(0 <= job[side]["acc"] <= 1 for side in ("base", "refined"))
    epoch = summary["ruc_epoch"]
    default = epoch[epoch["default"]]  # the variant train_ruc picks on this CPU
    assert default["epoch_s"] > 0 and default["floor_s"] > 0 and epoch["backbone"] == "small_cnn"
    km = summary["kmeans"]["k10"]
    assert km["core_s"] > 0 and km["sklearn_over_core"] > 0
    pf = summary["preflight"]  # capped below what batch 128 needs: it shrinks, or names the field
    if "refused" not in pf:
        assert pf["shrunk"] and pf["batch_size"] < pf["requested_batch_size"] == 128
        assert 0 < pf["measured_peak_bytes"] <= pf["limit_bytes"] and pf["estimated_peak_bytes"] > 0
    else:
        assert "refine.batch_size" in pf["refused"]
