"""BRB on vs off for DEC and IDEC on scikit-learn's digits, at budgets too long for the test suite.

    .venv/bin/python bench/brb_digits.py --seeds 0,1,2 --pretrain-epochs 100 --epochs 200

Per seed, one autoencoder (DEC's d-500-500-2000-10 by default) is pre-trained and shared by every
arm; each arm then clusters the same number of epochs from a copy of it, BRB off (plain DEC/IDEC)
and on (soft reset every --interval epochs with --alpha, k-means reclustering, centroid momentum
zeroed: BRB's defaults). Prints the Hungarian accuracy of every run, the means per method and arm,
and the wall time. tests/core/test_base_methods.py holds the short-budget comparisons.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from core.clustering.deep_clustering import deep_cluster, pretrain_autoencoder
from core.hooks import RunHooks
from core.metrics import cluster_accuracy
from core.spec import BrbSpec, DeepClusteringSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="dec,idec")
    ap.add_argument("--pretrain-epochs", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--hidden", default="500,500,2000", help="hidden layer widths of the MLP autoencoder")
    ap.add_argument("--interval", type=int, default=20, help="T: epochs between soft resets")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).flatten(1)  # (1797, 64) in [0, 1]
    y = digits.target
    cfg = DeepClusteringSpec(
        pretrain_epochs=args.pretrain_epochs,
        epochs=args.epochs,
        hidden_dims=[int(h) for h in args.hidden.split(",")],
        latent_dim=10,
    )
    arms = {"off": BrbSpec(), "on": BrbSpec(enabled=True, reset_interval=args.interval, alpha=args.alpha)}
    layers = "-".join(["64", *args.hidden.split(","), "10"])
    print(
        f"digits {tuple(x.shape)}, AE {layers}, {args.pretrain_epochs} pre-training + {args.epochs} "
        f"clustering epochs, BRB T={args.interval} alpha={args.alpha}, threads={args.threads}"
    )
    results: dict[tuple[str, str], list[float]] = {}
    t_all = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.perf_counter()
        ae, _ = pretrain_autoencoder(x, cfg, seed=seed, hooks=RunHooks(), total_epochs=1)
        print(f"seed {seed}: pre-training {time.perf_counter() - t0:.0f} s", flush=True)
        for method in args.methods.split(","):
            for arm, brb in arms.items():
                t0 = time.perf_counter()
                probs, _, info = deep_cluster(
                    x, method, cfg, brb, num_clusters=10, seed=seed, pretrained=copy.deepcopy(ae)
                )
                acc = cluster_accuracy(y, probs.argmax(1).numpy(), 10)
                results.setdefault((method, arm), []).append(acc)
                print(
                    f"  {method:5s} BRB {arm:3s} acc {acc:.3f}  resets at {info['brb_resets']}"
                    f"  ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    print("mean accuracy over seeds:")
    for method in args.methods.split(","):
        off, on = np.mean(results[(method, "off")]), np.mean(results[(method, "on")])
        print(f"  {method:5s} off {off:.3f}  on {on:.3f}  (on - off {on - off:+.3f})")
    print(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
