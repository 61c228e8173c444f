"""DEC, IDEC and DCN on an autoencoder, with optional BRB soft resets.

Input vectors: the uploaded embedding model's features, or the dataset's precomputed features,
when there are any (standardised to unit mean norm x sqrt(D)), else the flattened pixels in
[0, 1]. An MLP autoencoder is pre-trained on reconstruction (MSE), k-means in its latent space
gives the initial centroids mu (K, d), then:

DEC  (Xie et al. 2016)  q_ij = (1 + ||z_i - mu_j||^2 / a)^(-(a+1)/2), normalised over j (Student-t);
     target p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), f_j = sum_i q_ij, recomputed on all
     data every ``target_update_every`` epochs; loss KL(P || Q); encoder and mu train, the decoder
     is dropped.
IDEC (Guo et al. 2017)  DEC's KL times gamma (0.1) plus the reconstruction loss, decoder kept.
DCN  (Yang et al. 2017)  reconstruction + dcn_weight/2 ||z_i - mu_{s_i}||^2 with hard assignments
     s_i = nearest centroid; after each network step, the centroids of the batch's clusters move
     towards their members with per-cluster step 1 / count_k (DCN's alternating update).

BRB (Miklautz et al., ICLR 2025): every ``reset_interval`` clustering epochs (T), the encoder's
weights are soft-reset theta <- alpha theta + (1 - alpha) theta_rand with a fresh random
initialisation theta_rand (all encoder layers but the embedding layer, BRB's default for MLP
autoencoders), then (``recluster``) k-means in the new latent space re-places the centroids and
DEC's target is recomputed from them, and (``reset_momentum``) the centroids' optimiser momentum
is zeroed (Adam moments for DEC/IDEC, step count kept as in BRB; the per-cluster counts that set
DCN's centroid step). Resets happen at epochs T, 2T, ... < epochs, so when T divides the budget
the last one is followed by T epochs of recovery; the assignment is read after the last epoch.

Outputs: probs = Q for DEC/IDEC; for DCN a softmax over negative squared latent distances with
temperature = mean squared distance to the own centroid (as core.clustering.kmeans). The
embedding for metric sampling is the latent code z (N, d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from core.clustering.kmeans import kmeans, soft_assign
from core.clustering.methods import MethodInputs, MethodResult
from core.hooks import RunHooks
from core.models.autoencoder import MlpAutoencoder
from core.spec import BaseSpec, BrbSpec, DeepClusteringSpec

__all__ = [
    "DeepMethod",
    "deep_cluster",
    "input_vectors",
    "pretrain_autoencoder",
    "reset_adam_moments",
    "run_dcn",
    "run_dec",
    "run_idec",
    "soft_reset",
    "student_t",
    "target_distribution",
]

DeepMethod = Literal["dec", "idec", "dcn"]
# k-means restarts for the initial centroids and every BRB reclustering.
_KMEANS_RESTARTS = 5


def student_t(z: torch.Tensor, mu: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """DEC's soft assignment Q (B, K) of z (B, d) to centroids mu (K, d), Eq. (1) of Xie et al."""
    d2 = torch.cdist(z, mu).pow(2)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's auxiliary target P (N, K) from Q (N, K), Eq. (3): q^2 / cluster frequency, row-normalised."""
    w = q.pow(2) / q.sum(0, keepdim=True)
    return w / w.sum(1, keepdim=True)


@torch.no_grad()
def soft_reset(
    module: nn.Module, alpha: float, gen: torch.Generator, *, reset_embedding: bool = False
) -> list[str]:
    """theta <- alpha * theta + (1 - alpha) * phi for the Linear/Conv layers of ``module``.

    phi is a fresh draw from PyTorch's default initialisation of that layer (weight and bias
    U(-b, b), b = 1 / sqrt(fan_in)) from ``gen``. As in BRB's defaults (reset_embedding off), the
    last layer, the one that outputs the embedding z, keeps its weights: the reset perturbs the
    features it reads rather than rotating the latent space itself. Returns the reset layers' names."""
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not reset_embedding:
        layers = layers[:-1]
    for _, layer in layers:
        bound = 1.0 / math.sqrt(layer.weight[0].numel())
        rand_w = (torch.rand(layer.weight.shape, generator=gen) * 2 - 1) * bound
        layer.weight.mul_(alpha).add_((1 - alpha) * rand_w.to(layer.weight.device))
        if layer.bias is not None:
            rand_b = (torch.rand(layer.bias.shape, generator=gen) * 2 - 1) * bound
            layer.bias.mul_(alpha).add_((1 - alpha) * rand_b.to(layer.bias.device))
    return [name for name, _ in layers]


def input_vectors(inputs: MethodInputs) -> tuple[torch.Tensor, str]:
    """(N, D) vectors the autoencoder reconstructs, and where they come from."""
    # Learned features (an embedding model's or the dataset's) are what to cluster; a PCA of the
    # pixels is only a stand-in for them, so then the autoencoder reads the pixels themselves.
    if inputs.embedding_model is not None or inputs.features_source != "pca" or inputs.images01 is None:
        f = inputs.features.float()
        f = f - f.mean(0, keepdim=True)
        # unit variance per dimension on average, like pixels' spread around their mean
        return f / f.pow(2).mean().sqrt().clamp_min(1e-8), inputs.features_source
    return inputs.pixels().flatten(1).float(), "pixels"


def pretrain_autoencoder(
    x: torch.Tensor,
    cfg: DeepClusteringSpec,
    *,
    seed: int,
    hooks: RunHooks,
    total_epochs: int,
) -> tuple[MlpAutoencoder, list[float]]:
    """Autoencoder (cfg.hidden_dims, cfg.latent_dim) trained cfg.pretrain_epochs on MSE with Adam.

    x: (N, D) on the target device. Returns the model and the per-epoch mean loss."""
    torch.manual_seed(seed)
    ae = MlpAutoencoder(x.shape[1], cfg.hidden_dims, cfg.latent_dim).to(x.device)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    n, bs = x.shape[0], min(cfg.batch_size, x.shape[0])
    losses: list[float] = []
    for epoch in range(cfg.pretrain_epochs):
        hooks.check_stop("base_clustering:pretrain")
        perm = torch.randperm(n, generator=gen).to(x.device)
        total = 0.0
        for s in range(0, n, bs):
            xb = x[perm[s : s + bs]]
            loss = F.mse_loss(ae(xb)[1], xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * xb.shape[0]
        losses.append(total / n)
        hooks.on_epoch({"phase": "base:pretrain", "epoch": epoch + 1, "loss": losses[-1]})
        hooks.on_progress((epoch + 1) / total_epochs, epoch + 1, total_epochs)
    return ae, losses


def _recluster(ae: MlpAutoencoder, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    return kmeans(ae.encode(x), k, restarts=_KMEANS_RESTARTS, seed=seed).centroids


@dataclass
class _Training:
    """What the clustering epochs update: the autoencoder, the centroids and their optimisers."""

    ae: MlpAutoencoder
    mu: nn.Parameter  # (K, d)
    opt: torch.optim.Optimizer  # encoder (and decoder for IDEC/DCN)
    # The centroids get their own optimiser so BRB can clear exactly their momentum (DEC/IDEC);
    # None for DCN, whose centroids move by _dcn_centroid_step.
    mu_opt: torch.optim.Optimizer | None
    counts: torch.Tensor  # (K,) DCN's per-cluster update counts
    gen: torch.Generator  # batch order and BRB's random initialisations


def _start_training(
    ae: MlpAutoencoder, x: torch.Tensor, method: DeepMethod, cfg: DeepClusteringSpec, k: int, seed: int
) -> _Training:
    """Initial centroids by k-means in the latent space, and the optimisers."""
    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    mu = nn.Parameter(_recluster(ae, x, k, seed))  # (K, d)
    uses_decoder = method in ("idec", "dcn")
    net_params = list(ae.encoder.parameters()) + (list(ae.decoder.parameters()) if uses_decoder else [])
    opt = torch.optim.Adam(net_params, lr=cfg.lr)
    mu_opt = torch.optim.Adam([mu], lr=cfg.lr) if method != "dcn" else None
    counts = torch.ones(k, device=x.device)
    return _Training(ae, mu, opt, mu_opt, counts, gen)


def _brb_reset(t: _Training, brb: BrbSpec, x: torch.Tensor, k: int, seed: int) -> list[str]:
    """BRB's soft reset of the encoder, then the optional reclustering and momentum reset.

    ``seed`` seeds the reclustering's k-means. Returns the reset layers' names."""
    layers = soft_reset(t.ae.encoder, brb.alpha, t.gen)
    if brb.recluster:
        with torch.no_grad():
            t.mu.copy_(_recluster(t.ae, x, k, seed))
    if brb.reset_momentum:
        if t.mu_opt is not None:
            reset_adam_moments(t.mu_opt, t.mu)
        t.counts.fill_(1.0)
    return layers


def _train_epoch(
    t: _Training, x: torch.Tensor, method: DeepMethod, cfg: DeepClusteringSpec, p_target: torch.Tensor | None
) -> float:
    """One pass over x in a random order; returns the summed (not averaged) batch losses x sizes."""
    n, bs = x.shape[0], min(cfg.batch_size, x.shape[0])
    ae, mu = t.ae, t.mu
    perm = torch.randperm(n, generator=t.gen).to(x.device)
    run_loss = 0.0
    for s in range(0, n, bs):
        idx = perm[s : s + bs]
        xb = x[idx]
        z, rec = ae(xb)
        if method == "dcn":
            with torch.no_grad():
                s_i = torch.cdist(z, mu).argmin(1)
            km_loss = (z - mu.detach()[s_i]).pow(2).sum(1).mean()
            loss = F.mse_loss(rec, xb) + cfg.dcn_weight / 2 * km_loss
        else:
            assert p_target is not None
            q = student_t(z, mu, cfg.student_t_alpha)
            kl = F.kl_div(q.clamp_min(1e-12).log(), p_target[idx], reduction="batchmean")
            loss = kl if method == "dec" else F.mse_loss(rec, xb) + cfg.gamma * kl
        t.opt.zero_grad(set_to_none=True)
        if t.mu_opt is not None:
            t.mu_opt.zero_grad(set_to_none=True)
        loss.backward()
        t.opt.step()
        if t.mu_opt is not None:
            t.mu_opt.step()
        else:
            _dcn_centroid_step(mu, t.counts, z.detach(), s_i)
        run_loss += float(loss.detach()) * idx.numel()
    return run_loss


@torch.no_grad()
def _final_assignment(
    t: _Training, x: torch.Tensor, method: DeepMethod, cfg: DeepClusteringSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs (N, K), z (N, d)) after the last epoch (see the module docstring's Outputs)."""
    z_all = t.ae.encode(x)
    if method == "dcn":
        d2 = torch.cdist(z_all, t.mu).pow(2)
        temp = float(d2.min(1).values.mean().clamp_min(1e-12))
        probs = soft_assign(z_all, t.mu.detach(), temp)
    else:
        probs = student_t(z_all, t.mu, cfg.student_t_alpha)
    return probs, z_all


def deep_cluster(
    x: torch.Tensor,
    method: DeepMethod,
    cfg: DeepClusteringSpec,
    brb: BrbSpec,
    *,
    num_clusters: int,
    seed: int,
    hooks: RunHooks | None = None,
    pretrained: MlpAutoencoder | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Run DEC / IDEC / DCN on x (N, D) (see module docstring).

    ``pretrained``: an already pre-trained autoencoder (modified in place), skipping pre-training.
    Returns (probs (N, K), latent z (N, d), info)."""
    hooks = hooks or RunHooks()
    k = num_clusters
    pre_epochs = 0 if pretrained is not None else cfg.pretrain_epochs
    total = pre_epochs + cfg.epochs
    info: dict[str, Any] = {"method": method, "brb": brb.enabled}
    if pretrained is None:
        ae, pre_losses = pretrain_autoencoder(x, cfg, seed=seed, hooks=hooks, total_epochs=total)
        info["pretrain_final_loss"] = pre_losses[-1] if pre_losses else None
    else:
        ae = pretrained
    t = _start_training(ae, x, method, cfg, k, seed)
    n = x.shape[0]
    p_target: torch.Tensor | None = None
    resets: list[int] = []
    prev_labels: torch.Tensor | None = None
    run_loss = 0.0

    for epoch in range(cfg.epochs):
        hooks.check_stop(f"base_clustering:{method}")
        if brb.enabled and epoch > 0 and epoch % brb.reset_interval == 0:
            info["brb_reset_layers"] = _brb_reset(t, brb, x, k, seed + epoch)
            p_target = None  # the target must follow the new centroids
            resets.append(epoch)
        if method != "dcn" and (p_target is None or epoch % cfg.target_update_every == 0):
            with torch.no_grad():
                p_target = target_distribution(student_t(ae.encode(x), t.mu, cfg.student_t_alpha))
        run_loss = _train_epoch(t, x, method, cfg, p_target)
        with torch.no_grad():
            labels = torch.cdist(ae.encode(x), t.mu).argmin(1)
        changed = float((labels != prev_labels).float().mean()) if prev_labels is not None else 1.0
        prev_labels = labels
        row = {
            "phase": f"base:{method}",
            "epoch": pre_epochs + epoch + 1,
            "loss": run_loss / n,
            "changed": changed,
        }
        hooks.on_epoch(row)
        hooks.on_progress((pre_epochs + epoch + 1) / total, pre_epochs + epoch + 1, total)

    probs, z_all = _final_assignment(t, x, method, cfg)
    info.update({"brb_resets": resets, "final_loss": run_loss / n if cfg.epochs else None})
    return probs.float(), z_all.float(), info


@torch.no_grad()
def reset_adam_moments(opt: torch.optim.Optimizer, param: torch.Tensor) -> None:
    """BRB's momentum reset: zero Adam's first and second moments of ``param`` (here the
    centroids (K, d)); the step count stays, as in BRB (its reset_momentum_counts is off)."""
    for key, value in opt.state.get(param, {}).items():
        if key != "step":
            value.zero_()


@torch.no_grad()
def _dcn_centroid_step(mu: nn.Parameter, counts: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> None:
    """DCN's centroid update, one sample at a time in effect: mu_k <- mu_k - (1/c_k)(mu_k - z_i).

    Vectorised per cluster: for the m_k batch members of cluster k applied sequentially, the result
    equals moving mu_k to the weighted mean of old mu_k (weight c_k) and its members (weight 1 each)."""
    k = mu.shape[0]
    m = torch.bincount(s, minlength=k).to(counts.dtype)
    sums = torch.zeros_like(mu).index_add_(0, s, z)
    has = m > 0
    new = (mu * counts[:, None] + sums) / (counts + m)[:, None]
    mu[has] = new[has]
    counts += m


def _run(
    name: DeepMethod, inputs: MethodInputs, spec: BaseSpec, num_clusters: int, seed: int, hooks: RunHooks
):
    x, source = input_vectors(inputs)
    probs, z, info = deep_cluster(
        x.to(inputs.device), name, spec.deep, spec.brb, num_clusters=num_clusters, seed=seed, hooks=hooks
    )
    info["input"] = source
    return MethodResult(probs.argmax(1), probs, z, info)


def run_dec(
    inputs: MethodInputs, spec: BaseSpec, *, num_clusters: int, seed: int, hooks: RunHooks
) -> MethodResult:
    """DEC (KL to the sharpened target) on the pre-trained encoder; BRB per ``spec.brb``."""
    return _run("dec", inputs, spec, num_clusters, seed, hooks)


def run_idec(
    inputs: MethodInputs, spec: BaseSpec, *, num_clusters: int, seed: int, hooks: RunHooks
) -> MethodResult:
    """IDEC: DEC's KL (weight gamma) plus reconstruction; BRB per ``spec.brb``."""
    return _run("idec", inputs, spec, num_clusters, seed, hooks)


def run_dcn(
    inputs: MethodInputs, spec: BaseSpec, *, num_clusters: int, seed: int, hooks: RunHooks
) -> MethodResult:
    """DCN: reconstruction plus the k-means loss with alternating centroid updates; BRB per ``spec.brb``."""
    return _run("dcn", inputs, spec, num_clusters, seed, hooks)
