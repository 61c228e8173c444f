"""Robustness of a clustering model under FGSM/BIM: accuracy and prediction stability."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

from core.adversarial.attacks import ModelFn, bim, fgsm
from core.errors import CoreInputError
from core.metrics import NO_LABELS, hungarian_match


class AttackLike(Protocol):
    """What ``core.spec.AttackSpec`` provides."""

    kind: str
    eps: list[float]
    steps: int


def _predict(model_fn: ModelFn, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model_fn(x).argmax(dim=1)


def _check_inputs(
    images: torch.Tensor,
    *,
    y_true: np.ndarray | None,
    attacks: Sequence[AttackLike],
    batch_size: int,
    feature_scale: float | None,
) -> np.ndarray | None:
    """Raise ``CoreInputError`` on a bad argument (in argument order); return the labels as int64."""
    features = feature_scale is not None
    if images.ndim != (2 if features else 4):
        want = "(N, D) features" if features else "(N, C, H, W) images"
        raise CoreInputError("images", f"expected {want}, got shape {tuple(images.shape)}")
    if features and not (feature_scale is not None and feature_scale > 0):
        raise CoreInputError("feature_scale", f"must be > 0, got {feature_scale}")
    if batch_size < 1:
        raise CoreInputError("batch_size", f"must be >= 1, got {batch_size}")
    for a in attacks:
        if a.kind not in ("fgsm", "bim"):
            raise CoreInputError("attacks.kind", f"unknown attack {a.kind!r}")
    n = images.shape[0]
    labels = None if y_true is None else np.asarray(y_true, dtype=np.int64)
    if labels is not None and labels.shape != (n,):
        raise CoreInputError("y_true", f"expected shape ({n},), got {labels.shape}")
    return labels


def _clean_predictions(
    model_fn: ModelFn, images: torch.Tensor, batch_size: int, dev: torch.device
) -> torch.Tensor:
    """(N,) int64 clusters predicted on the unattacked inputs, on the CPU."""
    n = images.shape[0]
    if not n:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat(
        [_predict(model_fn, images[i : i + batch_size].to(dev)).cpu() for i in range(0, n, batch_size)]
    )


class _LabelMaps(NamedTuple):
    """cluster -> class (-1 unmatched) and class -> cluster (-1 for a class without a cluster)."""

    class_of_cluster: torch.Tensor
    cluster_of_class: torch.Tensor


def _label_maps(labels: np.ndarray, clean_pred: torch.Tensor, mapping: np.ndarray | None) -> _LabelMaps:
    """Both directions of ``mapping``, Hungarian-matched from the clean predictions when None."""
    if mapping is None:
        num_clusters = int(clean_pred.max()) + 1 if clean_pred.shape[0] else 1
        mapping = hungarian_match(labels, clean_pred.numpy(), num_clusters)
    mapping = np.asarray(mapping, dtype=np.int64)
    num_classes = int(max(labels.max(initial=-1), mapping.max(initial=-1))) + 1
    inv = np.full(num_classes, -1, dtype=np.int64)
    for k, c in enumerate(mapping):
        if c >= 0:
            inv[c] = k
    return _LabelMaps(class_of_cluster=torch.from_numpy(mapping), cluster_of_class=torch.from_numpy(inv))


def _mapped_correct(map_t: torch.Tensor, pred: torch.Tensor, lab: torch.Tensor) -> int:
    """How many predicted clusters map to their label (a cluster beyond the mapping counts as wrong)."""
    inside = pred < map_t.shape[0]
    mapped = torch.where(inside, map_t[pred.clamp(max=map_t.shape[0] - 1)], torch.full_like(pred, -1))
    return int((mapped == lab).sum())


class _Counts(NamedTuple):
    clean_correct: int
    correct: list[int]  # per job
    stable: list[int]  # per job


def _attack_counts(
    model_fn: ModelFn,
    images: torch.Tensor,
    clean_pred: torch.Tensor,
    labels: np.ndarray | None,
    maps: _LabelMaps | None,
    jobs: list[tuple[AttackLike, float]],
    *,
    batch_size: int,
    dev: torch.device,
    scale: float,
    clip: bool,
) -> _Counts:
    """Attack each batch with every (attack, eps) job; count mapped-correct and unchanged predictions."""
    correct = [0] * len(jobs)
    stable = [0] * len(jobs)
    clean_correct = 0
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(dev)
        pred0 = clean_pred[i : i + batch_size]
        lab: torch.Tensor | None = None
        if maps is not None and labels is not None:
            lab = torch.from_numpy(labels[i : i + batch_size])
            target = maps.cluster_of_class[lab]
            target = torch.where(target >= 0, target, pred0)
            clean_correct += _mapped_correct(maps.class_of_cluster, pred0, lab)
        else:
            target = pred0
        target_d = target.to(dev)
        for j, (a, eps) in enumerate(jobs):
            x_adv = (
                fgsm(model_fn, x, target_d, eps, scale=scale, clip=clip)
                if a.kind == "fgsm"
                else bim(model_fn, x, target_d, eps, steps=a.steps, scale=scale, clip=clip)
            )
            pred = _predict(model_fn, x_adv).cpu()
            stable[j] += int((pred == pred0).sum())
            if maps is not None and lab is not None:
                correct[j] += _mapped_correct(maps.class_of_cluster, pred, lab)
    return _Counts(clean_correct=clean_correct, correct=correct, stable=stable)


def _assemble(
    n: int,
    counts: _Counts,
    jobs: list[tuple[AttackLike, float]],
    *,
    has_labels: bool,
    feature_scale: float | None,
) -> dict:
    """The report dict from the counts (fractions of ``n``; None where undefined)."""
    features = feature_scale is not None
    return {
        "num_samples": int(n),
        "target": "true_label" if has_labels else "clean_prediction",
        "clean_accuracy": (counts.clean_correct / n if n else None) if has_labels else None,
        "unavailable_reason": None if has_labels else NO_LABELS,
        "space": "features" if features else "pixels",
        "eps_scale": float(feature_scale) if feature_scale is not None else None,
        "attacks": [
            {
                "kind": a.kind,
                "eps": eps,
                "steps": int(a.steps) if a.kind == "bim" else None,
                "accuracy": (counts.correct[j] / n if n else None) if has_labels else None,
                "stability": counts.stable[j] / n if n else None,
            }
            for j, (a, eps) in enumerate(jobs)
        ],
    }


def robustness_report(
    model_fn: ModelFn,
    images: torch.Tensor,
    *,
    y_true: np.ndarray | None,
    mapping: np.ndarray | None,
    attacks: Sequence[AttackLike],
    batch_size: int,
    device: str | torch.device,
    feature_scale: float | None = None,
) -> dict:
    """Evaluate ``model_fn`` (x (B, C, H, W) in [0, 1] -> logits (B, K)) under each attack and eps.

    images: (N, C, H, W) float in [0, 1] on any device (moved per batch); with ``feature_scale``
    (N, D) features instead, attacked in feature space with radius eps x feature_scale and no
    [0, 1] clipping (``space`` and ``eps_scale`` in the result say so). With labels y_true (N,),
    the attack target is the true class mapped into cluster space through ``mapping`` (cluster ->
    class, -1 unmatched; computed by Hungarian matching of the clean predictions when None); a
    class without a cluster is targeted through the clean prediction (it can never be right
    anyway). Without labels the target is the clean prediction. Put modules in eval mode first if
    ``model_fn`` is not itself an ``nn.Module``.

    Returns {num_samples, target, clean_accuracy, unavailable_reason, space, eps_scale, attacks:
    [{kind, eps, steps, accuracy, stability}]}; accuracy = Hungarian-mapped prediction equals the
    label (None without labels), stability = fraction of samples whose predicted cluster is
    unchanged by the attack.
    """
    labels = _check_inputs(
        images, y_true=y_true, attacks=attacks, batch_size=batch_size, feature_scale=feature_scale
    )
    scale, clip = (float(feature_scale), False) if feature_scale is not None else (1.0, True)
    dev = torch.device(device)
    clean_pred = _clean_predictions(model_fn, images, batch_size, dev)  # (N,)
    maps = None if labels is None else _label_maps(labels, clean_pred, mapping)
    jobs = [(a, float(e)) for a in attacks for e in a.eps]
    counts = _attack_counts(
        model_fn,
        images,
        clean_pred,
        labels,
        maps,
        jobs,
        batch_size=batch_size,
        dev=dev,
        scale=scale,
        clip=clip,
    )
    return _assemble(
        images.shape[0], counts, jobs, has_labels=labels is not None, feature_scale=feature_scale
    )
