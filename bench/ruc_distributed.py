"""One process vs N processes (gloo, CPU) on the same seeded RUC task: accuracy, ECE, epoch times.

    PYTHONPATH=. python bench/ruc_distributed.py --world 2 --seeds 0 1 2 --epochs 3

Each rank gets ``--threads`` torch threads (default 1, so 2 ranks use 2 cores against 1 for the
single process). Prints one line per seed and world size and the mean |difference|; the tolerance
in tests/core/test_distributed.py comes from these figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from core.clustering.base_steps import fit_base_network
from core.distributed import launched
from core.hooks import RunHooks
from core.ruc import train_ruc
from tests.core.distributed_task import K, acc_ece, images01, make_task, spec


def run(world: int, seeds: list[int], epochs: int) -> dict[int, dict[str, float]]:
    task = make_task()
    out: dict[int, dict[str, float]] = {}
    t0 = time.perf_counter()
    with launched([torch.device("cpu")] * world) as dev:
        up = time.perf_counter() - t0
        for seed in seeds:
            model = make_task().base
            t = time.perf_counter()
            losses = fit_base_network(
                model, images01(task), task.pseudo, epochs=epochs, seed=seed, hooks=RunHooks(), batch_size=40
            )
            fit_s = time.perf_counter() - t
            ruc = train_ruc(
                task.base,
                task.images,
                task.pseudo,
                task.clean,
                spec(epochs),
                num_clusters=K,
                seed=seed,
                device=dev,
            )
            acc, ece = acc_ece(ruc.probs, task.truth)
            secs = [m["seconds"] for m in ruc.per_epoch]
            out[seed] = {
                "acc": acc,
                "ece": ece,
                "fit_loss": losses[-1],
                "fit_s": fit_s,
                "epoch_s": statistics.mean(secs),
            }
            print(
                f"world {world} seed {seed}: acc {acc:.4f} ece {ece:.4f} fit loss {losses[-1]:.4f} "
                f"fit {fit_s:.1f}s epochs {', '.join(f'{s:.2f}' for s in secs)} s (start-up {up:.1f}s)",
                flush=True,
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    one = run(1, args.seeds, args.epochs)
    torch.set_num_threads(args.threads * args.world)  # launched() gives each rank an equal share
    many = run(args.world, args.seeds, args.epochs)
    for key in ("acc", "ece", "fit_loss"):
        diffs = [abs(one[s][key] - many[s][key]) for s in args.seeds]
        print(
            f"{key}: mean |world 1 - world {args.world}| = {statistics.mean(diffs):.4f}, max {max(diffs):.4f}"
        )
    for key in ("epoch_s", "fit_s"):
        a = statistics.mean(one[s][key] for s in args.seeds)
        b = statistics.mean(many[s][key] for s in args.seeds)
        print(f"{key}: world 1 {a:.2f}s, world {args.world} {b:.2f}s, speed-up {a / b:.2f}")


if __name__ == "__main__":
    main()
