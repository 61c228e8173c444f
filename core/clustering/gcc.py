"""Graph Contrastive Clustering (Zhong et al., ICCV 2021), end to end on the images.

One backbone, two heads:

representation head (RGC)  MLP -> L2-normalised (B, features_dim). Graph contrastive: an anchor's
    positives are its own augmentation *and* its neighbours in a kNN graph (with self-loops), so
    each anchor i is paired with a view of j drawn uniformly from {i} u kNN(i) and the loss is
    NT-Xent (InfoNCE, temperature ``temperature``) over the 2B views of the batch.
assignment head (AGC)  Linear -> softmax (B, K). Cluster-level graph contrast: column k of the
    anchors' assignment matrix and column k of their graph-neighbours' assignment matrix are
    positives, the other columns negatives (InfoNCE over 2K L2-normalised columns, temperature
    ``cluster_temperature``), minus ``entropy_weight`` x the entropy of the mean assignment, which
    keeps clusters from collapsing.

Views: the anchor gets weak_augment (crop + flip), its partner strong_augment (RandAugment),
both from core.augment, batched on the device. The kNN graph is built first from
``inputs.features`` (an uploaded embedding, else PCA of the pixels) and rebuilt every
``graph_update_every`` epochs from the representation head on unaugmented images.

Backbone: the uploaded embedding model's backbone and projection head (copied, fine-tuned) when
there is one (SimCLR layout), else a fresh ``default_backbone_for(H, W)`` (small_cnn for <= 16 px)
with a new projection head. With an embedding model and ``warm_start_head`` (our addition; GCC
trains from scratch), the assignment head starts at soft k-means on the backbone's features, so the
pretrained features' clusters are the starting point rather than something a random head must find
again (digits, 20 epochs from a SimCLR checkpoint: 0.884 with it, 0.710 without). Outputs: probs of
the assignment head on unaugmented images; the embedding is the representation head's output.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.augment import strong_augment, weak_augment
from core.clustering.kmeans import kmeans
from core.clustering.methods import MethodInputs, MethodResult
from core.hooks import RunHooks
from core.models import build_backbone, default_backbone_for
from core.sampling import knn_indices
from core.spec import BaseSpec

__all__ = ["GccNet", "cluster_contrastive_loss", "nt_xent", "run_gcc"]

_INFER_BATCH = 1024


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2B unit vectors: z1[i] and z2[i] are positives, every other view a negative.

    z1, z2: (B, F) L2-normalised. Scalar loss."""
    b = z1.shape[0]
    z = torch.cat([z1, z2])  # (2B, F)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-float("inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def cluster_contrastive_loss(
    p1: torch.Tensor, p2: torch.Tensor, temperature: float, entropy_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """AGC: NT-Xent over the K columns of p1 and p2 (B, K) minus entropy_weight * H(mean p).

    Returns (loss, entropy of the mean assignment)."""
    c1 = F.normalize(p1.T, dim=1)  # (K, B)
    c2 = F.normalize(p2.T, dim=1)
    contrast = nt_xent(c1, c2, temperature)
    pbar = torch.cat([p1, p2]).mean(0)
    entropy = -(pbar * torch.log(pbar.clamp_min(1e-8))).sum()
    return contrast - entropy_weight * entropy, entropy


class GccNet(nn.Module):
    """Normalisation + backbone + representation head (MLP) + assignment head (Linear)."""

    def __init__(
        self,
        backbone: nn.Module,
        backbone_dim: int,
        rep_head: nn.Module,
        num_clusters: int,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rep_head = rep_head
        self.cluster_head = nn.Linear(backbone_dim, num_clusters)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("std", std.reshape(1, -1, 1, 1).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1] -> (unit representation (B, F), cluster logits (B, K))."""
        h = self.backbone((x - self.mean) / self.std)
        return F.normalize(self.rep_head(h), dim=1), self.cluster_head(h)


def _build(inputs: MethodInputs, num_clusters: int, features_dim: int) -> tuple[GccNet, str]:
    x = inputs.pixels()
    emb = inputs.embedding_model
    if emb is not None:
        net = GccNet(
            copy.deepcopy(emb.backbone),
            emb.backbone_dim,
            copy.deepcopy(emb.contrastive_head),
            num_clusters,
            emb.mean.flatten(),
            emb.std.flatten(),
        )
        return net, inputs.features_source
    _, c, h, w = x.shape
    bb, dim = build_backbone(default_backbone_for(h, w), in_channels=c)
    rep = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, features_dim))
    mean, std = inputs.fresh_stats()
    return GccNet(bb, dim, rep, num_clusters, mean, std), "new"


@torch.no_grad()
def _infer(net: GccNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    was = net.training
    net.eval()
    reps, probs = [], []
    for s in range(0, x.shape[0], _INFER_BATCH):
        r, logits = net(x[s : s + _INFER_BATCH])
        reps.append(r.float())
        probs.append(torch.softmax(logits.float(), dim=1))
    net.train(was)
    return torch.cat(reps), torch.cat(probs)


@torch.no_grad()
def _warm_start_head(net: GccNet, x: torch.Tensor, k: int, seed: int) -> dict[str, Any]:
    """Set the assignment head to soft k-means on the backbone features h (N, D) of ``x``.

    softmax(W h + b) with W = 2 mu / t and b = -|mu|^2 / t equals softmax(-|h - mu|^2 / t), because
    the dropped -|h|^2 / t is the same for every cluster; t is the mean squared distance to the
    nearest centroid. A pretrained backbone's features already cluster well (k-means reaches most
    of what the method will); a random head would spend most of GCC's epochs rediscovering them.
    """
    was = net.training
    net.eval()
    h = torch.cat(
        [
            net.backbone((x[s : s + _INFER_BATCH] - net.mean) / net.std)
            for s in range(0, x.shape[0], _INFER_BATCH)
        ]
    )
    net.train(was)
    km = kmeans(h.float(), k, restarts=5, seed=seed)
    mu = km.centroids
    t = max(km.inertia / h.shape[0], 1e-8)
    net.cluster_head.weight.copy_(2.0 * mu / t)
    net.cluster_head.bias.copy_(-(mu * mu).sum(1) / t)
    return {"kmeans_inertia": km.inertia, "temperature": t}


def run_gcc(
    inputs: MethodInputs, spec: BaseSpec, *, num_clusters: int, seed: int, hooks: RunHooks
) -> MethodResult:
    """GCC on ``inputs.images01`` (N, C, H, W); see module docstring."""
    cfg = spec.gcc
    dev = inputs.device
    x = inputs.pixels()
    n = x.shape[0]
    torch.manual_seed(seed)
    net, source = _build(inputs, num_clusters, cfg.features_dim)
    net = net.to(dev)
    warm: dict[str, Any] | None = None
    if cfg.warm_start_head and inputs.embedding_model is not None:
        warm = _warm_start_head(net, x, num_clusters, seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator(device=dev).manual_seed(seed)
    cpu_gen = torch.Generator().manual_seed(seed)
    k_nn = min(cfg.knn, n - 1)
    graph = knn_indices(inputs.features.to(dev).float(), k_nn)  # (N, k)
    bs = min(cfg.batch_size, n)
    history: list[dict[str, Any]] = []
    net.train()
    for epoch in range(cfg.epochs):
        hooks.check_stop("base_clustering:gcc")
        if epoch > 0 and epoch % cfg.graph_update_every == 0:
            graph = knn_indices(_infer(net, x)[0], k_nn)
        perm = torch.randperm(n, generator=cpu_gen).to(dev)
        # partner of each anchor: itself (column 0, the self-loop) or one of its k graph neighbours
        col = torch.randint(k_nn + 1, (n,), generator=cpu_gen).to(dev)
        partner_all = torch.where(
            col == 0, torch.arange(n, device=dev), graph[torch.arange(n, device=dev), col.clamp_min(1) - 1]
        )
        tot = {"loss": 0.0, "rgc": 0.0, "agc": 0.0, "entropy": 0.0}
        steps = 0
        n_full = n // bs * bs if n >= 2 * bs else n  # BatchNorm and NT-Xent want full batches
        for s in range(0, n_full, bs):
            idx = perm[s : s + bs]
            if idx.numel() < 4:
                break
            va = weak_augment(x[idx], generator=gen)
            vb = strong_augment(x[partner_all[idx]], generator=gen)
            r, logits = net(torch.cat([va, vb]))
            ra, rb = r.chunk(2)
            pa, pb = torch.softmax(logits, dim=1).chunk(2)
            rgc = nt_xent(ra, rb, cfg.temperature)
            agc, ent = cluster_contrastive_loss(pa, pb, cfg.cluster_temperature, cfg.entropy_weight)
            loss = rgc + agc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for key, v in (("loss", loss), ("rgc", rgc), ("agc", agc), ("entropy", ent)):
                tot[key] += float(v.detach())
            steps += 1
        row = {"phase": "base:gcc", "epoch": epoch + 1, **{k: v / max(steps, 1) for k, v in tot.items()}}
        history.append(row)
        hooks.on_epoch(row)
        hooks.on_progress((epoch + 1) / cfg.epochs, epoch + 1, cfg.epochs)
    reps, probs = _infer(net, x)
    info = {
        "backbone_source": source,
        "knn": k_nn,
        "warm_start_head": warm,
        "final": history[-1] if history else None,
    }
    return MethodResult(probs.argmax(1), probs, reps, info)
