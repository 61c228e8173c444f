"""RUC retraining (Park et al., CVPR 2021, Algorithm 1) with the decisions of DESIGN.md.

Per epoch, network 1 trains with network 2 as its partner, then the reverse. Each step of
network k draws a clean batch (B samples of X) and an unclean batch (B samples of U) and
minimises L = L_Xs + L_Xhat + lambda_u * ramp * L_Uhat (Eq. (10)):

* L_Xs: CE between the label-smoothed pseudo-label (Eq. (8)) and f_k(strong(x)), clean samples.
* Co-refinement (Eq. (11)-(12)): y_bar = Sharpen((1 - w) y + w f_partner(x), T), with
  f_partner(x) the partner's softmax on the unaugmented x and w its max, min-max normalised over
  the dataset (all zeros before the partner's first pass).
* Label guessing (Eq. (13)-(14)): q_bar = Sharpen(mean of both networks over M weak views of u).
* MixMatch (Eq. (1)-(7)): one lambda' per batch mixes [x views, u views] with a permutation of
  itself; CE on the mixed X part, squared error of the softmax on the mixed U part.
* Co-refurbishing (Eq. (18)-(19)) at each epoch end (paper) or inside the batch loop (script).

Choices worth knowing:

* Prediction tables. At the end of its pass each network predicts the whole dataset once
  (unaugmented, eval mode, no graph) into a (N, K) table. A network does not change while the
  other trains, so its table *is* its current f(x) for everything that needs one: the partner's
  f(x) and confidence w in co-refinement, co-refurbishing at the epoch end, the confidence
  figure and the final ensemble. Per step, only the M weak views of u are forwarded without
  gradients (own network and partner, for label guessing).
* Forwards without gradients run in eval mode: a sample's prediction then does not depend on
  its batch-mates, it is the same function the final ensemble and refurbishing use, and
  BatchNorm's running statistics only see the training views. (The authors' script keeps train
  mode there.)
* The training forward is split into chunks of B images (the strong clean view, then the
  mixed batch strided so every chunk holds X and U rows alike, which is MixMatch's interleaving).
  BatchNorm thus always normalises over B samples, as in MixMatch, and the activations of only B
  images are alive at a time; gradients accumulate over the chunks before one SGD step.
* An epoch of network k has ceil(|X| / B) steps; clean samples are visited in a fresh random
  order (topped up to whole batches), unclean samples are drawn cyclically in random order.
* Without co-training the single network is its own partner: co-refinement uses its current
  prediction on x (one extra no-grad forward of B images per step) weighted by its confidence
  from its previous pass (zeros in the first epoch), label guessing uses its own views,
  refurbishing its own table.
* refurbish_mode="batch" (the authors' script) refurbishes each unclean batch inside the loop
  with the training network's prediction on the unaugmented u, at a fixed threshold 0.99.
* All randomness (batches, augmentations, permutations) comes from one CPU torch.Generator and
  the Beta draws from a numpy Generator, both seeded from ``seed`` and checkpointed, so a run
  resumed from a checkpoint reproduces an uninterrupted run exactly on the CPU.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.augment import strong_augment, weak_augment
from core.errors import CoreInputError
from core.hooks import RunHooks
from core.models import ClusteringModel, build_backbone
from core.ruc.losses import (
    co_refine,
    cosine_lr,
    guess_labels,
    lambda_u_ramp,
    minmax_normalise,
    mix,
    mixmatch_lambda,
    probs_squared_error,
    refurbish_tau2,
    smooth_labels,
    soft_cross_entropy,
)
from core.ruc.refurbish import apply_refurbish, refurbish_candidates
from core.ruc.state import RucState, input_fingerprint, load_state, save_state
from core.spec import RefineSpec

BATCH_REFURBISH_THRESHOLD = 0.99  # the authors' script's fixed in-loop threshold (refurbish_mode="batch")
STOP_CHECK_EVERY = 10  # batches between should_stop() checks: cheap, and a cancel waits < 10 steps
INFERENCE_BATCH_FACTOR = 4  # no-grad forwards keep no activations, so they afford 4x the batch size


@dataclass(frozen=True)
class PerfOptions:
    """How the arithmetic runs; results differ only by rounding. None picks the device default.

    channels_last: NHWC memory format for networks and inputs (default: on CUDA only).
    autocast_dtype: dtype of autocast regions (default: bfloat16 on CUDA when the spec's
        mixed_precision is set, float32 everywhere on the CPU).
    """

    channels_last: bool | None = None
    autocast_dtype: torch.dtype | None = None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products natively (AVX512-BF16 or AMX), Linux only."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_perf(device: torch.device, spec: RefineSpec) -> PerfOptions:
    """The arithmetic ``train_ruc`` uses unless told otherwise.

    CUDA: channels_last, bf16 autocast when ``spec.mixed_precision``. CPU: the same when the CPU
    has native bf16 (bench/ruc_epoch.py on a 2-core AMD EPYC with AVX512-BF16: channels_last +
    bf16 is the only variant near the compute target there), else float32 NCHW, because
    emulated bf16 is slower than float32.
    """
    if device.type == "cuda" or cpu_has_native_bf16():
        return PerfOptions(
            channels_last=True, autocast_dtype=torch.bfloat16 if spec.mixed_precision else None
        )
    return PerfOptions(channels_last=False, autocast_dtype=None)


def nograd_chunk_size(device: torch.device, batch_size: int) -> int:
    """Images per forward without gradients inside a training step.

    Eval mode makes predictions independent of the batch, so chunking changes no result; on the
    CPU, chunks of B keep the transient activations of 400+ images from raising the peak memory
    at no cost in speed, while a GPU prefers larger launches.
    """
    return batch_size if device.type == "cpu" else INFERENCE_BATCH_FACTOR * batch_size


@dataclass
class RucOutput:
    """Result of ``train_ruc``.

    models: the trained networks (2 with co-training, 1 without), in eval mode on the device.
    probs: (N, K) float32 on the CPU, the ensemble's mean softmax on the unaugmented images.
    clean_mask: (N,) bool on the CPU, the final clean set (refurbished samples included).
    pseudo_labels: (N,) int64 on the CPU, labels of the clean set after refurbishing (unclean
        entries keep their initial label).
    per_epoch: one metrics dict per epoch (also sent through hooks.on_epoch).
    """

    models: tuple[ClusteringModel, ...]
    probs: torch.Tensor
    clean_mask: torch.Tensor
    pseudo_labels: torch.Tensor
    per_epoch: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Runtime:
    """Mutable training state shared by the passes of one run (tensors on the device)."""

    nets: list[ClusteringModel]
    optimizers: list[torch.optim.Optimizer]
    clean: torch.Tensor  # (N,) bool
    pseudo: torch.Tensor  # (N,) int64
    table: torch.Tensor  # (V, N, K) float32: each network's softmax on the unaugmented images
    ready: torch.Tensor  # (V,) bool: which tables hold a prediction (the network has trained)
    generator: torch.Generator
    np_rng: np.random.Generator
    channels_last: bool
    autocast_dtype: torch.dtype | None
    nograd_chunk: int


# ---------------------------------------------------------------------------------------------
# helpers


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_float(images: torch.Tensor, idx: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (N, H, W, C) rows ``idx`` -> float32 (B, C, H, W) in [0, 1].

    The permuted view of NHWC data already has channels_last strides; ``contiguous`` makes
    it NCHW only when the networks want that layout.
    """
    x = images.index_select(0, idx).permute(0, 3, 1, 2).float().div_(255.0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _probs(net: nn.Module, x: torch.Tensor, rt: _Runtime) -> torch.Tensor:
    """Softmax of ``net`` on x (B, C, H, W) -> (B, K) float32, no graph (caller sets the mode).

    Runs in chunks of ``rt.nograd_chunk`` images.
    """
    with torch.no_grad(), _autocast(x.device, rt.autocast_dtype):
        return torch.cat([torch.softmax(net(part).float(), dim=1) for part in x.split(rt.nograd_chunk)])


def _cycled_order(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``length`` indices in [0, n): whole random permutations of range(n) concatenated (CPU int64)."""
    reps = math.ceil(length / n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:length]


def _fresh_head(backbone_dim: int, num_clusters: int, seed: int) -> nn.Linear:
    """nn.Linear with PyTorch's default init drawn from its own seed (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(backbone_dim, num_clusters)


def _build_net(
    base_model: ClusteringModel,
    spec: RefineSpec,
    index: int,
    *,
    seed: int,
    in_channels: int,
    num_clusters: int,
) -> ClusteringModel:
    """Network ``index``: a copy of the base backbone (or a fresh ``spec.backbone``) with one head.

    A fresh head (A.2: "we randomly initialize the final fully connected layer") differs between
    the two networks because each gets its own seed.
    """
    net_seed = seed * 1000 + 17 * (index + 1)
    base_name = getattr(base_model, "backbone_name", None)
    if spec.backbone is not None and spec.backbone != base_name:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(net_seed)
            backbone, dim = build_backbone(spec.backbone, in_channels=in_channels)
        mean = base_model.mean.detach().flatten().cpu().tolist()
        std = base_model.std.detach().flatten().cpu().tolist()
        net = ClusteringModel(backbone, dim, num_clusters, mean=mean, std=std)
        net.cluster_head = nn.ModuleList([_fresh_head(dim, num_clusters, net_seed + 1)])
        return net
    net = copy.deepcopy(base_model).cpu()
    head = net.cluster_head[net.active_head]
    if spec.reinit_head:
        head = _fresh_head(net.backbone_dim, num_clusters, net_seed + 1)
    net.cluster_head = nn.ModuleList([head])
    net.active_head = 0
    net.nheads = 1
    return net


def _validate(
    base_model: ClusteringModel,
    images_u8: torch.Tensor,
    pseudo_labels: torch.Tensor,
    clean_mask: torch.Tensor,
    num_clusters: int,
) -> None:
    if images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
        raise CoreInputError(
            "images", f"expected uint8 (N, H, W, C), got {images_u8.dtype} {tuple(images_u8.shape)}"
        )
    n = images_u8.shape[0]
    if n == 0:
        raise CoreInputError("images", "no images to train on")
    if pseudo_labels.shape != (n,) or clean_mask.shape != (n,):
        raise CoreInputError(
            "pseudo_labels",
            f"pseudo_labels {tuple(pseudo_labels.shape)} and clean_mask {tuple(clean_mask.shape)} "
            f"must both be ({n},)",
        )
    if pseudo_labels.dtype.is_floating_point or clean_mask.dtype != torch.bool:
        raise CoreInputError("pseudo_labels", "pseudo_labels must be integers and clean_mask bool")
    lo, hi = int(pseudo_labels.min()), int(pseudo_labels.max())
    if lo < 0 or hi >= num_clusters:
        raise CoreInputError("pseudo_labels", f"labels must lie in [0, {num_clusters}), got [{lo}, {hi}]")
    head = base_model.cluster_head[base_model.active_head]
    if head.out_features != num_clusters:
        raise CoreInputError(
            "num_clusters", f"base model's head has {head.out_features} outputs, expected {num_clusters}"
        )


def _ensure_clean(
    clean: torch.Tensor,
    pseudo: torch.Tensor,
    base_model: ClusteringModel,
    images: torch.Tensor,
    spec: RefineSpec,
    num_clusters: int,
    hooks: RunHooks,
    rt_perf: tuple[bool, torch.dtype | None],
) -> torch.Tensor:
    """Give every non-empty cluster at least ``min_clean_per_cluster`` clean samples (>= 1 overall).

    A starved cluster gets its members with the highest base-model probability of their
    pseudo-label, max(min_per_cluster, ceil(fallback_fraction * cluster size)) of them. The
    pipeline applies the same fallback before calling us; this is the guard for direct callers,
    because an empty clean set gives NaN losses (the authors' script breaks there).
    """
    need = spec.min_clean_per_cluster
    if not bool(clean.any()):
        need = max(need, 1)
    if need == 0:
        return clean
    members = torch.bincount(pseudo, minlength=num_clusters)
    have = torch.bincount(pseudo[clean], minlength=num_clusters)
    starved = ((have < need) & (members > 0)).nonzero().squeeze(1).tolist()
    if not starved:
        return clean
    clean = clean.clone()
    channels_last, dtype = rt_perf
    was_training = base_model.training
    base_model.eval()
    for c in starved:
        idx = (pseudo == c).nonzero().squeeze(1)
        chunks = []
        for part in idx.split(INFERENCE_BATCH_FACTOR * spec.batch_size):
            x = _to_float(images, part, channels_last)
            with torch.no_grad(), _autocast(images.device, dtype):
                chunks.append(torch.softmax(base_model(x).float(), dim=1)[:, c])
        conf = torch.cat(chunks)
        take = min(int(members[c]), max(need, math.ceil(spec.fallback_fraction * int(members[c]))))
        clean[idx[conf.topk(take).indices]] = True
    base_model.train(was_training)
    hooks.on_event(
        "warning",
        f"RUC: {len(starved)} cluster(s) had fewer than {need} clean sample(s) ({starved[:20]}); "
        f"added their most confident members by the base model (clean set now {int(clean.sum())})",
    )
    return clean


# ---------------------------------------------------------------------------------------------
# one training pass of one network


def _table_weight(rt: _Runtime, slot: int) -> torch.Tensor:
    """w of Eq. (11) for every sample: table ``slot``'s max probability, min-max normalised (N,).

    All zeros while that table is empty (the network has not trained yet).
    """
    n = rt.table.shape[1]
    if not bool(rt.ready[slot]):
        return torch.zeros(n, device=rt.table.device)
    return minmax_normalise(rt.table[slot].max(dim=1).values)


def _train_pass(
    k: int,
    rt: _Runtime,
    images: torch.Tensor,
    spec: RefineSpec,
    *,
    num_clusters: int,
    lambda_u_eff: float,
    hooks: RunHooks,
) -> tuple[torch.Tensor, int]:
    """Train network k for one pass over the clean set, then refresh its prediction table.

    Returns (loss sums (3,) = [L_Xs, L_Xhat, L_Uhat] summed over steps, detached; number of steps).
    Refurbishes in the loop when refurbish_mode is "batch".
    """
    net = rt.nets[k]
    co = len(rt.nets) == 2
    partner = rt.nets[1 - k] if co else net
    partner_slot = 1 - k if co else k
    dev = images.device
    bsz = spec.batch_size
    views = spec.weak_augmentations
    gen = rt.generator
    batch_refurbish = spec.refurbish and spec.refurbish_mode == "batch"

    clean_idx = rt.clean.nonzero().squeeze(1)
    unclean_idx = (~rt.clean).nonzero().squeeze(1)
    has_u = unclean_idx.numel() > 0
    steps = math.ceil(clean_idx.numel() / bsz)
    clean_order = clean_idx[_cycled_order(clean_idx.numel(), steps * bsz, gen).to(dev)]
    unclean_order = (
        unclean_idx[_cycled_order(unclean_idx.numel(), steps * bsz, gen).to(dev)] if has_u else None
    )
    weights = _table_weight(rt, partner_slot)
    partner_table = rt.table[partner_slot]

    sums = torch.zeros(3, device=dev)
    for step in range(steps):
        if step and step % STOP_CHECK_EVERY == 0:
            hooks.check_stop(f"network {k + 1}, step {step}")
        xb = clean_order[step * bsz : (step + 1) * bsz]
        ub = unclean_order[step * bsz : (step + 1) * bsz] if unclean_order is not None else None
        x = _to_float(images, xb, rt.channels_last)  # (B, C, H, W)
        u = _to_float(images, ub, rt.channels_last) if ub is not None else None
        x_strong = _layout(
            strong_augment(x, n=spec.randaugment_n, m=spec.randaugment_m, generator=gen), rt.channels_last
        )
        x_weak: list[torch.Tensor] = []
        u_weak: list[torch.Tensor] = []
        if spec.mixmatch:
            x_weak = [_layout(weak_augment(x, generator=gen), rt.channels_last) for _ in range(views)]
            if u is not None:
                u_weak = [_layout(weak_augment(u, generator=gen), rt.channels_last) for _ in range(views)]

        # --- forwards without gradients: one concatenated forward per network ---------------------
        n_x = xb.numel()
        n_u = ub.numel() if ub is not None else 0
        own_x = spec.mixmatch and not co  # its own current f(x) replaces the partner's table
        own_u = batch_refurbish and u is not None
        own_parts = ([x] if own_x else []) + ([u] if own_u else []) + u_weak
        net.eval()
        own = _probs(net, torch.cat(own_parts), rt) if own_parts else None
        at = 0
        if own_x:
            assert own is not None
            p_x = own[:n_x]
            at = n_x
        else:
            p_x = partner_table[xb]
        if own_u:
            assert own is not None and ub is not None
            accept, labels = refurbish_candidates(own[None, at : at + n_u], BATCH_REFURBISH_THRESHOLD)
            apply_refurbish(rt.clean, rt.pseudo, ub, accept, labels)
            at += n_u

        if spec.mixmatch:
            q_bar = None
            if n_u:
                assert own is not None
                guesses = [own[at:].view(views, n_u, num_clusters)]
                if co:
                    partner.eval()
                    guesses.append(_probs(partner, torch.cat(u_weak), rt).view(views, n_u, num_clusters))
                q_bar = guess_labels(torch.cat(guesses), spec.sharpen_temperature)  # (B, K)
            y = F.one_hot(rt.pseudo[xb], num_clusters).float()
            y_bar = co_refine(y, p_x, weights[xb], spec.sharpen_temperature)  # (B, K)

        # --- training forward/backward in chunks of B --------------------------------------------
        net.train()
        opt = rt.optimizers[k]
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, rt.autocast_dtype):
            logits_s = net(x_strong)
        targets_s = smooth_labels(rt.pseudo[xb], num_clusters, spec.label_smoothing)
        loss_xs = soft_cross_entropy(logits_s, targets_s).mean()
        loss_xs.backward()
        sums[0] += loss_xs.detach()
        del logits_s, loss_xs

        if spec.mixmatch:
            inputs = torch.cat(x_weak + u_weak)  # (V*B_x + V*B_u, C, H, W)
            targets = torch.cat([y_bar] * views + ([q_bar] * views if q_bar is not None else []))
            lam = mixmatch_lambda(spec.mixup_alpha, rt.np_rng)
            perm = torch.randperm(inputs.shape[0], generator=gen).to(dev)
            mixed_x, mixed_t = mix(inputs, targets, lam, perm)
            del inputs, x_weak, u_weak
            n_lab = views * n_x
            n_unl = mixed_x.shape[0] - n_lab
            n_chunks = max(1, round(mixed_x.shape[0] / bsz))
            for j in range(n_chunks):
                rows = torch.arange(j, mixed_x.shape[0], n_chunks, device=dev)
                with _autocast(dev, rt.autocast_dtype):
                    logits = net(_layout(mixed_x[rows], rt.channels_last))
                is_lab = rows < n_lab
                loss_x = soft_cross_entropy(logits[is_lab], mixed_t[rows][is_lab]).sum() / n_lab
                loss = loss_x
                if n_unl:
                    loss_u = probs_squared_error(logits[~is_lab], mixed_t[rows][~is_lab]).sum() / n_unl
                    loss = loss + lambda_u_eff * loss_u
                    sums[2] += loss_u.detach()
                loss.backward()
                sums[1] += loss_x.detach()
                del logits, loss, loss_x
        opt.step()
        # Gradients are dead until the next backward: freeing them now keeps them out of the
        # peak of the no-grad forwards and of the partner's pass (45 MB per ResNet-18).
        opt.zero_grad(set_to_none=True)
    net.eval()
    rt.table[k] = _predict_all(net, images, rt)
    rt.ready[k] = True
    return sums, steps


def _predict_all(net: nn.Module, images: torch.Tensor, rt: _Runtime) -> torch.Tensor:
    """Softmax of ``net`` (eval mode) on every unaugmented image -> (N, K) float32.

    Images are converted to float chunk by chunk, so at most 4B of them are float at a time.
    """
    net.eval()
    idx = torch.arange(images.shape[0], device=images.device)
    bs = INFERENCE_BATCH_FACTOR * rt.nograd_chunk
    return torch.cat([_probs(net, _to_float(images, part, rt.channels_last), rt) for part in idx.split(bs)])


def predict_ensemble(
    nets: tuple[nn.Module, ...] | list[nn.Module],
    images: torch.Tensor,
    batch_size: int,
    *,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean softmax of ``nets`` (eval mode, no graph) on uint8 images (N, H, W, C).

    Returns (N, K) float32 on the images' device; rows sum to 1. The final RUC prediction.
    """
    if images.shape[0] == 0:
        raise CoreInputError("images", "no images to predict")
    total: torch.Tensor | None = None
    for net in nets:
        net.eval()
        parts = []
        for idx in torch.arange(images.shape[0], device=images.device).split(batch_size):
            x = _to_float(images, idx, channels_last)
            with torch.no_grad(), _autocast(images.device, autocast_dtype):
                parts.append(torch.softmax(net(x).float(), dim=1))
        p = torch.cat(parts)
        total = p if total is None else total + p
    assert total is not None
    return total / len(nets)


def _allocate_momentum(optimizers: list[torch.optim.Optimizer]) -> None:
    """Create SGD's momentum buffers now, as zeros, instead of lazily at the first step.

    With dampening 0 a zero buffer gives exactly the first step SGD computes without one
    (buf = grad), so results do not change. Allocated before any activation, these long-lived
    tensors do not land in holes between freed activations (measured: 20 MB less peak RSS in
    bench/ruc_epoch.py's setting, 1,403 -> 1,380 MB at N=400).
    """
    for opt in optimizers:
        for group in opt.param_groups:
            if group["momentum"] == 0 or group["dampening"] != 0:
                continue
            for p in group["params"]:
                opt.state[p].setdefault(
                    "momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format)
                )


# ---------------------------------------------------------------------------------------------
# checkpoint <-> runtime


def _snapshot(rt: _Runtime, fingerprint: str, epoch: int, per_epoch: list[dict[str, Any]]) -> RucState:
    return RucState(
        fingerprint=fingerprint,
        epoch=epoch,
        nets=[{k: v.detach().cpu().clone() for k, v in net.state_dict().items()} for net in rt.nets],
        optimizers=[_cpu_tree(opt.state_dict()) for opt in rt.optimizers],
        clean_mask=rt.clean.cpu().clone(),
        pseudo_labels=rt.pseudo.cpu().clone(),
        table=rt.table.cpu().clone(),
        ready=rt.ready.cpu().clone(),
        rng={"torch_generator": rt.generator.get_state(), "numpy": rt.np_rng.bit_generator.state},
        per_epoch=copy.deepcopy(per_epoch),
    )


def _cpu_tree(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_tree(v) for v in obj)
    return obj


def _restore(rt: _Runtime, state: RucState) -> None:
    dev = rt.clean.device
    for net, sd in zip(rt.nets, state.nets, strict=True):
        net.load_state_dict(sd)
    for opt, sd in zip(rt.optimizers, state.optimizers, strict=True):
        opt.load_state_dict(sd)
    rt.clean = state.clean_mask.to(dev)
    rt.pseudo = state.pseudo_labels.to(dev)
    rt.table = state.table.to(dev)
    rt.ready = state.ready.to(dev)
    rt.generator.set_state(state.rng["torch_generator"])
    rt.np_rng.bit_generator.state = state.rng["numpy"]


def _try_resume(path: Path, fingerprint: str, n_nets: int, hooks: RunHooks) -> RucState | None:
    try:
        state = load_state(path)
    except (ValueError, RuntimeError, OSError, TypeError, EOFError) as exc:
        hooks.on_event("warning", f"RUC: ignoring unreadable checkpoint {path.name} ({exc}); starting afresh")
        return None
    if state.fingerprint != fingerprint or len(state.nets) != n_nets:
        hooks.on_event(
            "warning",
            f"RUC: checkpoint {path.name} belongs to other inputs or settings; starting afresh",
        )
        return None
    hooks.on_event("info", f"RUC: resuming after epoch {state.epoch}")
    return state


# ---------------------------------------------------------------------------------------------
# the entry point


def train_ruc(
    base_model: ClusteringModel,
    images_u8: torch.Tensor,
    pseudo_labels: torch.Tensor,
    clean_mask: torch.Tensor,
    spec: RefineSpec,
    *,
    num_clusters: int,
    seed: int,
    device: str | torch.device,
    hooks: RunHooks | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = True,
    perf: PerfOptions | None = None,
) -> RucOutput:
    """Retrain ``base_model``'s clustering with RUC (Algorithm 1) and return the refined ensemble.

    images_u8: (N, H, W, C) uint8, ideally already on ``device`` (it is moved there otherwise).
    pseudo_labels: (N,) int64 in [0, num_clusters); clean_mask: (N,) bool, the clean set X.
    A checkpoint is written to ``checkpoint_path`` before the first epoch and after every epoch;
    with ``resume`` a compatible checkpoint there is continued. ``hooks.should_stop`` is checked
    every STOP_CHECK_EVERY steps and after each epoch; it raises StopRequested, leaving the
    checkpoint of the last completed epoch on disk.
    """
    hooks = hooks or RunHooks()
    perf = perf or PerfOptions()
    dev = torch.device(device)
    _validate(base_model, images_u8, pseudo_labels, clean_mask, num_clusters)
    images = images_u8.to(dev)
    n, _, _, in_channels = images.shape
    default = default_perf(dev, spec)
    channels_last = perf.channels_last if perf.channels_last is not None else bool(default.channels_last)
    autocast_dtype = perf.autocast_dtype if perf.autocast_dtype is not None else default.autocast_dtype
    if autocast_dtype == torch.float32:
        autocast_dtype = None

    pseudo = pseudo_labels.to(dev, torch.int64).clone()
    clean = _ensure_clean(
        clean_mask.to(dev).clone(),
        pseudo,
        base_model,
        images,
        spec,
        num_clusters,
        hooks,
        (channels_last, autocast_dtype),
    )
    fingerprint = input_fingerprint(
        images_shape=tuple(images.shape),
        pseudo_labels=pseudo,
        clean_mask=clean,
        spec=spec,
        num_clusters=num_clusters,
        seed=seed,
    )

    n_nets = 2 if spec.co_training else 1
    nets = []
    for k in range(n_nets):
        net = _build_net(base_model, spec, k, seed=seed, in_channels=in_channels, num_clusters=num_clusters)
        net = net.to(dev, memory_format=torch.channels_last) if channels_last else net.to(dev)
        nets.append(net)
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.SGD(
            net.parameters(),
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
            nesterov=spec.momentum > 0,
        )
        for net in nets
    ]
    _allocate_momentum(optimizers)
    rt = _Runtime(
        nets=nets,
        optimizers=optimizers,
        clean=clean,
        pseudo=pseudo,
        table=torch.zeros(n_nets, n, num_clusters, device=dev),
        ready=torch.zeros(n_nets, dtype=torch.bool, device=dev),
        generator=torch.Generator().manual_seed(seed),
        np_rng=np.random.default_rng(seed),
        channels_last=channels_last,
        autocast_dtype=autocast_dtype,
        nograd_chunk=nograd_chunk_size(dev, spec.batch_size),
    )

    start_epoch = 0
    per_epoch: list[dict[str, Any]] = []
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    state = (
        _try_resume(ckpt, fingerprint, n_nets, hooks)
        if ckpt is not None and resume and ckpt.exists()
        else None
    )
    if state is not None:
        _restore(rt, state)
        start_epoch = state.epoch
        per_epoch = list(state.per_epoch)
    elif ckpt is not None:
        save_state(_snapshot(rt, fingerprint, 0, per_epoch), ckpt)

    hooks.check_stop("before the first RUC epoch")
    inference_bs = INFERENCE_BATCH_FACTOR * spec.batch_size
    for epoch in range(start_epoch, spec.epochs):
        t0 = time.perf_counter()
        lr = cosine_lr(spec.lr, epoch, spec.epochs)
        for opt in rt.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        lambda_u_eff = spec.lambda_u * lambda_u_ramp(epoch, spec.lambda_u_rampup_epochs)
        clean_before = int(rt.clean.sum())
        sums = torch.zeros(3, device=dev)
        steps = 0
        for k in range(n_nets):
            s, st = _train_pass(
                k,
                rt,
                images,
                spec,
                num_clusters=num_clusters,
                lambda_u_eff=lambda_u_eff,
                hooks=hooks,
            )
            sums += s
            steps += st
            hooks.on_progress((epoch * n_nets + k + 1) / (spec.epochs * n_nets), epoch + 1, spec.epochs)

        tau2 = refurbish_tau2(
            epoch, start=spec.refurbish_threshold, step=spec.refurbish_step, every=spec.refurbish_every
        )
        if spec.refurbish and spec.refurbish_mode == "epoch":
            unclean_idx = (~rt.clean).nonzero().squeeze(1)
            if unclean_idx.numel():
                accept, labels = refurbish_candidates(rt.table[:, unclean_idx], tau2)
                apply_refurbish(rt.clean, rt.pseudo, unclean_idx, accept, labels)
        if spec.refurbish_mode == "batch":
            tau2 = BATCH_REFURBISH_THRESHOLD

        loss_xs, loss_x, loss_u = (sums / max(steps, 1)).tolist()
        conf_mean = float(rt.table[rt.ready].max(dim=2).values.mean())
        clean_size = int(rt.clean.sum())
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss_xs": loss_xs,
            "loss_x": loss_x,
            "loss_u": loss_u,
            "lambda_u_eff": lambda_u_eff if spec.mixmatch else 0.0,
            "tau2": tau2 if spec.refurbish else None,
            "clean_size": clean_size,
            "refurbished": clean_size - clean_before,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
            "mean_confidence": conf_mean,
        }
        per_epoch.append(metrics)
        if ckpt is not None:
            save_state(_snapshot(rt, fingerprint, epoch + 1, per_epoch), ckpt)
        hooks.on_epoch(dict(metrics))
        hooks.check_stop(f"after RUC epoch {epoch + 1}")

    if bool(rt.ready.all()):
        probs = rt.table.mean(dim=0)  # every table is its network's final prediction
    else:
        probs = predict_ensemble(
            rt.nets, images, inference_bs, channels_last=rt.channels_last, autocast_dtype=rt.autocast_dtype
        )
    for net in rt.nets:
        net.eval()
    return RucOutput(
        models=tuple(rt.nets),
        probs=probs.float().cpu(),
        clean_mask=rt.clean.cpu(),
        pseudo_labels=rt.pseudo.cpu(),
        per_epoch=per_epoch,
    )
