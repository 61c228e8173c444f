"""The levers of the RUC epoch, one row each, for bench/ruc_epoch.py --levers.

Each row is one RUC epoch (train_ruc's own per-epoch time) run in a child process of its own, so
its peak RSS is its own; the first row is the baseline the others are divided by, measured in the
same run. Rows of the float32 family: NCHW (the CPU default before these levers), channels_last
(the default now), channels_last + BatchNorm folding of the label-guessing forwards, channels_last
+ refine.interleave. The bf16 family: channels_last + bf16 (the default on CPUs with native bf16),
+ folding, + interleave. The floor (bench/ruc_epoch.py's
replay of the sequential passes, extrapolated from --variant-steps steps) is measured in the same
child for the row's arithmetic, so ratio < 1 means the row does less work than the sequential floor.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import torch

from core.ruc import PerfOptions

FP32, BF16 = torch.float32, torch.bfloat16
LEVERS: dict[str, tuple[PerfOptions, bool]] = {  # name: (arithmetic, refine.interleave)
    "fp32 NCHW": (PerfOptions(channels_last=False, autocast_dtype=FP32, fold_batchnorm=False), False),
    "fp32 channels_last": (PerfOptions(channels_last=True, autocast_dtype=FP32, fold_batchnorm=False), False),
    "fp32 channels_last+fold": (
        PerfOptions(channels_last=True, autocast_dtype=FP32, fold_batchnorm=True),
        False,
    ),
    "fp32 channels_last+interleave": (
        PerfOptions(channels_last=True, autocast_dtype=FP32, fold_batchnorm=False),
        True,
    ),
    "bf16 channels_last": (PerfOptions(channels_last=True, autocast_dtype=BF16, fold_batchnorm=False), False),
    "bf16 channels_last+fold": (
        PerfOptions(channels_last=True, autocast_dtype=BF16, fold_batchnorm=True),
        False,
    ),
    "bf16 channels_last+interleave": (
        PerfOptions(channels_last=True, autocast_dtype=BF16, fold_batchnorm=False),
        True,
    ),
}


def lever_names(choice: str) -> list[str]:
    """The rows of family ``choice`` (fp32, bf16), or the comma list ``choice`` of row names."""
    if choice in ("fp32", "bf16"):
        return [name for name in LEVERS if name.startswith(choice + " ")]
    names = [name.strip() for name in choice.split(",")]
    unknown = [name for name in names if name not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown lever rows {unknown}; choose from {list(LEVERS)}")
    return names


def run_rows(argv: list[str], names: list[str]) -> list[dict[str, Any]]:
    """Each lever in a fresh interpreter (``argv`` plus --lever-row NAME); prints and returns the rows."""
    rows: list[dict[str, Any]] = []
    for name in names:
        cmd = [sys.executable, *argv, "--lever-row", name]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        base = rows[0] if rows else row
        row["vs_baseline_wall"] = row["epoch_s"] / base["epoch_s"]
        row["vs_baseline_cpu"] = row["cpu_s"] / base["cpu_s"]
        rows.append(row)
        print(
            f"[lever {name}] RUC epoch {row['epoch_s']:.2f} s, CPU {row['cpu_s']:.1f} s"
            f" | floor {row['floor_s']:.2f} s, ratio {row['epoch_s'] / row['floor_s']:.3f}"
            f" | vs {names[0]}: wall {row['vs_baseline_wall']:.3f}, CPU {row['vs_baseline_cpu']:.3f}"
            f" | peak RSS {row['peak_rss_mb']:.0f} MB | load {row['load']}",
            flush=True,
        )
    return rows
