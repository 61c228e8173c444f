"""One training pass of one RUC network: per step the views, the targets and the losses.

Per step of network k: a clean batch x (B samples of X) and an unclean batch u (B of U).

* L_Xs: CE between the label-smoothed pseudo-label (Eq. (8)) and f_k(strong(x)).
* Co-refinement (Eq. (11)-(12)): y_bar = Sharpen((1 - w) y + w f_partner(x), T), f_partner(x)
  the partner's prediction table, w its max, min-max normalised over the dataset.
* Label guessing (Eq. (13)-(14)): q_bar = Sharpen(mean of both networks over M weak views of u).
* MixMatch (Eq. (1)-(7)): one lambda' per batch mixes [x views, u views] with a permutation of
  itself; CE on the mixed X part, squared error of the softmax on the mixed U part.

The training forward is split into chunks of B images (the strong clean view, then the mixed
batch strided so every chunk holds X and U rows alike, which is MixMatch's interleaving), so
BatchNorm always normalises over B samples and only B images' activations are alive at a time;
gradients accumulate over the chunks before one SGD step.

On several ranks (core.distributed) every rank builds the same views of the whole batch from the
shared generator, trains on its share of each chunk, and sums gradients before the step; the
no-gradient forwards and the prediction table are split by rows and gathered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.distributed import gather_rows, reduce_step, share
from core.errors import TrainingDiverged
from core.hooks import RunHooks
from core.models.inference import autocast, predict_softmax, softmax_chunks, to_layout
from core.ruc.losses import (
    co_refine,
    guess_labels,
    mix,
    mixmatch_lambda,
    probs_squared_error,
    smooth_labels,
    soft_cross_entropy,
)
from core.ruc.perf import INFERENCE_BATCH_FACTOR
from core.ruc.refurbish import apply_refurbish, refurbish_candidates
from core.ruc.runtime import Runtime
from core.spec import RefineSpec

BATCH_REFURBISH_THRESHOLD = 0.99  # the authors' script's fixed in-loop threshold (refurbish_mode="batch")
STOP_CHECK_EVERY = 10  # steps between should_stop() and divergence checks: a cancel waits < 10 steps


@dataclass(frozen=True)
class PassSettings:
    """What a pass needs besides the runtime: K, this epoch's weights and its number (1-based)."""

    num_clusters: int
    label_smoothing: float
    lambda_u: float
    epoch: int


@dataclass
class _Views:
    x: torch.Tensor  # (B, C, H, W) unaugmented clean batch; (B, D) for features
    u: torch.Tensor | None  # unaugmented unclean batch
    x_strong: torch.Tensor
    x_weak: list[torch.Tensor]
    u_weak: list[torch.Tensor]


def _cycled_order(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``length`` indices in [0, n): whole random permutations of range(n) concatenated (CPU int64)."""
    reps = math.ceil(length / n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:length]


def _views(
    rt: Runtime, images: torch.Tensor, xb: torch.Tensor, ub: torch.Tensor | None, spec: RefineSpec
) -> _Views:
    gen, vw = rt.generator, rt.views
    x = vw.rows(images, xb)
    u = vw.rows(images, ub) if ub is not None else None
    x_strong = vw.strong(x, gen) if spec.strong_loss else x
    x_weak: list[torch.Tensor] = []
    u_weak: list[torch.Tensor] = []
    if spec.mixmatch:
        x_weak = [vw.weak(x, gen) for _ in range(spec.weak_augmentations)]
        if u is not None:
            u_weak = [vw.weak(u, gen) for _ in range(spec.weak_augmentations)]
    return _Views(x=x, u=u, x_strong=x_strong, x_weak=x_weak, u_weak=u_weak)


def _nograd(net: torch.nn.Module, inputs: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """softmax_chunks of ``inputs`` (eval mode, rows independent), split by rows across ranks."""
    return gather_rows(
        lambda lo, hi: softmax_chunks(
            net, inputs[lo:hi], chunk=rt.nograd_chunk, autocast_dtype=rt.autocast_dtype
        ),
        inputs.shape[0],
    )


def _targets(
    rt: Runtime,
    k: int,
    v: _Views,
    xb: torch.Tensor,
    ub: torch.Tensor | None,
    spec: RefineSpec,
    k_clusters: int,
    partner_net: torch.nn.Module | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(y_bar (B, K) co-refined labels, q_bar (B, K) guessed labels or None); batch refurbishing.

    One concatenated no-grad forward per network: its own views of u (label guessing), its own
    f(x) without co-training, and u itself when refurbishing inside the batch loop.
    partner_net: the partner for those forwards (Runtime.nograd_net, made once per pass).
    """
    co = len(rt.nets) == 2
    partner_slot = 1 - k if co else k
    n_x = xb.numel()
    n_u = ub.numel() if ub is not None else 0
    own_x = spec.mixmatch and not co  # its own current f(x) replaces the partner's table
    own_u = spec.refurbish and spec.refurbish_mode == "batch" and v.u is not None
    parts = ([v.x] if own_x else []) + ([v.u] if own_u and v.u is not None else []) + v.u_weak
    own = _nograd(rt.nograd_net(k), torch.cat(parts), rt) if parts else None
    at = 0
    p_x = rt.table[partner_slot][xb]
    if own_x and own is not None:
        p_x, at = own[:n_x], n_x
    if own_u and own is not None and ub is not None:
        accept, labels = refurbish_candidates(own[None, at : at + n_u], BATCH_REFURBISH_THRESHOLD)
        apply_refurbish(rt.clean, rt.pseudo, ub, accept, labels)
        at += n_u
    if not spec.mixmatch:
        return None, None
    q_bar = None
    if n_u and own is not None:
        guesses = [own[at:].view(spec.weak_augmentations, n_u, k_clusters)]
        if co:
            partner = partner_net if partner_net is not None else rt.nograd_net(1 - k)
            p = _nograd(partner, torch.cat(v.u_weak), rt)
            guesses.append(p.view(spec.weak_augmentations, n_u, k_clusters))
        q_bar = guess_labels(torch.cat(guesses), spec.sharpen_temperature)  # (B, K)
    return corefined_labels(rt, partner_slot, xb, p_x, spec, k_clusters), q_bar


def corefined_labels(
    rt: Runtime, partner_slot: int, xb: torch.Tensor, p_x: torch.Tensor, spec: RefineSpec, k_clusters: int
) -> torch.Tensor:
    """y_bar (B, K) of Eq. (11)-(12): the pseudo-labels of xb co-refined with p_x, weighted by the
    confidence of table ``partner_slot``."""
    y = F.one_hot(rt.pseudo[xb], k_clusters).float()
    weights = rt.table_weight(partner_slot)[xb]
    return co_refine(y, p_x, weights, spec.sharpen_temperature)


def _backward(
    rt: Runtime,
    k: int,
    v: _Views,
    xb: torch.Tensor,
    targets: tuple[torch.Tensor | None, torch.Tensor | None],
    spec: RefineSpec,
    ps: PassSettings,
) -> torch.Tensor:
    """Forward/backward of L = L_Xs + L_Xhat + lambda_u L_Uhat in chunks of B; returns (3,) detached terms."""
    net, dev, bsz = rt.nets[k], xb.device, spec.batch_size
    terms = torch.zeros(3, device=dev)
    net.train()
    if spec.strong_loss:
        lo, hi, weight = share(xb.numel())  # this rank's rows (all of them on one rank)
        x_s = v.x_strong if hi - lo == xb.numel() else v.x_strong[lo:hi]
        with autocast(dev, rt.autocast_dtype):
            logits_s = net(x_s)
        smoothed = smooth_labels(rt.pseudo[xb[lo:hi]], ps.num_clusters, ps.label_smoothing)
        per_sample = soft_cross_entropy(logits_s, smoothed)
        loss_xs = (
            per_sample.mean()
            if weight == 1.0 and hi - lo == xb.numel()
            else per_sample.sum() * weight / xb.numel()
        )
        loss_xs.backward()
        terms[0] = loss_xs.detach()
        del logits_s, loss_xs
    y_bar, q_bar = targets
    if not spec.mixmatch or y_bar is None:
        return terms
    views = spec.weak_augmentations
    inputs = torch.cat(v.x_weak + v.u_weak)  # (V*B_x + V*B_u, C, H, W)
    mixed_t_in = torch.cat([y_bar] * views + ([q_bar] * views if q_bar is not None else []))
    lam = mixmatch_lambda(spec.mixup_alpha, rt.np_rng)
    perm = torch.randperm(inputs.shape[0], generator=rt.generator).to(dev)
    mixed_x, mixed_t = mix(inputs, mixed_t_in, lam, perm)
    del inputs
    v.x_weak, v.u_weak = [], []  # the mixed batch replaces them: free the views before the forwards
    n_lab = views * xb.numel()
    n_unl = mixed_x.shape[0] - n_lab
    n_chunks = max(1, round(mixed_x.shape[0] / bsz))
    for j in range(n_chunks):
        rows = torch.arange(j, mixed_x.shape[0], n_chunks, device=dev)
        lo, hi, weight = share(rows.numel())
        rows = rows[lo:hi]
        with autocast(dev, rt.autocast_dtype):
            logits = net(to_layout(mixed_x[rows], rt.channels_last))
        is_lab = rows < n_lab
        loss_x = soft_cross_entropy(logits[is_lab], mixed_t[rows][is_lab]).sum() / n_lab
        if weight != 1.0:
            loss_x = loss_x * weight
        loss = loss_x
        if n_unl and spec.unlabeled_loss:
            loss_u = probs_squared_error(logits[~is_lab], mixed_t[rows][~is_lab]).sum() / n_unl
            if weight != 1.0:
                loss_u = loss_u * weight
            loss = loss + ps.lambda_u * loss_u
            terms[2] += loss_u.detach()
        loss.backward()
        terms[1] += loss_x.detach()
        del logits, loss, loss_x
    return terms


def _check_finite(step_terms: torch.Tensor, first_step: int, ps: PassSettings) -> None:
    """Raise TrainingDiverged at the first step whose loss terms (S, 3) are not all finite."""
    bad = ~torch.isfinite(step_terms).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        row = step_terms[i]
        value = float(row[~torch.isfinite(row)][0])
        raise TrainingDiverged(epoch=ps.epoch, step=first_step + i + 1, loss=value)


def train_step(
    k: int,
    rt: Runtime,
    images: torch.Tensor,
    xb: torch.Tensor,
    ub: torch.Tensor | None,
    spec: RefineSpec,
    ps: PassSettings,
    partner_net: torch.nn.Module | None = None,
) -> torch.Tensor:
    """One SGD step of network k on clean rows ``xb`` (B,) and unclean rows ``ub`` (B,) or None.

    partner_net: the partner's network for forwards without gradients, when the pass made it once
    (a folded copy); None: ``rt.nograd_net``. Returns the step's loss terms (3,) = [L_Xs, L_Xhat,
    L_Uhat], detached. Also the memory preflight's dry run (core/ruc/preflight.py), so it measures
    exactly what training allocates.
    """
    views = _views(rt, images, xb, ub, spec)
    targets = _targets(rt, k, views, xb, ub, spec, ps.num_clusters, partner_net)
    rt.optimizers[k].zero_grad(set_to_none=True)
    terms = _backward(rt, k, views, xb, targets, spec, ps)
    del views, targets
    optimizer_step(rt, k, terms)
    return terms


def optimizer_step(rt: Runtime, k: int, terms: torch.Tensor) -> None:
    """After network k's backward: gradients (and ``terms``, in place) summed over ranks, one SGD step."""
    reduce_step(rt.nets[k], terms)  # no-op on one rank
    opt = rt.optimizers[k]
    opt.step()
    # Gradients are dead until the next backward: freeing them now keeps them out of the
    # peak of the no-grad forwards and of the partner's pass (45 MB per ResNet-18).
    opt.zero_grad(set_to_none=True)


def train_pass(
    k: int, rt: Runtime, images: torch.Tensor, spec: RefineSpec, ps: PassSettings, hooks: RunHooks
) -> tuple[torch.Tensor, int]:
    """Train network k for one pass over the clean set, then refresh its prediction table.

    An epoch of network k has ceil(|X| / B) steps; clean samples are visited in a fresh random
    order (topped up to whole batches), unclean samples are drawn cyclically in random order.
    Returns (loss sums (3,) = [L_Xs, L_Xhat, L_Uhat] over the steps, detached; number of steps).
    Raises TrainingDiverged at the first non-finite loss (checked every STOP_CHECK_EVERY steps).
    """
    dev, bsz = images.device, spec.batch_size
    steps, clean_order, unclean_order = pass_orders(rt, bsz, dev)
    step_terms = torch.zeros(steps, 3, device=dev)
    checked = 0
    # The partner does not change during this pass: one copy for its forwards serves every step.
    partner_net = rt.nograd_net(1 - k) if len(rt.nets) == 2 and spec.mixmatch else None
    for step in range(steps):
        if step and step % STOP_CHECK_EVERY == 0:
            _check_finite(step_terms[checked:step], checked, ps)
            checked = step
            hooks.check_stop(f"network {k + 1}, step {step}")
        xb, ub = step_batches(clean_order, unclean_order, step, bsz)
        step_terms[step] = train_step(k, rt, images, xb, ub, spec, ps, partner_net)
    _check_finite(step_terms[checked:], checked, ps)
    refresh_table(k, rt, images)
    return step_terms.sum(dim=0), steps


def pass_orders(rt: Runtime, bsz: int, dev: torch.device) -> tuple[int, torch.Tensor, torch.Tensor | None]:
    """(steps, clean order, unclean order or None) of one pass: ceil(|X| / B) steps over the clean
    set in a fresh random order topped up to whole batches, unclean samples cyclically at random."""
    gen = rt.generator
    clean_idx = rt.clean.nonzero().squeeze(1)
    unclean_idx = (~rt.clean).nonzero().squeeze(1)
    steps = math.ceil(clean_idx.numel() / bsz)
    clean_order = clean_idx[_cycled_order(clean_idx.numel(), steps * bsz, gen).to(dev)]
    unclean_order = None
    if unclean_idx.numel():
        unclean_order = unclean_idx[_cycled_order(unclean_idx.numel(), steps * bsz, gen).to(dev)]
    return steps, clean_order, unclean_order


def step_batches(
    clean_order: torch.Tensor, unclean_order: torch.Tensor | None, step: int, bsz: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(xb, ub): the clean and unclean indices of ``step``."""
    xb = clean_order[step * bsz : (step + 1) * bsz]
    ub = unclean_order[step * bsz : (step + 1) * bsz] if unclean_order is not None else None
    return xb, ub


def refresh_table(k: int, rt: Runtime, images: torch.Tensor) -> None:
    """Network k's prediction table: its eval-mode softmax on every unaugmented image."""
    rt.table[k] = gather_rows(
        lambda lo, hi: predict_softmax(
            rt.nets[k],
            images[lo:hi],
            batch_size=INFERENCE_BATCH_FACTOR * rt.nograd_chunk,
            chunk=rt.nograd_chunk,
            channels_last=rt.channels_last,
            autocast_dtype=rt.autocast_dtype,
        ),
        images.shape[0],
    )
    rt.ready[k] = True
