"""The memory preflight (core/ruc/preflight.py) at a batch that does not fit: estimate vs measured peak.

Random images and a random base network of ``--backbone``; first the requested batch is measured
without a limit, then the preflight runs with a cap of what was resident plus ``--cap-fraction`` of
what that dry run added, so it must shrink the batch (one unmeasured dry run first: the first one
initialises kernels and thread pools, which stay resident). Prints each dry run (batch, measured
peak, the core.memory estimate) and the chosen batch; ``--summary`` adds them under ``preflight``.

    PYTHONPATH=$PWD python bench/preflight.py --device cuda --side 32 --backbone resnet18_cifar --batch 1024
    PYTHONPATH=$PWD python bench/preflight.py --device cpu --side 8 --channels 1 --backbone small_cnn \
        --batch 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from summary import add_summary_argument, write_summary

from core.errors import InsufficientMemory
from core.memory import GiB, estimate_job_memory
from core.models import ClusteringModel, build_backbone
from core.ruc.preflight import device_limit, preflight
from core.spec import JobSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--backbone", default="resnet18_cifar")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument(
        "--cap-fraction",
        type=float,
        default=0.6,
        help="the cap: what is resident plus this fraction of what the dry run at --batch adds to it",
    )
    add_summary_argument(p)
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads() if a.device != "cpu" else 1))
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (a.n, a.side, a.side, a.channels), dtype=torch.uint8, generator=g).to(dev)
    pseudo = torch.randint(0, a.k, (a.n,), generator=g).to(dev)
    clean = (torch.rand(a.n, generator=g) < 0.5).to(dev)
    backbone, dim = build_backbone(a.backbone, in_channels=a.channels)
    base = ClusteringModel(backbone, dim, a.k, mean=[0.5] * a.channels, std=[0.25] * a.channels).to(dev)
    spec = JobSpec(
        dataset_id="bench", num_clusters=a.k, refine={"batch_size": a.batch, "strategy": "confidence"}
    )
    facts = {"count": a.n, "height": a.side, "width": a.side, "channels": a.channels}

    def estimate(b: int):  # noqa: ANN202 - the estimate at batch b
        return estimate_job_memory(spec, facts, checkpoint_backbone=a.backbone, batch_size=b)

    kw = {"num_clusters": a.k, "seed": 0, "estimate": estimate}
    t0 = time.perf_counter()
    preflight(base, images, pseudo, clean, spec.refine, limit_bytes=None, **kw)  # warm-up
    free = preflight(base, images, pseudo, clean, spec.refine, limit_bytes=None, **kw)
    resident = free.tried[0]["resident_bytes"]
    cap = int(resident + a.cap_fraction * (free.measured_peak_bytes - resident))
    limit = device_limit(dev, cap)
    try:
        report = preflight(base, images, pseudo, clean, spec.refine, limit_bytes=limit, **kw)
    except InsufficientMemory as exc:  # a figure too: the cap was below what even the floor needs
        print(f"refused: {exc} (field {exc.field})")
        write_summary(a.summary, "preflight", {"device": str(dev), "refused": str(exc), "limit_bytes": limit})
        return
    seconds = time.perf_counter() - t0
    rows = [*free.tried, *report.tried]
    for r in rows:
        est, peak = r["estimated_peak_bytes"], r["measured_peak_bytes"]
        ratio = f"{est / peak:.2f}" if est and peak else "-"
        print(
            f"B={r['batch_size']:5d}  measured {peak / GiB if peak else float('nan'):7.3f} GiB  "
            f"(resident {r['resident_bytes'] / GiB:.3f})  estimated {est / GiB if est else 0:7.3f} GiB  "
            f"estimate/measured {ratio}"
        )
    print(f"limit {limit / GiB if limit else 0:.3f} GiB -> batch {report.batch_size}: {report.reason}")
    figures = {
        "device": str(dev),
        "backbone": a.backbone,
        "side": a.side,
        "requested_batch_size": a.batch,
        "batch_size": report.batch_size,
        "shrunk": report.shrunk,
        "limit_bytes": limit,
        "measured_peak_bytes": report.measured_peak_bytes,
        "estimated_peak_bytes": report.estimated_peak_bytes,
        "tried": rows,
        "seconds": round(seconds, 2),
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "tried"}))
    write_summary(a.summary, "preflight", figures)


if __name__ == "__main__":
    main()
