"""SCAN clustering heads trained on fixed embeddings (Van Gansbeke et al., ECCV 2020, Eq. (2)).

The backbone is frozen (an uploaded embedding model's features, or a PCA of the pixels, are given),
so only linear heads are trained. For every anchor i and one of its k nearest neighbours j
(cosine, mined once in the fixed embedding):

    L = -1/|B| sum_i log <p_i, p_j>  +  entropy_weight * sum_k pbar_k log pbar_k,   pbar = mean_i p_i

i.e. consistency between neighbours plus the negative entropy of the mean prediction, which keeps
clusters from collapsing. ``heads`` heads train at once on the same batches; the one with the
lowest total loss over the whole data set is kept (SCAN's rule). Optional self-labelling (SCAN
step 3): the kept head is trained with cross-entropy on the samples whose confidence exceeds
``self_label_threshold``, class-balanced as in SCAN, with feature dropout standing in for the
strong augmentation a frozen embedding cannot receive.

Features are centred and scaled to unit mean norm first so one learning rate suits PCA and
network embeddings alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.clustering.methods import MethodInputs, MethodResult
from core.hooks import RunHooks
from core.spec import BaseSpec

__all__ = ["run_scan", "scan_loss"]

# Feature dropout during self-labelling (the "strong view" of a fixed feature vector).
_SELF_LABEL_DROPOUT = 0.25
_EPS = 1e-8


def scan_loss(
    anchor_logits: torch.Tensor, neighbour_logits: torch.Tensor, entropy_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCAN loss per head. logits: (..., B, K) each (leading dims are heads).

    Returns (total, consistency, entropy of the mean prediction), each of shape (...)."""
    pa = torch.softmax(anchor_logits, dim=-1)
    pn = torch.softmax(neighbour_logits, dim=-1)
    consistency = -torch.log((pa * pn).sum(-1).clamp_min(_EPS)).mean(-1)
    pbar = pa.mean(-2)
    entropy = -(pbar * torch.log(pbar.clamp_min(_EPS))).sum(-1)
    return consistency - entropy_weight * entropy, consistency, entropy


class _Heads(nn.Module):
    """H linear heads as one batched matmul: (B, D) -> (H, B, K)."""

    def __init__(self, d: int, k: int, h: int) -> None:
        super().__init__()
        bound = d**-0.5  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(h, d, k).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(h, 1, k).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight) + self.bias

    def extract(self, i: int) -> nn.Linear:
        lin = nn.Linear(self.weight.shape[1], self.weight.shape[2]).to(self.weight.device)
        with torch.no_grad():
            lin.weight.copy_(self.weight[i].T)
            lin.bias.copy_(self.bias[i, 0])
        return lin


def _standardise(x: torch.Tensor) -> torch.Tensor:
    x = x.float() - x.float().mean(0, keepdim=True)
    return x / x.norm(dim=1).mean().clamp_min(_EPS)


def _neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) cosine neighbours; core.sampling's chunked kNN."""
    from core.sampling import knn_indices

    return knn_indices(x, k)


def run_scan(
    inputs: MethodInputs, spec: BaseSpec, *, num_clusters: int, seed: int, hooks: RunHooks
) -> MethodResult:
    """SCAN heads on ``inputs.features`` (N, D); see module docstring. Returns probs of the kept head."""
    cfg = spec.scan
    dev = inputs.device
    x = _standardise(inputs.features.to(dev))  # (N, D)
    n, d = x.shape
    k_nn = min(cfg.knn, n - 1)
    nbrs = _neighbours(x, k_nn)  # (N, k)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    heads = _Heads(d, num_clusters, cfg.heads).to(dev)
    opt = torch.optim.Adam(heads.parameters(), lr=cfg.lr)
    bs = min(cfg.batch_size, n)
    total_epochs = cfg.epochs + (cfg.self_label_epochs if cfg.self_label else 0)
    history: list[dict[str, Any]] = []

    for epoch in range(cfg.epochs):
        hooks.check_stop("base_clustering:scan")
        perm = torch.randperm(n, generator=gen)
        pick = torch.randint(k_nn, (n,), generator=gen)  # SCAN: one random neighbour per anchor visit
        running = torch.zeros(cfg.heads)
        batches = 0
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            if idx.numel() < 2:
                continue
            nb = nbrs[idx.to(dev), pick[idx].to(dev)]  # (B,)
            losses = scan_loss(heads(x[idx.to(dev)]), heads(x[nb]), cfg.entropy_weight)[0]  # (H,)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            running += losses.detach().cpu()
            batches += 1
        mean = running / max(batches, 1)
        row = {
            "phase": "base:scan",
            "epoch": epoch + 1,
            "loss": float(mean.min()),
            "best_head": int(mean.argmin()),
        }
        history.append(row)
        hooks.on_epoch(row)
        hooks.on_progress((epoch + 1) / total_epochs, epoch + 1, total_epochs)

    # SCAN keeps the head with the lowest loss over the whole data set (all neighbours).
    with torch.no_grad():
        logits = heads(x)  # (H, N, K)
        full = scan_loss(
            logits.repeat_interleave(k_nn, dim=1), logits[:, nbrs.flatten()], cfg.entropy_weight
        )[0]
    best = int(full.argmin())
    head = heads.extract(best)
    info: dict[str, Any] = {
        "head_losses": [round(float(v), 5) for v in full],
        "kept_head": best,
        "knn": k_nn,
        "features_source": inputs.features_source,
    }

    if cfg.self_label:
        info["self_label"] = _self_label(head, x, cfg, num_clusters, gen, hooks, total_epochs)

    with torch.no_grad():
        probs = torch.softmax(head(x), dim=1).float()
    info["final_loss"] = history[-1]["loss"] if history else None
    return MethodResult(probs.argmax(1), probs, inputs.features.float(), info)


def _self_label(
    head: nn.Linear,
    x: torch.Tensor,
    cfg: Any,
    num_clusters: int,
    gen: torch.Generator,
    hooks: RunHooks,
    total_epochs: int,
) -> dict[str, Any]:
    """SCAN's self-labelling on confident samples; returns per-epoch confident counts."""
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    n = x.shape[0]
    bs = min(cfg.batch_size, n)
    counts: list[int] = []
    for epoch in range(cfg.self_label_epochs):
        hooks.check_stop("base_clustering:scan_self_label")
        with torch.no_grad():
            probs = torch.softmax(head(x), dim=1)
        conf, target = probs.max(1)
        mask = conf > cfg.self_label_threshold
        counts.append(int(mask.sum()))
        done = cfg.epochs + epoch + 1
        if counts[-1] == 0:
            hooks.on_progress(done / total_epochs, done, total_epochs)
            continue
        # Class-balanced CE (SCAN): weight each cluster by the inverse of its confident count.
        freq = torch.bincount(target[mask], minlength=num_clusters).float()
        weight = torch.where(
            freq > 0, freq.sum() / (freq * num_clusters).clamp_min(1), torch.zeros_like(freq)
        )
        conf_idx = torch.nonzero(mask).flatten().cpu()
        perm = conf_idx[torch.randperm(conf_idx.numel(), generator=gen)]
        total = 0.0
        for s in range(0, perm.numel(), bs):
            idx = perm[s : s + bs].to(x.device)
            xs = F.dropout(x[idx], p=_SELF_LABEL_DROPOUT, training=True)
            loss = F.cross_entropy(head(xs), target[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        row = {
            "phase": "base:scan_self_label",
            "epoch": done,
            "loss": total / perm.numel(),
            "confident": counts[-1],
        }
        hooks.on_epoch(row)
        hooks.on_progress(done / total_epochs, done, total_epochs)
    return {"confident_per_epoch": counts}
