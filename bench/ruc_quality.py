"""A Table-2-style ablation of RUC on a labelled data set: mean and std over seeds.

    .venv/bin/python bench/ruc_quality.py digits --seeds 0,1,2 --epochs 10
    .venv/bin/python bench/ruc_quality.py DATASET.npz --seeds 0,1,2 --epochs 30 --num-clusters 10

Every arm is a whole ``run_job`` with the service's defaults (only ``num_clusters``, ``seed``,
``refine.epochs`` and ``base.backbone`` set) plus the one change the arm names. Per seed the base
clustering is computed once and reused by every arm (the pipeline's base cache), so the arms of a
seed refine the same pseudo-labels. Labels are read for the figures only. Prints one row per arm:
accuracy, NMI, ARI, ECE and FGSM accuracy as mean +- std over the seeds, the clean set's size,
precision and recall (Table 3) for the sampling arms, and the wall time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.datasets import ImageDataset, load_dataset
from core.pipeline import run_job
from core.spec import JobSpec

ARMS: dict[str, dict[str, Any]] = {
    "full RUC (defaults)": {},
    "without co-training": {"co_training": False},
    "without label smoothing": {"label_smoothing": 0.0},
    "without MixMatch (L_Xs only)": {"mixmatch": False},
    "without L_Xs (MixMatch only)": {"strong_loss": False},
    "without L_Uhat": {"unlabeled_loss": False},
    "without refurbishing": {"refurbish": False},
    "augmentation: paper": {"augmentation": "paper"},
    "augmentation: reference": {"augmentation": "reference"},
    "clean set: confidence": {"strategy": "confidence"},
    "clean set: metric": {"strategy": "metric"},
    "clean set: hybrid": {"strategy": "hybrid"},
    "clean set: auto": {"strategy": "auto"},
}
FIGURES = ("acc", "nmi", "ari", "ece", "fgsm")


def _digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    return ImageDataset(images=torch.from_numpy(images), labels=torch.from_numpy(d.target.astype(np.int64)))


def _figures(r: dict[str, Any], which: str) -> dict[str, float]:
    rep = r[which]
    attacks = r["robustness"][which]["attacks"]
    return {
        "acc": rep["acc"],
        "nmi": rep["nmi"],
        "ari": rep["ari"],
        "ece": rep["ece"],
        "fgsm": next(a["accuracy"] for a in attacks if a["kind"] == "fgsm"),
    }


def _spec(args: argparse.Namespace, seed: int, refine: dict[str, Any]) -> JobSpec:
    return JobSpec(
        dataset_id="bench",
        num_clusters=args.num_clusters,
        seed=seed,
        base={"backbone": args.backbone},
        refine={"epochs": args.epochs, **refine},
        evaluate={
            "attacks": [{"kind": "fgsm", "eps": [args.eps / 255]}],
            "attack_max_samples": args.attack_samples,
        },
    )


def _row(name: str, runs: list[dict[str, float]], extra: str = "") -> str:
    cells = []
    for key in FIGURES:
        values = [r[key] for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.fmean(values):.3f} +- {sd:.3f}")
    return f"| {name} | " + " | ".join(cells) + f" | {extra} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="'digits' (scikit-learn's, shipped with it) or an .npz/.zip/.tar upload")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--num-clusters", type=int, default=None, help="default: the number of label values")
    ap.add_argument("--backbone", default="small_cnn")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names (default: all)")
    ap.add_argument("--eps", type=float, default=8.0, help="FGSM eps in 1/255")
    ap.add_argument("--attack-samples", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = _digits() if args.dataset == "digits" else load_dataset(Path(args.dataset))
    if ds.labels is None:
        raise SystemExit("the data set has no labels: the ablation's figures need them")
    if args.num_clusters is None:
        args.num_clusters = int(ds.labels.unique().numel())
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a for a in ARMS if a in args.arms.split(",")]
    t0 = time.perf_counter()
    k, e = args.num_clusters, args.epochs
    print(f"{args.dataset}, K={k}, {e} RUC epochs, seeds {args.seeds}\n")
    print("| arm | ACC | NMI | ARI | ECE | FGSM 8/255 | clean set (size, precision, recall) |")
    print("|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, arm in enumerate(arms):  # a row per arm as soon as its seeds are done
            rs = []
            for seed in seeds:
                work = Path(tmp) / f"seed{seed}"  # one base cache per seed, shared by the arms
                rs.append(run_job(_spec(args, seed, ARMS[arm]), ds, device="cpu", work_dir=work).result)
            if i == 0:
                print(_row("base clustering", [_figures(r, "base") for r in rs]), flush=True)
            initial = [r["clean_set"]["initial"] for r in rs]
            clean = (
                f"{statistics.fmean(c['size'] for c in initial):.0f}, "
                f"{statistics.fmean(c['precision'] for c in initial):.3f}, "
                f"{statistics.fmean(c['recall'] for c in initial):.3f}"
            )
            print(_row(arm, [_figures(r, "refined") for r in rs], clean), flush=True)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
