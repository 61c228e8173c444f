"""The mutable state of one RUC run and its round trip through the epoch checkpoint."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.hooks import RunHooks
from core.models import ClusteringModel
from core.models.folding import fold_batchnorm
from core.ruc.losses import minmax_normalise
from core.ruc.state import RucState, load_state
from core.ruc.views import Views


@dataclass
class Runtime:
    """Training state shared by the passes of one run (tensors on the device)."""

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
    views: Views  # rows and weak/strong views of the data (images or features)
    fold_batchnorm: bool = False  # label guessing on BatchNorm-folded copies (core.ruc.perf)

    def nograd_net(self, k: int) -> torch.nn.Module:
        """Network k for forwards without gradients in eval mode: a folded copy (valid until k's
        next optimiser step) or the network itself, switched to eval mode."""
        if self.fold_batchnorm:
            return fold_batchnorm(self.nets[k])
        return self.nets[k].eval()

    def table_weight(self, slot: int) -> torch.Tensor:
        """w of Eq. (11) for every sample: table ``slot``'s max probability, min-max normalised (N,).

        All zeros while that table is empty (the network has not trained yet).
        """
        if not bool(self.ready[slot]):
            return torch.zeros(self.table.shape[1], device=self.table.device)
        return minmax_normalise(self.table[slot].max(dim=1).values)

    def snapshot(self, fingerprint: str, epoch: int, per_epoch: list[dict[str, Any]]) -> RucState:
        return RucState(
            fingerprint=fingerprint,
            epoch=epoch,
            nets=[{k: v.detach().cpu().clone() for k, v in net.state_dict().items()} for net in self.nets],
            optimizers=[_cpu_tree(opt.state_dict()) for opt in self.optimizers],
            clean_mask=self.clean.cpu().clone(),
            pseudo_labels=self.pseudo.cpu().clone(),
            table=self.table.cpu().clone(),
            ready=self.ready.cpu().clone(),
            rng={"torch_generator": self.generator.get_state(), "numpy": self.np_rng.bit_generator.state},
            per_epoch=copy.deepcopy(per_epoch),
        )

    def restore(self, state: RucState) -> None:
        dev = self.clean.device
        for net, sd in zip(self.nets, state.nets, strict=True):
            net.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, state.optimizers, strict=True):
            opt.load_state_dict(sd)
        self.clean = state.clean_mask.to(dev)
        self.pseudo = state.pseudo_labels.to(dev)
        self.table = state.table.to(dev)
        self.ready = state.ready.to(dev)
        self.generator.set_state(state.rng["torch_generator"])
        self.np_rng.bit_generator.state = state.rng["numpy"]


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


def try_resume(path: Path, fingerprint: str, n_nets: int, hooks: RunHooks) -> RucState | None:
    """The checkpoint at ``path`` when it belongs to this run, else None (with a warning event)."""
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
