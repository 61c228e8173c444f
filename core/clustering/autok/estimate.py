"""Entry point: sample the features, run the estimators, censor their votes, take the consensus."""

from __future__ import annotations

from typing import Any

import torch

from core.clustering.autok.consensus import AutoKResult, Vote, censor, decide
from core.clustering.autok.dpmeans import dpmeans_k
from core.clustering.autok.silhouette import silhouette_k
from core.clustering.autok.spectral import eigengap_k
from core.clustering.autok.splitting import gmeans_k, xmeans_k
from core.hooks import RunHooks
from core.spec import AutoKSpec


def _run_one(
    name: str, x: torch.Tensor, k_min: int, k_max: int, spec: AutoKSpec, seed: int
) -> tuple[int, dict[str, Any]]:
    if name == "silhouette":
        return silhouette_k(x, k_min, k_max, seed=seed)
    if name == "eigengap":
        return eigengap_k(x, k_min, k_max)
    if name == "xmeans":
        return xmeans_k(x, k_min, k_max, seed=seed)
    if name == "gmeans":
        return gmeans_k(x, k_min, k_max, seed=seed)
    if name == "dpmeans":
        return dpmeans_k(x, k_min, k_max, lam=spec.dpmeans_lambda)
    raise ValueError(f"unknown estimator {name!r}")  # AutoKSpec's Literal forbids it


def estimate_k(
    x: torch.Tensor, spec: AutoKSpec, *, seed: int = 0, hooks: RunHooks | None = None
) -> AutoKResult:
    """Estimate the cluster count of features x (N, D) (see the package docstring).

    Runs on CPU in float32 on a seeded sample of at most ``spec.sample_cap`` rows; every vote is
    clipped to [k_min, k_max] (k_max also to N - 1), censored at a bound (consensus module) and the
    consensus taken over the uncensored ones. Reports progress after each estimator and honours
    ``hooks.should_stop``."""
    hooks = hooks or RunHooks()
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"x must be (N >= 3, D); got shape {tuple(x.shape)}")
    gen = torch.Generator().manual_seed(seed)
    x = x.detach().float().cpu()
    if x.shape[0] > spec.sample_cap:
        x = x[torch.randperm(x.shape[0], generator=gen)[: spec.sample_cap]]
    n = x.shape[0]
    k_max = max(2, min(spec.k_max, n - 1))
    k_min = min(spec.k_min, k_max)
    records: dict[str, Vote] = {}
    details: dict[str, Any] = {"k_min": k_min, "k_max": k_max}
    for i, name in enumerate(spec.estimators):
        hooks.check_stop(f"auto_k:{name}")
        k, info = _run_one(name, x, k_min, k_max, spec, seed)
        records[name] = censor(name, k, info, k_min, k_max)
        details[name] = info
        hooks.on_progress((i + 1) / len(spec.estimators), None, None)
    k, facts = decide(list(records.values()), spec.consensus)
    details["consensus"] = spec.consensus
    return AutoKResult(
        k=k,
        votes={name: v.vote for name, v in records.items()},
        details=details,
        sample_size=n,
        estimators=records,
        consensus=facts,
    )
