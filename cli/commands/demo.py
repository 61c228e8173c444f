"""``ruc-service demo``: the whole service on scikit-learn's digits, through its HTTP API.

Starts the embedded stack (as ``up``) on a free port in a temporary (or given) data directory,
creates a key, uploads the 1,797 8x8 digits as an npz with labels, waits for ``ready``, submits a
refinement job sized for a few minutes on 2 CPU cores, draws its progress, prints base vs refined
ACC / NMI / ARI / ECE and adversarial accuracy, and stops the stack.
"""

from __future__ import annotations

import argparse
import io
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cli.stack import EmbeddedStack, free_port
from ruc_client import Client

JOB_TIMEOUT_SECONDS = 20 * 60
UPLOAD_TIMEOUT_SECONDS = 300

# What a new user sets: K, a seed, a budget in epochs and (for CPU time) a small backbone; everything
# else is the service's default, as in tests/core/test_digits.py (which checks 3 seeds). Plus FGSM
# and BIM at two radii. About 3 minutes on 2 quiet AVX2 CPU cores (1 with AVX512-BF16).
DEMO_SPEC: dict[str, Any] = {
    "num_clusters": 10,
    "seed": 0,
    "base": {"backbone": "small_cnn"},
    "refine": {"epochs": 30},
    "evaluate": {
        "attacks": [{"kind": "fgsm", "eps": [2 / 255, 8 / 255]}, {"kind": "bim", "eps": [2 / 255, 8 / 255]}],
        "attack_max_samples": 500,
    },
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the service on scikit-learn's digits and show base vs refined")
    p.add_argument(
        "--data-dir", type=Path, default=None, help="default: a temporary folder, removed afterwards"
    )
    default_epochs = DEMO_SPEC["refine"]["epochs"]
    p.add_argument("--epochs", type=int, default=None, help=f"RUC epochs (default {default_epochs})")
    p.set_defaults(func=run)


def digits_npz() -> bytes:
    """The digits as the service's npz: images uint8 (1797, 8, 8, 1) scaled from 0..16 to 0..255, labels."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=d.target.astype(np.int64))
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _robustness_rows(result: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(label, base, refined) accuracy under each attack and eps, from ``result['robustness']``:
    ``{"base": {"clean_accuracy", "attacks": [{"kind", "eps", "steps", "accuracy"}]}, "refined": ...}``."""
    rob = result.get("robustness") or {}
    per_model: dict[str, dict[str, Any]] = {}
    for model in ("base", "refined"):
        block = rob.get(model) or {}
        flat: dict[str, Any] = {}
        if "clean_accuracy" in block:
            flat[f"clean acc (n={rob.get('num_samples', '?')})"] = block["clean_accuracy"]
        for attack in block.get("attacks") or []:
            steps = f", {attack['steps']} steps" if attack.get("steps") else ""
            label = f"{str(attack['kind']).upper()} eps={float(attack['eps']) * 255:.0f}/255{steps}"
            flat[label] = attack.get("accuracy")
        per_model[model] = flat
    labels = list(dict.fromkeys([*per_model["base"], *per_model["refined"]]))
    return [(label, per_model["base"].get(label), per_model["refined"].get(label)) for label in labels]


def results_table(result: dict[str, Any]) -> str:
    base, refined = result.get("base") or {}, result.get("refined") or {}
    rows: list[tuple[str, Any, Any]] = [
        (name.upper(), base.get(name), refined.get(name)) for name in ("acc", "nmi", "ari", "ece")
    ]
    rows += _robustness_rows(result)
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'metric':<{width}}{'base':>10}{'refined':>10}", "-" * (width + 20)]
    lines += [f"{name:<{width}}{_fmt(b):>10}{_fmt(r):>10}" for name, b, r in rows]
    clean = (result.get("clean_set") or {}).get("initial") or {}
    if clean:
        lines.append("")
        stats = ", ".join(f"{k}={_fmt(clean.get(k))}" for k in ("size", "precision", "recall", "f1"))
        lines.append(f"initial clean set: {stats}")
    return "\n".join(lines)


def drive(
    base_url: str,
    key: str,
    spec: dict[str, Any],
    *,
    data: bytes | None = None,
    filename: str = "digits.npz",
    out: Any = sys.stdout,
) -> dict[str, Any]:
    """Upload ``data`` (default: digits), wait for ready, run the job with live progress; returns the
    result JSON."""
    with Client(base_url, key) as client:
        dataset = client.upload_dataset(digits_npz() if data is None else data, filename=filename)
        print(f"uploaded dataset {dataset.id} ({dataset.size} bytes, sha256 verified)", file=out)
        dataset = client.wait_dataset(dataset.id, timeout_s=UPLOAD_TIMEOUT_SECONDS)
        if dataset.status != "ready":
            raise RuntimeError(f"dataset is {dataset.status}: {dataset.reason}")
        print(f"dataset ready: {dataset.facts}", file=out)
        job = client.submit_job({**spec, "dataset_id": dataset.id})
        print(f"submitted job {job.id}", file=out, flush=True)
        started = time.monotonic()
        job = client.wait(job.id, timeout_s=JOB_TIMEOUT_SECONDS)
        if job.status != "succeeded":
            raise RuntimeError(f"job {job.status}: {job.error}")
        result = client.get_result(job.id)
        names = [a.name for a in client.list_artifacts(job.id)]
        print(f"job succeeded in {time.monotonic() - started:.0f} s; artifacts: {', '.join(names)}", file=out)
        return result


def run(args: argparse.Namespace) -> int:
    temp = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="ruc-demo-")) if temp else Path(args.data_dir)
    spec = {**DEMO_SPEC, "refine": {**DEMO_SPEC["refine"]}}
    if args.epochs is not None:
        spec["refine"]["epochs"] = args.epochs
    stack = EmbeddedStack(port=free_port(), data_dir=data_dir, log_dir=data_dir / "logs")
    print(f"starting the embedded service in {data_dir} ...", flush=True)
    code = 0
    # SIGTERM (timeout, a supervisor, `kill`) stops the demo as Ctrl-C does: the stack is stopped and
    # the temporary data dir removed, instead of leaving a worker in Celery's warm shutdown.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        stack.wait_ready()
        key = stack.create_key("demo")
        print(f"service up at {stack.url}", flush=True)
        result = drive(stack.url, key, spec)
        print()
        print(results_table(result))
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        code = 130
    except Exception as exc:
        print(f"\ndemo failed: {type(exc).__name__}: {exc} (logs in {data_dir / 'logs'})", flush=True)
        code = 1
        temp = False
    finally:
        signal.signal(signal.SIGTERM, previous)
        stack.stop()
        if temp:
            shutil.rmtree(data_dir, ignore_errors=True)
    return code


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt
