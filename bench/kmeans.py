"""k-means speed: core.clustering.kmeans against scikit-learn and faiss on the same data.

50,000 x 512 float32 points (Gaussian blobs around 64 random centres, so Lloyd has structure to
find), K = 10 and K = 100, the same restarts (n_init) and iteration cap (max_iter) everywhere,
all on CPU with the same thread count. Prints seconds, iterations, inertia and the ratio of each
library's time to ours (> 1: ours is faster). faiss (optional, ``pip install faiss-cpu``) is
reported as missing when it does not import. Not part of the test suite.

    python bench/kmeans.py [--n 50000] [--d 512] [--k 10 100] [--restarts 3] [--iters 50] [--threads 2]
                           [--device cuda] [--no-faiss] [--summary FILE]

With ``--device cuda`` ours runs on the GPU while scikit-learn and faiss stay on the CPU threads.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from summary import add_summary_argument, write_summary


def make_data(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, d)).astype(np.float32) * 2.0
    return (centres[rng.integers(0, 64, n)] + rng.normal(size=(n, d)).astype(np.float32)).astype(np.float32)


def bench_core(x: np.ndarray, k: int, restarts: int, iters: int, device: str) -> tuple[float, float, int]:
    """Ours on ``device``; the data is moved there first (outside the timing, as a job has it there)."""
    from core.clustering.kmeans import kmeans

    xt = torch.from_numpy(x).to(device)
    if xt.is_cuda:
        kmeans(xt[:1000], k, restarts=1, iters=2, seed=0)  # CUDA context and kernels warm
        torch.cuda.synchronize()
    t = time.perf_counter()
    res = kmeans(xt, k, restarts=restarts, iters=iters, seed=0)
    if xt.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t, res.inertia, res.n_iter


def bench_sklearn(x: np.ndarray, k: int, restarts: int, iters: int) -> tuple[float, float, int]:
    from sklearn.cluster import KMeans

    km = KMeans(
        n_clusters=k, n_init=restarts, max_iter=iters, init="k-means++", algorithm="lloyd", random_state=0
    )
    t = time.perf_counter()
    km.fit(x)
    return time.perf_counter() - t, float(km.inertia_), int(km.n_iter_)


def bench_faiss(x: np.ndarray, k: int, restarts: int, iters: int) -> tuple[float, float, int] | str:
    try:
        import faiss
    except ImportError as e:
        return f"missing ({e})"
    # faiss seeds by random sampling (no k-means++); nredo = restarts, niter = a fixed iteration count.
    # max_points_per_centroid = N: by default faiss trains on a subsample of 256 points per centroid,
    # which would not be the same data.
    km = faiss.Kmeans(
        x.shape[1], k, niter=iters, nredo=restarts, seed=0, verbose=False, max_points_per_centroid=x.shape[0]
    )
    t = time.perf_counter()
    km.train(x)
    elapsed = time.perf_counter() - t
    dist, _ = km.index.search(x, 1)
    return elapsed, float(dist.sum()), iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where ours runs (the others run on the CPU)")
    ap.add_argument("--no-faiss", action="store_true")
    add_summary_argument(ap)
    args = ap.parse_args()
    # One thread budget for every library (torch, BLAS under scikit-learn, OpenMP under faiss).
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    x = make_data(args.n, args.d)
    print(
        f"data {x.shape} float32, restarts={args.restarts}, max_iter={args.iters}, threads={args.threads}, "
        f"ours on {args.device}"
    )
    figures: dict[str, dict[str, float]] = {}
    for k in args.k:
        ours = bench_core(x, k, args.restarts, args.iters, args.device)
        print(f"K={k:4d} core     {ours[0]:8.2f} s  iters {ours[2]:3d}  inertia {ours[1]:.4e}")
        sk = bench_sklearn(x, k, args.restarts, args.iters)
        ratio = sk[0] / ours[0]
        print(
            f"K={k:4d} sklearn  {sk[0]:8.2f} s iters {sk[2]:3d} inertia {sk[1]:.4e} sklearn/core {ratio:.2f}"
        )
        figures[f"k{k}"] = {
            "core_s": round(ours[0], 4),
            "sklearn_s": round(sk[0], 4),
            "sklearn_over_core": ratio,
        }
        fa = "skipped (--no-faiss)" if args.no_faiss else bench_faiss(x, k, args.restarts, args.iters)
        if isinstance(fa, str):
            print(f"K={k:4d} faiss    {fa}")
        else:
            ratio = fa[0] / ours[0]
            print(
                f"K={k:4d} faiss   {fa[0]:8.2f} s iters {fa[2]:3d} inertia {fa[1]:.4e} faiss/core {ratio:.2f}"
            )
    write_summary(
        args.summary,
        "kmeans",
        {"n": args.n, "d": args.d, "device": args.device, "threads": args.threads, **figures},
    )


if __name__ == "__main__":
    main()
