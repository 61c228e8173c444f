"""Seconds per upload check: forked from the validation zygote against a fresh interpreter per check.

    .venv/bin/python bench/validation_speed.py [--checks 8] [--n 300]

Both run the same child code (``worker.validation_sandbox.child_main``) on the same digits npz under
the same limits; the baseline starts ``python`` for every check, as the worker did before the zygote.
The zygote's own start (once per worker process) is printed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.validation_sandbox import SandboxLimits, run_check  # noqa: E402
from worker.validation_zygote import shared_zygote  # noqa: E402

LIMITS = SandboxLimits(memory_bytes=2 * 1024**3, cpu_seconds=120, wall_seconds=300)


def _digits_npz(path: Path, n: int) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images[:n] * 16).clip(0, 255).astype(np.uint8)
    np.savez(path, images=images, labels=d.target[:n])


def _fresh_interpreter_check(path: Path, tmp: Path) -> float:
    result = tmp / "fresh.json"
    argv = ["dataset", str(path), "{}", str(result), str(LIMITS.memory_bytes), str(LIMITS.cpu_seconds)]
    code = "import os, sys; from worker.validation_sandbox import child_main; child_main(sys.argv[1:])"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *argv, str(os.getpid())], check=True, env=env)
    elapsed = time.perf_counter() - started
    assert json.loads(result.read_text())["ok"]
    return elapsed


def _zygote_check(path: Path) -> float:
    started = time.perf_counter()
    outcome = run_check("dataset", path, {}, limits=LIMITS)
    elapsed = time.perf_counter() - started
    assert outcome.facts is not None, outcome.reason
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=8)
    parser.add_argument("--n", type=int, default=300, help="images in the checked npz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "digits.npz"
        _digits_npz(data, args.n)
        cold = _zygote_check(data)  # starts the zygote
        zygote = [_zygote_check(data) for _ in range(args.checks)]
        fresh = [_fresh_interpreter_check(data, tmp) for _ in range(args.checks)]
        shared_zygote().close()
    z, f = statistics.median(zygote), statistics.median(fresh)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.checks} checks of a {args.n}-image npz each way")
    print(f"first check (starts the zygote)      {cold:6.2f} s")
    print(f"forked from the zygote, median       {z:6.2f} s")
    print(f"fresh interpreter per check, median  {f:6.2f} s")
    print(f"ratio fresh / zygote                 {f / z:6.1f}x")


if __name__ == "__main__":
    main()
