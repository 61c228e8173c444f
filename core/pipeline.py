"""One whole job: base clustering -> clean-set sampling -> RUC -> evaluation -> artifacts.

Stages (``hooks.on_stage``): loading, base_clustering, sampling, refining, evaluating, saving.

Resuming: ``work_dir/base.pt`` caches the base output (model weights, pseudo-labels, probabilities,
embedding), keyed by a fingerprint of the data, the base spec, K and the seed, so a resumed job
never redoes or changes its base; RUC checkpoints into ``work_dir/ruc_checkpoint.pt`` after every
epoch and continues from there. Everything else is a deterministic function of those two files and
the spec, so a stopped-and-resumed job gives the result of an uninterrupted one.

Artifacts (each written to a temporary file and renamed into place):
``refined_ensemble.safetensors`` (both networks' state dicts prefixed ``net1.``/``net2.``, plus
metadata to rebuild them), ``assignments.csv`` (per image: base cluster and confidence, refined
cluster and confidence, whether it is in the final clean set) and ``result.json``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.adversarial import robustness_report
from core.clustering.base import BaseOutput, run_base
from core.datasets import ImageDataset
from core.errors import CoreInputError
from core.hooks import RunHooks
from core.metrics import NO_LABELS, clean_set_quality, clustering_report, hungarian_match
from core.models import ClusteringModel, build_backbone
from core.ruc import RucOutput, train_ruc
from core.sampling import ensure_clean_per_cluster, select_clean
from core.spec import JobSpec
from core.spec.refine import effective_knn_k

__all__ = ["ARTIFACT_NAMES", "STAGES", "JobOutcome", "load_ensemble", "run_job"]

STAGES = ("loading", "base_clustering", "sampling", "refining", "evaluating", "saving")
ARTIFACT_NAMES = ("refined_ensemble.safetensors", "assignments.csv", "result.json")
BASE_CACHE = "base.pt"
RUC_CHECKPOINT = "ruc_checkpoint.pt"
BASE_CACHE_VERSION = 1
# Inference and attack batches: no activations kept for training, so larger than training batches.
EVAL_BATCH_SIZE = 512


@dataclass
class JobOutcome:
    """result: JSON-serialisable dict (also written to result.json). artifacts: name -> path."""

    result: dict[str, Any]
    artifacts: dict[str, Path]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(path, buf.getvalue())


def _json_safe(obj: Any) -> Any:
    """Plain JSON types only: numpy scalars/arrays become Python ones, NaN/inf become None."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _base_fingerprint(spec: JobSpec, dataset: ImageDataset, checkpoint_paths: dict[str, Path]) -> str:
    """sha256 over what determines the base output: images, assignments, base spec, K, seed, checkpoints."""
    h = hashlib.sha256()
    meta = {
        "version": BASE_CACHE_VERSION,
        "base": spec.base.model_dump(mode="json"),
        "num_clusters": spec.num_clusters,
        "seed": spec.seed,
        "shape": list(dataset.images.shape),
    }
    for key in (spec.base.embedding_checkpoint_id, spec.base.clustering_checkpoint_id):
        if key is not None and key in checkpoint_paths and Path(checkpoint_paths[key]).is_file():
            st = Path(checkpoint_paths[key]).stat()
            meta[f"ckpt:{key}"] = [st.st_size, st.st_mtime_ns]
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update(dataset.images.detach().cpu().contiguous().numpy().tobytes())
    if dataset.assignments is not None:
        h.update(dataset.assignments.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_base(base: BaseOutput, path: Path, fingerprint: str) -> None:
    m = base.model
    _atomic_torch_save(
        {
            "version": BASE_CACHE_VERSION,
            "fingerprint": fingerprint,
            "backbone": m.backbone_name,
            "in_channels": int(getattr(m.backbone, "in_channels", 0)),
            "backbone_dim": int(m.backbone_dim),
            "num_clusters": int(m.num_clusters),
            "mean": m.mean.detach().flatten().cpu().tolist(),
            "std": m.std.detach().flatten().cpu().tolist(),
            "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
            "pseudo_labels": base.pseudo_labels.detach().cpu(),
            "probs": base.probs.detach().cpu(),
            "embedding": base.embedding.detach().cpu(),
            "info": json.dumps(_json_safe(base.info)),
        },
        path,
    )


def _load_base(path: Path, fingerprint: str, device: torch.device) -> BaseOutput | None:
    """The cached base output if ``path`` holds one for this fingerprint, else None."""
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file is recomputed, never trusted
        return None
    if (
        not isinstance(d, dict)
        or d.get("version") != BASE_CACHE_VERSION
        or d.get("fingerprint") != fingerprint
    ):
        return None
    backbone, dim = build_backbone(d["backbone"], in_channels=d["in_channels"])
    model = ClusteringModel(backbone, dim, d["num_clusters"], mean=d["mean"], std=d["std"])
    model.load_state_dict(d["state_dict"])
    model = model.to(device).eval()
    return BaseOutput(
        model=model,
        pseudo_labels=d["pseudo_labels"].to(device),
        probs=d["probs"].to(device),
        embedding=d["embedding"].to(device),
        info=json.loads(d["info"]),
    )


class _EnsembleLogits(nn.Module):
    """Logits of the refined ensemble for attacks: log of the mean softmax of the networks.

    log p_bar is a valid logit vector (softmax(log p_bar) = p_bar), so cross-entropy on it is the
    ensemble's negative log-likelihood and its gradient is the ensemble's."""

    def __init__(self, nets: tuple[nn.Module, ...]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(net(x).float(), dim=1) for net in self.nets]).mean(0)
        return torch.log(probs.clamp_min(1e-12))


def _agreement(base_pred: np.ndarray, refined_pred: np.ndarray, k: int) -> dict[str, Any]:
    """Share of samples whose refined cluster, Hungarian-aligned to the base clusters, is their base one."""
    mapping = hungarian_match(base_pred, refined_pred, k)  # refined cluster -> base cluster
    aligned = mapping[refined_pred]
    return {
        "aligned": float((aligned == base_pred).mean()),
        "raw": float((refined_pred == base_pred).mean()),
        "mapping": [int(v) for v in mapping],
    }


def _clean_summary(mask: np.ndarray, pseudo: np.ndarray, y: np.ndarray | None, k: int) -> dict[str, Any]:
    size = int(mask.sum())
    out: dict[str, Any] = {
        "size": size,
        "fraction": size / max(len(mask), 1),
        "per_cluster": [int(v) for v in np.bincount(pseudo[mask], minlength=k)],
    }
    if y is None:
        out.update(precision=None, recall=None, f1=None, unavailable_reason=NO_LABELS)
    else:
        q = clean_set_quality(mask, pseudo, y, k)
        out.update(q)
        out["unavailable_reason"] = None
    return out


def _assignments_csv(base_probs: np.ndarray, refined_probs: np.ndarray, clean: np.ndarray) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "base_cluster", "base_confidence", "refined_cluster", "refined_confidence", "clean"])
    bp, bc = base_probs.argmax(1), base_probs.max(1)
    rp, rc = refined_probs.argmax(1), refined_probs.max(1)
    for i in range(base_probs.shape[0]):
        w.writerow([i, int(bp[i]), f"{bc[i]:.6f}", int(rp[i]), f"{rc[i]:.6f}", int(bool(clean[i]))])
    return buf.getvalue().encode()


def _save_ensemble(ruc: RucOutput, base: BaseOutput, spec: JobSpec, path: Path) -> None:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for i, net in enumerate(ruc.models):
        for key, v in net.state_dict().items():
            tensors[f"net{i + 1}.{key}"] = v.detach().cpu().contiguous()
    first = ruc.models[0]
    metadata = {
        "format": "ruc-service",
        "kind": "ruc_ensemble",
        "nets": str(len(ruc.models)),
        "backbone": str(first.backbone_name),
        "num_clusters": str(first.num_clusters),
        "in_channels": str(getattr(first.backbone, "in_channels", "")),
        "mean": json.dumps(first.mean.flatten().tolist()),
        "std": json.dumps(first.std.flatten().tolist()),
        "base_backbone": str(base.model.backbone_name),
        "spec": spec.model_dump_json(),
    }
    _atomic_write_bytes(path, save(tensors, metadata=metadata))


class _Stages:
    """Announces stages through the hooks and times them."""

    def __init__(self, hooks: RunHooks) -> None:
        self.hooks = hooks
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.hooks.check_stop(name)
        self.hooks.on_stage(name)
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 4)


# ----------------------------------------------------------------------------------------------
# run_job
# ----------------------------------------------------------------------------------------------


def run_job(
    spec: JobSpec,
    dataset: ImageDataset,
    *,
    device: str | torch.device,
    work_dir: Path,
    checkpoint_paths: dict[str, Path] | None = None,
    hooks: RunHooks | None = None,
    resume: bool = True,
) -> JobOutcome:
    """Run the whole job of ``spec`` on ``dataset`` (see module docstring) and write its artifacts.

    device: where models and images live. work_dir: the job's private folder (created).
    checkpoint_paths: uploaded checkpoint id -> file. resume: reuse ``base.pt`` and continue from
    ``ruc_checkpoint.pt`` when they belong to this job; False recomputes both.
    Raises CoreInputError for unusable inputs and StopRequested when ``hooks.should_stop()``.
    """
    hooks = hooks or RunHooks()
    checkpoint_paths = {k: Path(v) for k, v in (checkpoint_paths or {}).items()}
    dev = torch.device(device)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stage = _Stages(hooks)
    notes: list[str] = list(getattr(dataset, "notes", []) or [])

    def warn(msg: str) -> None:
        notes.append(msg)
        hooks.on_event("warning", msg)

    # -- loading -----------------------------------------------------------------------------
    with stage("loading"):
        _seed_everything(spec.seed)
        if dataset.n < 2:
            raise CoreInputError("images", f"a job needs at least 2 images, the dataset has {dataset.n}")
        if spec.num_clusters is not None and spec.num_clusters > dataset.n:
            raise CoreInputError(
                "num_clusters",
                f"{spec.num_clusters} clusters requested but the dataset has only {dataset.n} images",
            )
        images_u8 = dataset.images.to(dev)  # (N, H, W, C) uint8, stays on the device
        y = dataset.labels.cpu().numpy() if dataset.labels is not None else None
        hooks.on_progress(1.0, None, None)

    # -- base_clustering -----------------------------------------------------------------------
    with stage("base_clustering"):
        cache = work_dir / BASE_CACHE
        fingerprint = _base_fingerprint(spec, dataset, checkpoint_paths)
        base = _load_base(cache, fingerprint, dev) if resume else None
        base_cached = base is not None
        if base is None:
            base = run_base(spec, dataset, device=dev, checkpoint_paths=checkpoint_paths, hooks=hooks)
            _save_base(base, cache, fingerprint)
        hooks.on_progress(1.0, None, None)
        if base_cached:
            hooks.on_event("info", "base clustering reused from the job's cache (resumed job)")
        # K as the base produced it (the spec's num_clusters, or an estimate when it has none).
        k = int(base.probs.shape[1])

    # -- sampling ------------------------------------------------------------------------------
    with stage("sampling"):
        r = spec.refine
        knn_k = effective_knn_k(r.knn_k, num_samples=dataset.n, num_clusters=k)
        if r.knn_k is not None and knn_k < r.knn_k and r.strategy != "confidence":
            warn(f"refine.knn_k={r.knn_k} exceeds N-1; using k={knn_k}")
        confidence = base.probs.max(dim=1).values
        initial_mask = select_clean(
            r.strategy,
            probs=base.probs,
            pseudo=base.pseudo_labels,
            embedding=base.embedding,
            threshold=r.confidence_threshold,
            k=knn_k,
        )
        selected_size = int(initial_mask.sum())
        clean_mask, fallback_notes = ensure_clean_per_cluster(
            initial_mask,
            base.pseudo_labels,
            confidence,
            min_per_cluster=r.min_clean_per_cluster,
            fraction=r.fallback_fraction,
            num_clusters=k,
        )
        for note in fallback_notes:
            warn(f"clean-set fallback: {note}")
        hooks.on_progress(1.0, None, None)

    # -- refining ------------------------------------------------------------------------------
    with stage("refining"):
        ruc = train_ruc(
            base.model,
            images_u8,
            base.pseudo_labels,
            clean_mask,
            r,
            num_clusters=k,
            seed=spec.seed,
            device=dev,
            hooks=hooks,
            checkpoint_path=work_dir / RUC_CHECKPOINT,
            resume=resume,
            labels=y,
        )

    # -- evaluating ----------------------------------------------------------------------------
    with stage("evaluating"):
        ev = spec.evaluate
        base_probs = base.probs.detach().float().cpu().numpy()
        refined_probs = ruc.probs.detach().float().cpu().numpy()
        base_report = clustering_report(base_probs, y, num_clusters=k, ece_bins=ev.ece_bins)
        refined_report = clustering_report(refined_probs, y, num_clusters=k, ece_bins=ev.ece_bins)
        pseudo_np = base.pseudo_labels.cpu().numpy()
        clean_set = {
            "strategy": r.strategy,
            "knn_k": knn_k if r.strategy != "confidence" else None,
            "confidence_threshold": r.confidence_threshold if r.strategy != "metric" else None,
            "selected_size": selected_size,
            "initial": _clean_summary(clean_mask.cpu().numpy(), pseudo_np, y, k),
            "final": _clean_summary(ruc.clean_mask.cpu().numpy(), ruc.pseudo_labels.cpu().numpy(), y, k),
        }
        hooks.on_progress(0.2, None, None)
        agreement = _agreement(base_probs.argmax(1), refined_probs.argmax(1), k)

        # One fixed random subset (seeded) for both models, so their robustness is comparable.
        n_att = min(ev.attack_max_samples, dataset.n)
        gen = torch.Generator().manual_seed(spec.seed)
        subset = torch.randperm(dataset.n, generator=gen)[:n_att].sort().values
        x_att = dataset.to_float(dev, subset)
        y_att = y[subset.numpy()] if y is not None else None
        robustness: dict[str, Any] = {"num_samples": n_att}
        for name, fn, rep in (
            ("base", base.model.eval(), base_report),
            ("refined", _EnsembleLogits(tuple(m.eval() for m in ruc.models)), refined_report),
        ):
            mapping = np.asarray(rep["mapping"]) if rep.get("mapping") is not None else None
            robustness[name] = robustness_report(
                fn,
                x_att,
                y_true=y_att,
                mapping=mapping,
                attacks=list(ev.attacks),
                batch_size=EVAL_BATCH_SIZE,
                device=dev,
            )
            hooks.on_progress(0.6 if name == "base" else 1.0, None, None)

    # -- saving --------------------------------------------------------------------------------
    with stage("saving"):
        paths = {name: work_dir / name for name in ARTIFACT_NAMES}
        _save_ensemble(ruc, base, spec, paths["refined_ensemble.safetensors"])
        _atomic_write_bytes(
            paths["assignments.csv"],
            _assignments_csv(base_probs, refined_probs, ruc.clean_mask.cpu().numpy()),
        )
        result: dict[str, Any] = {
            "base": base_report,
            "refined": refined_report,
            "clean_set": clean_set,
            "robustness": robustness,
            "per_epoch": ruc.per_epoch,
            "effective": {**ruc.effective, "knn_k": knn_k},
            "agreement": agreement,
            "notes": notes,
            "timings": {},
            "device": str(dev),
            "spec": spec.model_dump(mode="json"),
            "dataset": dataset.facts(),
            "base_info": {**base.info, "reused_from_cache": base_cached},
        }
    # The saving stage's own time is known only now; result.json carries all stages.
    result["timings"] = dict(stage.timings)
    result = _json_safe(result)
    _atomic_write_bytes(paths["result.json"], json.dumps(result, indent=1, allow_nan=False).encode())
    hooks.on_progress(1.0, None, None)
    return JobOutcome(result=result, artifacts=paths)


def load_ensemble(path: Path, *, device: str | torch.device = "cpu") -> tuple[ClusteringModel, ...]:
    """Rebuild the networks of a ``refined_ensemble.safetensors`` artifact (eval mode)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    if meta.get("kind") != "ruc_ensemble":
        raise CoreInputError("checkpoint", "is not a refined RUC ensemble")
    nets = []
    for i in range(int(meta["nets"])):
        prefix = f"net{i + 1}."
        sd = {key[len(prefix) :]: v for key, v in tensors.items() if key.startswith(prefix)}
        bb, dim = build_backbone(meta["backbone"], in_channels=int(meta["in_channels"]))  # type: ignore[arg-type]
        net = ClusteringModel(
            bb, dim, int(meta["num_clusters"]), mean=json.loads(meta["mean"]), std=json.loads(meta["std"])
        )
        net.load_state_dict(sd)
        nets.append(net.to(device).eval())
    return tuple(nets)
