"""A SimCLR embedding model trained here, for jobs that upload none (SCAN's pretext step).

SimCLR (Chen et al., 2020) as SCAN uses it for its first step: two RandAugment views of every image
in a batch, the backbone plus a 2-layer MLP projection (core.models.EmbeddingModel, SCAN's key
layout), NT-Xent over the 2B L2-normalised projections, each view's positive its sibling and the
other 2B - 2 views its negatives. Adam instead of SimCLR's LARS: LARS pays off only at batch
sizes in the thousands, and Adam needs no warm-up at the few-hundred batches this runs with.

The result takes the place of an uploaded embedding model: k-means, auto-K and every method
cluster its features, metric sampling searches its space, GCC and AND fine-tune it, and the base
network starts from its backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.augment import strong_augment
from core.clustering.gcc import nt_xent
from core.hooks import RunHooks
from core.models import (
    EmbeddingModel,
    build_backbone,
    check_input_size,
    default_backbone_for,
    image_statistics,
)
from core.spec import BackboneName, PretextSpec

__all__ = ["train_simclr"]


def train_simclr(
    images01: torch.Tensor,
    cfg: PretextSpec,
    *,
    backbone: BackboneName | None,
    seed: int,
    hooks: RunHooks | None = None,
    normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[EmbeddingModel, list[dict[str, Any]]]:
    """Train an EmbeddingModel on images01 (N, C, H, W) in [0, 1] with NT-Xent.

    backbone: the backbone to build (None: by image size, as for the base network). Per epoch,
    ``hooks.on_epoch`` gets {"phase": "base:pretext", "epoch", "loss"} and ``hooks.on_progress``
    the fraction of ``cfg.epochs`` done; ``hooks.should_stop`` is checked before every epoch.
    normalisation: (mean, std) of the model's inputs (None: the images' per-channel statistics).
    Returns the model in eval mode on images01's device and the per-epoch rows.
    """
    hooks = hooks or RunHooks()
    n, c, h, w = images01.shape
    dev = images01.device
    torch.manual_seed(seed)
    name = backbone or default_backbone_for(h, w)
    check_input_size(name, height=h, width=w, field="base.backbone")
    bb, dim = build_backbone(name, in_channels=c)
    mean, std = normalisation or image_statistics(images01, channels_last=False)
    model = EmbeddingModel(bb, dim, features_dim=cfg.features_dim, mean=mean, std=std).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    bs = min(cfg.batch_size, n)
    # Whole batches only: NT-Xent's negatives and BatchNorm both degrade on a small last batch.
    n_full = n // bs * bs
    rows: list[dict[str, Any]] = []
    model.train()
    for epoch in range(cfg.epochs):
        hooks.check_stop("base_clustering:pretext")
        perm = torch.randperm(n, generator=order_gen).to(dev)
        total, steps = 0.0, 0
        for s in range(0, n_full, bs):
            xb = images01[perm[s : s + bs]]
            z1 = model(strong_augment(xb, generator=gen))
            z2 = model(strong_augment(xb, generator=gen))
            loss = nt_xent(z1, z2, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        row = {"phase": "base:pretext", "epoch": epoch + 1, "loss": total / max(steps, 1)}
        rows.append(row)
        hooks.on_epoch(row)
        hooks.on_progress((epoch + 1) / cfg.epochs, epoch + 1, cfg.epochs)
    return model.eval(), rows
