"""Anchor Neighbourhood Discovery (Huang, Dong, Gong & Zhu, ICML 2019), then k-means.

A network f (backbone + linear projection, L2-normalised (B, features_dim)) and a memory bank
V (N, features_dim) of every sample's feature define a non-parametric classifier that treats each
sample as its own class:

    p(j | x_i) = exp(v_j . f(x_i) / T) / sum_k exp(v_k . f(x_i) / T)          (AND Eq. (1), T = 0.1)

Round 0 is instance discrimination: L = -log p(i | x_i). Each later round r = 1..R:

1. neighbourhood discovery: every sample's anchor neighbourhood is itself plus its ``neighbours``
   nearest memory entries (cosine; AND's k = 1);
2. curriculum: the neighbourhoods are ranked by consistency, measured as the entropy of the
   classifier's prediction for the anchor, H(x_i) = -sum_j p(j|x_i) log p(j|x_i) (low entropy =
   the anchor's mass sits on few samples = a consistent neighbourhood); the lowest-entropy r/R
   share are selected, so the share grows round by round to all of them;
3. neighbourhood supervision: a selected anchor's loss is -log sum_{j in N(i) u {i}} p(j | x_i);
   the others keep the instance loss.

The memory is updated after every step: v_i <- normalise(m v_i + (1 - m) f(x_i)), m = 0.5 (AND).
Inputs are weakly augmented (core.augment.weak_augment) during training.

AND learns features, not clusters. The cluster assignment here is k-means (K = num_clusters, which
the pipeline may have chosen with auto-K on the same features) on the final memory bank; probs are
k-means' distance-softmax (core.clustering.kmeans) and the embedding is the memory bank.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.augment import weak_augment
from core.clustering.kmeans import kmeans
from core.clustering.methods import MethodInputs, MethodResult
from core.hooks import RunHooks
from core.models import build_backbone, default_backbone_for
from core.spec import BaseSpec

__all__ = ["AndNet", "neighbourhood_loss", "prediction_entropy", "run_and", "select_anchors"]

_CHUNK = 2048
_INFER_BATCH = 1024
_KMEANS_RESTARTS = 10


class AndNet(nn.Module):
    """Normalisation + backbone + linear projection; forward -> (B, features_dim) unit vectors."""

    def __init__(
        self, backbone: nn.Module, dim: int, features_dim: int, mean: torch.Tensor, std: torch.Tensor
    ):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(dim, features_dim)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("std", std.reshape(1, -1, 1, 1).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.backbone((x - self.mean) / self.std)), dim=1)


def neighbourhood_loss(
    feats: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor, hood: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean of -log sum_{j in hood_b} p(j | x_b) over the batch.

    feats: (B, F) unit. memory: (N, F). idx: (B,) the samples' own indices. hood: (B, M) indices of
    each sample's neighbourhood members (its own index included; entries < 0 are padding)."""
    logp = torch.log_softmax(feats @ memory.T / temperature, dim=1)  # (B, N)
    mask = hood >= 0
    members = logp.gather(1, hood.clamp_min(0)).masked_fill(~mask, -float("inf"))  # (B, M)
    return -torch.logsumexp(members, dim=1).mean()


@torch.no_grad()
def prediction_entropy(memory: torch.Tensor, temperature: float) -> torch.Tensor:
    """H(x_i) of the non-parametric classifier with f(x_i) ~ v_i, (N,), chunked over rows."""
    out = []
    for s in range(0, memory.shape[0], _CHUNK):
        logp = torch.log_softmax(memory[s : s + _CHUNK] @ memory.T / temperature, dim=1)
        out.append(-(logp.exp() * logp).sum(1))
    return torch.cat(out)


@torch.no_grad()
def select_anchors(
    memory: torch.Tensor, share: float, temperature: float, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Curriculum step: (hood (N, k+1) self first then k cosine neighbours, with -1 rows for the
    samples whose neighbourhood is not selected this round; selected mask (N,))."""
    from core.sampling import knn_indices

    n = memory.shape[0]
    nbrs = knn_indices(memory, k)  # (N, k)
    own = torch.arange(n, device=memory.device)[:, None]
    hood = torch.cat([own, nbrs], dim=1)
    ent = prediction_entropy(memory, temperature)
    n_sel = int(round(share * n))
    selected = torch.zeros(n, dtype=torch.bool, device=memory.device)
    selected[torch.argsort(ent, stable=True)[:n_sel]] = True
    hood[~selected, 1:] = -1  # unselected: instance supervision only
    return hood, selected


def _build(inputs: MethodInputs, features_dim: int) -> tuple[AndNet, str]:
    x = inputs.pixels()
    emb = inputs.embedding_model
    if emb is not None:
        return AndNet(
            copy.deepcopy(emb.backbone), emb.backbone_dim, features_dim, emb.mean.flatten(), emb.std.flatten()
        ), inputs.features_source
    _, c, h, w = x.shape
    bb, dim = build_backbone(default_backbone_for(h, w), in_channels=c)
    mean, std = inputs.fresh_stats()
    return AndNet(bb, dim, features_dim, mean, std), "new"


@torch.no_grad()
def _infer(net: AndNet, x: torch.Tensor) -> torch.Tensor:
    was = net.training
    net.eval()
    out = torch.cat([net(x[s : s + _INFER_BATCH]) for s in range(0, x.shape[0], _INFER_BATCH)])
    net.train(was)
    return out


def run_and(
    inputs: MethodInputs, spec: BaseSpec, *, num_clusters: int, seed: int, hooks: RunHooks
) -> MethodResult:
    """AND rounds 0..R on ``inputs.images01`` (N, C, H, W), then k-means on the memory (module docstring)."""
    cfg = spec.and_
    dev = inputs.device
    x = inputs.pixels()
    n = x.shape[0]
    torch.manual_seed(seed)
    net, source = _build(inputs, cfg.features_dim)
    net = net.to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=dev).manual_seed(seed)
    cpu_gen = torch.Generator().manual_seed(seed)
    memory = _infer(net, x)  # (N, F)
    k_nn = min(cfg.neighbours, n - 1)
    total = (cfg.rounds + 1) * cfg.epochs_per_round
    bs = min(cfg.batch_size, n)
    n_full = n // bs * bs if n >= 2 * bs else n  # BatchNorm wants full batches
    rounds: list[dict[str, Any]] = []
    epoch_no = 0
    for rnd in range(cfg.rounds + 1):
        share = rnd / cfg.rounds if cfg.rounds else 0.0
        hood, selected = select_anchors(memory, share, cfg.temperature, k_nn)
        rounds.append({"round": rnd, "selected": int(selected.sum()), "share": round(share, 4)})
        for _ in range(cfg.epochs_per_round):
            hooks.check_stop("base_clustering:and")
            perm = torch.randperm(n, generator=cpu_gen).to(dev)
            run_loss, steps = 0.0, 0
            for s in range(0, n_full, bs):
                idx = perm[s : s + bs]
                if idx.numel() < 2:
                    break
                f = net(weak_augment(x[idx], generator=gen))
                loss = neighbourhood_loss(f, memory, idx, hood[idx], cfg.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    memory[idx] = F.normalize(
                        cfg.memory_momentum * memory[idx] + (1 - cfg.memory_momentum) * f, dim=1
                    )
                run_loss += float(loss.detach())
                steps += 1
            epoch_no += 1
            row = {"phase": "base:and", "epoch": epoch_no, "round": rnd, "loss": run_loss / max(steps, 1)}
            hooks.on_epoch(row)
            hooks.on_progress(epoch_no / total, epoch_no, total)
    km = kmeans(memory, num_clusters, restarts=_KMEANS_RESTARTS, seed=seed)
    info = {"backbone_source": source, "rounds": rounds, "kmeans_inertia": km.inertia}
    return MethodResult(km.labels, km.probs, memory.float(), info)
