"""Clean-set strategies against base networks of different confidence, on scikit-learn's digits.

For each base setting (k-means on a 50-d PCA of the pixels, a small CNN fitted to its labels for
1, 5 or 30 epochs; and k-means on a SimCLR embedding trained on the images, ``base.pretext``) the
base clustering is computed once; then, per strategy (confidence, metric, hybrid at tau1 = 0.99,
and the default ``auto``), the selected clean set's size, precision and recall, and the same
after the per-cluster fallback (what RUC trains on). Labels are read only to score the sets.
With ``--ruc-epochs E`` each strategy also runs the whole job (RUC with the service's defaults
otherwise) and prints refined accuracy and ECE.

    PYTHONPATH=$PWD python bench/clean_set_rule.py [--knn-k 10 100] [--ruc-epochs 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import digits_arrays  # noqa: E402  (the tests' loader of the digits)

from core.clustering.base import BaseOutput, run_base  # noqa: E402
from core.datasets import ImageDataset  # noqa: E402
from core.metrics import clean_set_quality, cluster_accuracy  # noqa: E402
from core.pipeline import run_job  # noqa: E402
from core.sampling import ensure_clean_per_cluster, select_clean_set  # noqa: E402
from core.spec import AttackSpec, BaseSpec, EvaluateSpec, JobSpec, PretextSpec, RefineSpec  # noqa: E402

SETTINGS = {
    "pca, fit_epochs 1": {"fit_epochs": 1},
    "pca, fit_epochs 5": {"fit_epochs": 5},
    "pca, fit_epochs 30": {"fit_epochs": 30},
    "pretext 20 ep, fit 30": {"fit_epochs": 30, "pretext": PretextSpec(epochs=20)},
}
STRATEGIES = ("confidence", "metric", "hybrid", "auto")


def _spec(base_kw: dict, seed: int, refine: RefineSpec) -> JobSpec:
    return JobSpec(
        dataset_id="digits",
        num_clusters=10,
        seed=seed,
        base=BaseSpec(method="kmeans", backbone="small_cnn", **base_kw),
        refine=refine,
        evaluate=EvaluateSpec(attacks=[AttackSpec(kind="fgsm", eps=[8 / 255])], attack_max_samples=300),
    )


def _fmt(q: dict) -> str:
    p = "  -  " if q["precision"] is None else f"{q['precision']:.3f}"
    r = "  -  " if q["recall"] is None else f"{q['recall']:.3f}"
    return f"{q['size']:5d} {p} {r}"


def _row(base: BaseOutput, y, strategy: str, k: int, spec: RefineSpec) -> tuple[str, str]:
    mask, decision = select_clean_set(
        strategy,
        probs=base.probs,
        pseudo=base.pseudo_labels,
        embedding=base.embedding,
        threshold=spec.confidence_threshold,
        k=k,
        min_fraction=spec.auto_min_fraction,
        cluster_fraction=spec.auto_cluster_fraction,
    )
    fixed, _ = ensure_clean_per_cluster(
        mask,
        base.pseudo_labels,
        base.probs.max(1).values,
        min_per_cluster=1,
        fraction=spec.fallback_fraction,
        num_clusters=10,
    )
    pseudo = base.pseudo_labels.numpy()
    sel = clean_set_quality(mask.numpy(), pseudo, y, 10)
    fin = clean_set_quality(fixed.numpy(), pseudo, y, 10)
    return f"{_fmt(sel)} | {_fmt(fin)}", decision["selected"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--knn-k", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--ruc-epochs", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    images, labels = digits_arrays()
    ds = ImageDataset(images=torch.from_numpy(images), labels=torch.from_numpy(labels))
    print("strategy   k    | selected: size  prec  recall | after fallback: size prec recall | auto chose")
    for name, base_kw in SETTINGS.items():
        t0 = time.perf_counter()
        base = run_base(_spec(base_kw, args.seed, RefineSpec()), ds, device="cpu")
        acc = cluster_accuracy(labels, base.pseudo_labels.numpy(), 10)
        conf = base.probs.max(1).values
        print(
            f"\n== {name}: base acc {acc:.3f}, mean confidence {conf.mean():.3f}, "
            f"share > 0.99 {(conf > 0.99).float().mean():.3f} ({time.perf_counter() - t0:.0f}s)"
        )
        for k in args.knn_k:
            for strategy in STRATEGIES:
                if strategy == "confidence" and k != args.knn_k[0]:
                    continue
                line, chose = _row(base, labels, strategy, k, RefineSpec())
                print(f"{strategy:10s} {k:4d} | {line} | {chose if strategy == 'auto' else ''}")
        if args.ruc_epochs:
            _ruc(ds, base_kw, args)


def _ruc(ds: ImageDataset, base_kw: dict, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in STRATEGIES:
            t0 = time.perf_counter()
            spec = _spec(base_kw, args.seed, RefineSpec(strategy=strategy, epochs=args.ruc_epochs))
            r = run_job(spec, ds, device="cpu", work_dir=Path(tmp) / strategy).result
            print(
                f"  RUC {args.ruc_epochs} epochs, {strategy:10s}: acc {r['base']['acc']:.3f} -> "
                f"{r['refined']['acc']:.3f}, ECE {r['base']['ece']:.3f} -> {r['refined']['ece']:.3f}, "
                f"clean set {r['clean_set']['initial']['size']} "
                f"(collapse signs: {[f['sign'] for f in r['collapse']['fired']] or 'none'}, "
                f"{time.perf_counter() - t0:.0f}s)"
            )


if __name__ == "__main__":
    main()
