"""Augmentation speed: milliseconds per batch for each recipe's strong and weak view.

Prints, for each recipe in ``core.augment.RECIPES`` and each view, the median over ``--repeats``
timed calls (after one warm-up) on a (B, C, H, W) float batch in [0, 1], and the images/s that
gives. On CUDA the timings synchronise the device before and after each call.

Usage: ``PYTHONPATH=$PWD .venv/bin/python bench/augment_speed.py [--batch 200] [--size 32]
[--channels 3] [--repeats 20] [--device cpu] [--threads N]``. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from core.augment import RECIPES, strong_view, weak_view


def _time(fn: Callable[[], torch.Tensor], *, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    x = torch.rand(
        args.batch, args.channels, args.size, args.size, generator=torch.Generator().manual_seed(0)
    )
    x = x.to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    shape = f"{args.batch}x{args.channels}x{args.size}x{args.size}"
    print(f"device {dev}, threads {torch.get_num_threads()}, batch {shape}, median of {args.repeats}")
    print(f"{'recipe':<10} {'view':<7} {'ms/batch':>9} {'images/s':>10}")
    for recipe in RECIPES:
        views = {
            "strong": lambda r=recipe: strong_view(x, recipe=r, n=2, m=2, generator=gen),
            "weak": lambda r=recipe: weak_view(x, recipe=r, generator=gen),
        }
        for view, fn in views.items():
            sec = _time(fn, repeats=args.repeats, device=dev)
            print(f"{recipe:<10} {view:<7} {sec * 1e3:>9.2f} {args.batch / sec:>10.0f}")


if __name__ == "__main__":
    main()
