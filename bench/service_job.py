"""A whole refinement job through the embedded service, with each stage's seconds.

Starts the embedded stack (SQLite + file broker, an API and the workers as children, as ``ruc-service
demo`` does), uploads a synthetic data set of N colour images with labels, runs one job and prints
the upload, validation and job wall times and the job's own stage timings (base clustering,
sampling, refining, evaluating). The worker uses CUDA when it sees a GPU, else the CPU.

    .venv/bin/python bench/service_job.py --n 50000 --backbone resnet18_cifar --epochs 2

The images are 10 classes of smooth random colour patterns (a 4x4x3 template per class, upsampled
to the image size) with per-image brightness shifts and pixel noise: structured enough that
k-means on pixels finds part of it, so the base and refined figures mean something.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from summary import add_summary_argument, write_summary

from cli.commands.demo import drive
from cli.stack import EmbeddedStack, free_port

CHUNK = 5_000


def synthetic_images(n: int, size: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, size, size, 3) images and int64 labels, generated in chunks (bounded memory)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(70, 185, size=(classes, 4, 4, 3)).astype(np.float32)
    reps = size // 4
    templates = coarse.repeat(reps, axis=1).repeat(reps, axis=2)
    labels = rng.integers(0, classes, n).astype(np.int64)
    images = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, CHUNK):
        part = labels[start : start + CHUNK]
        shift = rng.normal(0, 30, size=(len(part), 1, 1, 1)).astype(np.float32)
        noise = rng.normal(0, 70, size=(len(part), size, size, 3)).astype(np.float32)
        images[start : start + len(part)] = np.clip(templates[part] + shift + noise, 0, 255).astype(np.uint8)
    return images, labels


def npz_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    return buf.getvalue()


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "num_clusters": args.classes,
        "seed": 0,
        "base": {"backbone": args.backbone, **({"fit_epochs": args.fit_epochs} if args.fit_epochs else {})},
        "refine": {"epochs": args.epochs},
        "evaluate": {
            "attacks": [{"kind": "fgsm", "eps": [8 / 255]}],
            "attack_max_samples": args.attack_samples,
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=32, help="image side (a multiple of 4)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--backbone", default="resnet18_cifar")
    ap.add_argument("--epochs", type=int, default=2, help="RUC epochs")
    ap.add_argument("--fit-epochs", type=int, default=None, help="base network epochs (default: the spec's)")
    ap.add_argument("--attack-samples", type=int, default=1000)
    add_summary_argument(ap)
    args = ap.parse_args()

    t0 = time.perf_counter()
    data = npz_bytes(*synthetic_images(args.n, args.size, args.classes))
    make_s = time.perf_counter() - t0
    print(f"data: {args.n} x {args.size}x{args.size}x3, {len(data) / 1e6:.1f} MB npz, made in {make_s:.1f} s")
    with tempfile.TemporaryDirectory(prefix="ruc-bench-") as tmp:
        stack = EmbeddedStack(port=free_port(), data_dir=Path(tmp), log_dir=Path(tmp) / "logs")
        t0 = time.perf_counter()
        try:
            stack.start()
            stack.wait_ready()
            up_s = time.perf_counter() - t0
            key = stack.create_key("bench")
            t0 = time.perf_counter()
            result = drive(stack.url, key, job_spec(args), data=data, filename="synthetic.npz")
            total_s = time.perf_counter() - t0
        except Exception:
            print(f"logs in {tmp}/logs:", file=sys.stderr)
            for log in sorted((Path(tmp) / "logs").glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            stack.stop()
    stages = {k: float(v) for k, v in result["timings"].items()}
    print(f"stack up in {up_s:.1f} s; upload + validation + job {total_s:.1f} s on {result['device']}")
    for stage, secs in stages.items():
        print(f"  {stage:16s} {secs:8.2f} s")
    base, refined = result["base"], result["refined"]
    print(f"base acc {base['acc']:.3f} ece {base['ece']:.3f}", end=" -> ")
    print(f"refined acc {refined['acc']:.3f} ece {refined['ece']:.3f}")
    write_summary(
        args.summary,
        "service_job",
        {
            "n": args.n,
            "backbone": args.backbone,
            "epochs": args.epochs,
            "device": result["device"],
            "stack_up_s": round(up_s, 2),
            "upload_validate_job_s": round(total_s, 2),
            "stages_s": stages,
            "base": {"acc": base["acc"], "ece": base["ece"]},
            "refined": {"acc": refined["acc"], "ece": refined["ece"]},
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
