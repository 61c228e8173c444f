"""Auto-K against the truth on scikit-learn's digits: subsets of 4 to 10 classes, several seeds.

    .venv/bin/python bench/autok_digits.py --seeds 0,1,2 [--embedding pca|simclr] [--k-max 20]

Per (number of classes n, seed): the n classes are drawn with numpy's default_rng(seed) (all ten
for n = 10, where seeds differ only in the estimators' sampling), the images of those classes are
embedded (pca: PCA of the pixels to --pca-dim, as base.method kmeans does without an embedding
model; simclr: core.clustering.pretext's SimCLR trained on the subset for --pretext-epochs, its
unit-norm features, as base.pretext does), and core.clustering.autok.estimate_k runs with the
default AutoKSpec (k in [--k-min, --k-max]). Prints each estimator's vote (* = censored, it
abstained), the consensus K and the legacy consensus (the median of all clipped votes, the rule
before censoring) on the same votes; then hit rate (K == truth), mean absolute error and the
censored count per estimator, and hit rate and error of the consensus and the legacy consensus.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from core.clustering.autok import estimate_k
from core.clustering.base import embed_images, pca_features
from core.clustering.pretext import train_simclr
from core.spec import AutoKSpec, PretextSpec


def _embed(x: torch.Tensor, how: str, *, pca_dim: int, pretext_epochs: int, seed: int) -> torch.Tensor:
    """(N, D) features of images x (N, 1, 8, 8) in [0, 1]."""
    torch.manual_seed(seed)
    if how == "pca":
        return pca_features(x, pca_dim)[0]
    model, _ = train_simclr(
        x, PretextSpec(epochs=pretext_epochs, features_dim=64), backbone="small_cnn", seed=seed
    )
    return embed_images(model.eval(), x)


def _summary(name: str, pairs: list[tuple[int, int]], censored: int | None) -> str:
    hits = sum(k == t for k, t in pairs)
    mae = sum(abs(k - t) for k, t in pairs) / len(pairs)
    tail = f"   censored {censored:>2}/{len(pairs)}" if censored is not None else ""
    return f"{name:<18} hit {hits:>2}/{len(pairs)} = {hits / len(pairs):.2f}   MAE {mae:5.2f}{tail}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--classes", default="4,5,6,7,8,9,10")
    ap.add_argument("--embedding", choices=["pca", "simclr"], default="pca")
    ap.add_argument("--pca-dim", type=int, default=50)
    ap.add_argument("--pretext-epochs", type=int, default=20)
    ap.add_argument("--k-min", type=int, default=2)
    ap.add_argument("--k-max", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = AutoKSpec(k_min=args.k_min, k_max=args.k_max)
    digits = load_digits()
    print(
        f"digits, embedding {args.embedding}, k in [{args.k_min}, {args.k_max}], estimators {spec.estimators}"
    )
    print(
        f"{'n':>2} {'seed':>4}  " + " ".join(f"{e:>10}" for e in spec.estimators) + "   chosen  legacy   rule"
    )
    pairs: dict[str, list[tuple[int, int]]] = {e: [] for e in [*spec.estimators, "consensus", "legacy"]}
    censored = dict.fromkeys(spec.estimators, 0)
    t_all = time.perf_counter()
    for n_cls in (int(c) for c in args.classes.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            cls = np.sort(np.random.default_rng(seed).choice(10, n_cls, replace=False))
            mask = np.isin(digits.target, cls)
            x = torch.tensor(digits.images[mask] / 16.0, dtype=torch.float32)[:, None]
            feats = _embed(
                x, args.embedding, pca_dim=args.pca_dim, pretext_epochs=args.pretext_epochs, seed=seed
            )
            res = estimate_k(feats, spec, seed=seed)
            cells = []
            for e in spec.estimators:
                v = res.estimators[e]
                pairs[e].append((v.vote, n_cls))
                censored[e] += v.censored is not None
                cells.append(f"{v.vote:>9}{'*' if v.censored else ' '}")
            pairs["consensus"].append((res.k, n_cls))
            pairs["legacy"].append((res.consensus["legacy_k"], n_cls))
            flag = " (fallback)" if res.consensus["fallback"] else ""
            print(
                f"{n_cls:>2} {seed:>4}  {' '.join(cells)}   {res.k:>6}  {res.consensus['legacy_k']:>6}{flag}",
                flush=True,
            )
    print(
        f"\nhit rate and mean |K - truth| over {len(pairs['consensus'])} runs "
        f"({time.perf_counter() - t_all:.0f} s)"
    )
    for name, p in pairs.items():
        print(_summary(name, p, censored.get(name)))


if __name__ == "__main__":
    main()
