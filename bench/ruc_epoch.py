"""Seconds per RUC epoch against the compute floor measured in the same run.

    .venv/bin/python bench/ruc_epoch.py --n 1000 --batch 100 --epochs 1 --device cpu

The RUC epoch is ``train_ruc``'s own per-epoch time (both networks, epoch-end refurbishing
included; set-up and the final ensemble prediction excluded). The floor replays exactly the
network passes of such an epoch on random tensors of the same shapes, and nothing else (no data
conversion, augmentation, losses or optimiser steps). Per step of network k, with M weak views,
B = batch size and a non-empty unclean set:

    no grad, eval mode:  own network on the M weak views of u               M B images
                         partner on the same views                           M B images
                         (in chunks of B on the CPU, 4B on a GPU)
    with grad, train:    strong view of x (B), then the mixed batch in 2M chunks of B
                         -> 1 + 2M forward+backward passes of B images
    (co_training=False: the own forward also takes x; no partner forward)

Each network makes ceil(|X| / B) steps, then predicts all N images once (eval, no grad, chunks
of 4x the no-grad chunk): that table serves co-refinement, refurbishing and the ensemble.
Peak RSS is the process's ru_maxrss after each stage.
Variants: fp32, channels_last, bf16 autocast, channels_last + bf16 (floor for each; the RUC
epoch for the default and, with --variant-epochs, for every variant).

With --levers fp32 (or bf16) it prints one row per lever instead (bench/ruc_levers.py: each a RUC
epoch in its own process, its CPU seconds, floor, peak RSS and ratio to the family's baseline row):

    .venv/bin/python bench/ruc_epoch.py --n 1000 --batch 100 --epochs 1 --device cpu --levers fp32

With --features the data are N float32 feature vectors of --dim dimensions and the networks are
a feature job's MLP heads (core.models.FeatureClusteringModel, hidden width --hidden) with the
default feature views; the floor replays the same passes on random (B, D) matrices:

    .venv/bin/python bench/ruc_epoch.py --features --n 50000 --dim 768 --batch 200 --device cpu
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch
from ruc_levers import LEVERS, lever_names, run_rows
from summary import add_summary_argument, write_summary

from core.models import ClusteringModel, FeatureClusteringModel, build_backbone, feature_statistics
from core.ruc import PerfOptions, train_ruc
from core.ruc.perf import INFERENCE_BATCH_FACTOR, default_perf, nograd_chunk_size
from core.spec import RefineSpec

VARIANTS: dict[str, PerfOptions] = {
    "fp32": PerfOptions(channels_last=False, autocast_dtype=torch.float32),
    "channels_last": PerfOptions(channels_last=True, autocast_dtype=torch.float32),
    "bf16": PerfOptions(channels_last=False, autocast_dtype=torch.bfloat16),
    "channels_last+bf16": PerfOptions(channels_last=True, autocast_dtype=torch.bfloat16),
}


def cpu_seconds() -> float:
    """User + system CPU time of this process: less sensitive than wall time to other load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def make_inputs(
    n: int,
    k: int,
    clean_fraction: float,
    seed: int,
    device: torch.device,
    backbone_name: str = "resnet18_cifar",
    features: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Random data, pseudo-labels, clean set and base network; features: (D, hidden) for MLP heads."""
    g = torch.Generator().manual_seed(seed)
    if features is None:
        data = torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
    else:
        data = torch.randn(n, features[0], generator=g)
    pseudo = torch.randint(0, k, (n,), generator=g)
    clean = torch.rand(n, generator=g) < clean_fraction
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = make_net(k, backbone_name, features, data)
    return {"images": data.to(device), "pseudo": pseudo, "clean": clean, "base": base.to(device)}


def make_net(
    k: int, backbone_name: str, features: tuple[int, int] | None, data: torch.Tensor | None = None
) -> ClusteringModel:
    """A clustering network on a 32x32x3 backbone, or a feature job's MLP head on (D, hidden)."""
    if features is None:
        backbone, dim = build_backbone(backbone_name, in_channels=3)
        return ClusteringModel(backbone, dim, k)
    mean, std = feature_statistics(data) if data is not None else (None, None)
    return FeatureClusteringModel(features[0], features[1], k, mean=mean, std=std)


def ruc_epochs(
    inputs: dict[str, Any], spec: RefineSpec, k: int, device: torch.device, perf: PerfOptions
) -> list[dict]:
    out = train_ruc(
        inputs["base"],
        inputs["images"],
        inputs["pseudo"],
        inputs["clean"],
        spec,
        num_clusters=k,
        seed=0,
        device=device,
        perf=perf,
    )
    return out.per_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_epoch(
    spec: RefineSpec,
    k: int,
    n_clean: int,
    n_unclean: int,
    n_total: int,
    device: torch.device,
    perf: PerfOptions,
    max_steps: int | None = None,
    backbone_name: str = "resnet18_cifar",
    features: tuple[int, int] | None = None,
) -> tuple[float, dict[str, int]]:
    """Time the passes of one RUC epoch (see module doc) on random tensors; returns (seconds, counts).

    max_steps: time only that many steps (and one table chunk) and extrapolate to the epoch.
    """
    bsz, views = spec.batch_size, spec.weak_augmentations
    co = spec.co_training
    n_nets = 2 if co else 1
    fmt = torch.channels_last if perf.channels_last else torch.contiguous_format
    dtype = perf.autocast_dtype if perf.autocast_dtype not in (None, torch.float32) else None
    nets = []
    for _ in range(n_nets):
        net = make_net(k, backbone_name, features)
        nets.append(net.to(device) if features else net.to(device, memory_format=fmt))

    def amp() -> Any:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def rand(b: int) -> torch.Tensor:
        if features is not None:
            return torch.randn(b, features[0], device=device)
        return torch.rand(b, 3, 32, 32, device=device).contiguous(memory_format=fmt)

    has_u = n_unclean > 0
    b_u = bsz if has_u else 0
    own_n = views * b_u + (0 if co else bsz)
    partner_n = views * b_u if co else 0
    train_chunks = 1 + round(views * (bsz + b_u) / bsz)
    steps = math.ceil(n_clean / bsz)
    chunk = nograd_chunk_size(device, bsz)
    inputs = {"own": rand(own_n), "partner": rand(partner_n) if partner_n else None, "chunk": rand(bsz)}
    table = [rand(c.numel()) for c in torch.arange(n_total).split(INFERENCE_BATCH_FACTOR * chunk)]
    counts = {
        "steps_per_network": steps,
        "nograd_images_per_step": own_n + partner_n,
        "nograd_chunk": chunk,
        "fwd_bwd_chunks_per_step": train_chunks,
        "fwd_bwd_images_per_step": train_chunks * bsz,
        "table_images_per_network": n_total,
    }

    def step(kk: int) -> None:
        net, partner = nets[kk], nets[1 - kk] if co else None
        net.eval()
        with torch.no_grad(), amp():
            for part in inputs["own"].split(chunk):
                net(part).float()
            if partner is not None:
                partner.eval()
                for part in inputs["partner"].split(chunk):
                    partner(part).float()
        net.train()
        for _ in range(train_chunks):
            with amp():
                out = net(inputs["chunk"])
            out.float().logsumexp(dim=1).mean().backward()
        net.zero_grad(set_to_none=True)

    def predict_table(parts: list[torch.Tensor]) -> None:
        for net in nets:
            net.eval()
            with torch.no_grad(), amp():
                for x in parts:
                    for piece in x.split(chunk):
                        net(piece).float()

    # warm-up, so one-time kernel/primitive creation is not timed
    with torch.no_grad(), amp():
        nets[0].eval()
        nets[0](inputs["own"][:chunk])
    nets[0].train()
    with amp():
        nets[0](inputs["chunk"]).float().sum().backward()
    nets[0].zero_grad(set_to_none=True)
    _sync(device)

    total_steps = n_nets * steps
    timed_steps = total_steps if max_steps is None else min(max_steps, total_steps)
    t0 = time.perf_counter()
    for i in range(timed_steps):
        step((i * n_nets) // total_steps)
    _sync(device)
    step_s = (time.perf_counter() - t0) / timed_steps
    parts = table if max_steps is None else table[:1]
    t0 = time.perf_counter()
    predict_table(parts)
    _sync(device)
    table_s = (time.perf_counter() - t0) * (len(table) / max(len(parts), 1))
    counts["timed_steps"] = timed_steps
    return step_s * total_steps + table_s, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--clean-fraction", type=float, default=0.6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="resnet18_cifar", help="any core.models backbone for 32x32x3")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--variant-epochs", action="store_true", help="also run a RUC epoch for every variant")
    ap.add_argument("--variant-steps", type=int, default=2, help="steps timed for the other variants' floors")
    ap.add_argument("--features", action="store_true", help="feature vectors and MLP heads instead of images")
    ap.add_argument("--dim", type=int, default=768, help="--features: D of the vectors")
    ap.add_argument("--hidden", type=int, default=512, help="--features: hidden width of the MLP heads")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--levers",
        default=None,
        help="fp32, bf16 or a comma list of rows: one row per lever (bench/ruc_levers.py)",
    )
    ap.add_argument("--lever-row", default=None, help=argparse.SUPPRESS)  # a child of --levers
    add_summary_argument(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lever_row:
        print(json.dumps(lever_row(args, args.lever_row)))
        return
    if args.levers:
        print(f"load average at start: {os.getloadavg()}; threads={torch.get_num_threads()}; n={args.n}")
        rows = run_rows(sys.argv, lever_names(args.levers))
        print(f"load average now: {os.getloadavg()}")
        write_summary(args.summary, f"ruc_levers_{args.levers}", {"n": args.n, "rows": rows})
        return
    rss_imports = peak_rss_mb()

    device = torch.device(args.device)
    spec = RefineSpec(epochs=args.epochs, batch_size=args.batch, feature_hidden_dim=args.hidden)
    features = (args.dim, args.hidden) if args.features else None
    inputs = make_inputs(args.n, args.clusters, args.clean_fraction, 0, device, args.backbone, features)
    n_clean = int(inputs["clean"].sum())
    data = (
        f"features D={args.dim}, MLP hidden {args.hidden}"
        if features
        else f"backbone={args.backbone} 32x32x3"
    )
    print(f"load average at start: {os.getloadavg()}")
    print(
        f"device={device} threads={torch.get_num_threads()} n={args.n} batch={args.batch} "
        f"clean={n_clean} unclean={args.n - n_clean} clusters={args.clusters} {data}"
    )
    default = default_perf(device, spec)
    default_name = next((name for name, p in VARIANTS.items() if _same(p, default)), "default")
    print(f"train_ruc's default on this device: {default_name} ({default})")
    if features is not None:  # a (B, D) matrix has no memory format: train_ruc ignores channels_last
        default_name = "fp32" if device.type == "cpu" else default_name.replace("channels_last+", "")
        print(f"a feature job's default here: {default_name} (core.ruc.trainer)")

    figures: dict[str, object] = {
        "n": args.n,
        "batch": args.batch,
        "device": str(device),
        "backbone": "mlp" if features else args.backbone,
        "features": {"dim": args.dim, "hidden": args.hidden} if features else None,
        "default": default_name,
    }
    names = [v for v in args.variants.split(",") if v]
    if features is not None:
        names = [v for v in names if "channels_last" not in v]
    order = [default_name] + [v for v in names if v != default_name]
    for name in order:
        perf = VARIANTS.get(name, default)
        line = f"[{name}]"
        if name == default_name or args.variant_epochs:
            cpu0 = cpu_seconds()
            per_epoch = ruc_epochs(inputs, spec, args.clusters, device, perf)
            ruc_cpu = cpu_seconds() - cpu0
            secs = [m["seconds"] for m in per_epoch]
            epoch_s = sum(secs) / len(secs)
            n_unclean = args.n - per_epoch[0]["clean_size"] + per_epoch[0]["refurbished"]
            rss_ruc = peak_rss_mb()
            cpu0 = cpu_seconds()
            floor_s, counts = floor_epoch(
                spec,
                args.clusters,
                n_clean,
                n_unclean,
                args.n,
                device,
                perf,
                backbone_name=args.backbone,
                features=features,
            )
            floor_cpu = cpu_seconds() - cpu0
            line += (
                f" RUC epoch {epoch_s:.2f} s (epochs: {', '.join(f'{s:.2f}' for s in secs)})"
                f" | floor {floor_s:.2f} s"
                f" | ratio {epoch_s / floor_s:.3f} | peak RSS after RUC {rss_ruc:.0f} MB"
                f" | CPU s: train_ruc (set-up, final prediction incl.) {ruc_cpu:.1f}, floor {floor_cpu:.1f}"
            )
            figures[name] = {"epoch_s": epoch_s, "floor_s": floor_s, "ratio": epoch_s / floor_s}
        else:
            floor_s, counts = floor_epoch(
                spec,
                args.clusters,
                n_clean,
                args.n - n_clean,
                args.n,
                device,
                perf,
                max_steps=args.variant_steps,
                backbone_name=args.backbone,
                features=features,
            )
            line += f" floor {floor_s:.2f} s (extrapolated from {counts['timed_steps']} step(s))"
        print(line, flush=True)
    print(f"pass counts: {counts}")
    print(f"load average now: {os.getloadavg()}")
    print(f"peak RSS (whole process) {peak_rss_mb():.0f} MB; after imports alone {rss_imports:.0f} MB")
    write_summary(args.summary, "ruc_epoch", {**figures, "peak_rss_mb": peak_rss_mb()})


def lever_row(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """One lever's RUC epoch (this process's peak RSS is its own) and its floor."""
    perf, interleave = LEVERS[name]
    device = torch.device(args.device)
    spec = RefineSpec(epochs=args.epochs, batch_size=args.batch, interleave=interleave)
    inputs = make_inputs(args.n, args.clusters, args.clean_fraction, 0, device, args.backbone)
    n_clean = int(inputs["clean"].sum())
    cpu0 = cpu_seconds()
    per_epoch = ruc_epochs(inputs, spec, args.clusters, device, perf)
    cpu_s = cpu_seconds() - cpu0
    rss = peak_rss_mb()
    epoch_s = sum(m["seconds"] for m in per_epoch) / len(per_epoch)
    floor_s, _ = floor_epoch(
        spec,
        args.clusters,
        n_clean,
        args.n - n_clean,
        args.n,
        device,
        perf,
        max_steps=args.variant_steps,
        backbone_name=args.backbone,
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "name": name,
        "epoch_s": epoch_s,
        "cpu_s": cpu_s,
        "floor_s": floor_s,
        "peak_rss_mb": rss,
        "load": load,
    }


def _same(a: PerfOptions, b: PerfOptions) -> bool:
    norm = {None: None, torch.float32: None}
    return a.channels_last == b.channels_last and norm.get(a.autocast_dtype, a.autocast_dtype) == norm.get(
        b.autocast_dtype, b.autocast_dtype
    )


if __name__ == "__main__":
    main()
