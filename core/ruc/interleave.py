"""The interleaved epoch (``refine.interleave``): both networks step alternately, sharing q_bar.

The default epoch (core.ruc.step.train_pass twice) trains network 1 for a whole pass, then
network 2, and each step guesses the labels of its unclean batch afresh: own network and partner
over the M weak views of u, 2 M B images without gradients per step, a fifth of a ResNet step's
arithmetic at M = 2. Here one pair of steps (network 1, then network 2) shares the clean batch x,
the unclean batch u and the M weak views of u, so the guess q_bar = Sharpen(mean of both
networks over the views) (Eq. (13)-(14)) is computed once per pair and serves both steps: the
forwards without gradients halve.

What differs from the sequential passes (and nothing else):

* Network 2's step uses the q_bar computed before network 1's step of the pair, i.e. network 1's
  weights from one step earlier, where the sequential pass uses network 1 after its whole pass.
* One clean order and one unclean order per epoch, shared; each network still draws its own
  strong and weak views of x, its own MixMatch lambda and permutation.
* Co-refinement (Eq. (11)-(12)) reads the partner's prediction table of the previous epoch for
  both networks (the sequential pass gives network 2 network 1's table of the same epoch); both
  tables are refreshed at the end of the epoch.
* refurbish_mode "batch": each network refurbishes u with its own prediction from before the
  pair's first step.

All draws come from the run's generators in a fixed order, so the interleaved run is as
deterministic and as resumable from an epoch checkpoint as the sequential one.
"""

from __future__ import annotations

import torch

from core.hooks import RunHooks
from core.ruc.losses import guess_labels
from core.ruc.refurbish import apply_refurbish, refurbish_candidates
from core.ruc.runtime import Runtime
from core.ruc.step import (
    BATCH_REFURBISH_THRESHOLD,
    STOP_CHECK_EVERY,
    PassSettings,
    _backward,
    _check_finite,
    _nograd,
    _Views,
    corefined_labels,
    optimizer_step,
    pass_orders,
    refresh_table,
    step_batches,
)
from core.spec import RefineSpec


def _pair_views(
    rt: Runtime, images: torch.Tensor, xb: torch.Tensor, ub: torch.Tensor | None, spec: RefineSpec
) -> list[_Views]:
    """One _Views per network: shared x, u and weak views of u; each network's own views of x."""
    gen, vw, m = rt.generator, rt.views, spec.weak_augmentations
    x = vw.rows(images, xb)
    u = vw.rows(images, ub) if ub is not None else None
    u_weak = [vw.weak(u, gen) for _ in range(m)] if spec.mixmatch and u is not None else []
    out = []
    for _ in rt.nets:
        x_strong = vw.strong(x, gen) if spec.strong_loss else x
        x_weak = [vw.weak(x, gen) for _ in range(m)] if spec.mixmatch else []
        out.append(_Views(x=x, u=u, x_strong=x_strong, x_weak=x_weak, u_weak=list(u_weak)))
    return out


def _pair_guesses(
    rt: Runtime, v: _Views, n_u: int, spec: RefineSpec, k_clusters: int
) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
    """(each network's softmax on u, for batch refurbishing, or None; the shared q_bar (B, K) or None).

    One no-grad forward per network over [u (batch refurbishing only), weak views of u].
    """
    own_u = spec.refurbish and spec.refurbish_mode == "batch" and v.u is not None
    parts = ([v.u] if own_u and v.u is not None else []) + v.u_weak
    if not parts:
        return [None] * len(rt.nets), None
    inputs = torch.cat(parts)
    outs = [_nograd(rt.nograd_net(k), inputs, rt) for k in range(len(rt.nets))]
    at = n_u if own_u else 0
    q_bar = None
    if v.u_weak:
        views = torch.cat([o[at:].view(spec.weak_augmentations, n_u, k_clusters) for o in outs])
        q_bar = guess_labels(views, spec.sharpen_temperature)
    return [o[:n_u] if own_u else None for o in outs], q_bar


def train_interleaved(
    rt: Runtime, images: torch.Tensor, spec: RefineSpec, ps: PassSettings, hooks: RunHooks
) -> tuple[torch.Tensor, int]:
    """Both networks' passes of one epoch, interleaved step by step (module doc); then both tables.

    Returns (loss sums (3,) over both networks' steps, detached; number of steps of both).
    Raises TrainingDiverged at the first non-finite loss (checked every STOP_CHECK_EVERY steps).
    """
    dev, bsz = images.device, spec.batch_size
    steps, clean_order, unclean_order = pass_orders(rt, bsz, dev)
    n_nets = len(rt.nets)
    step_terms = torch.zeros(n_nets, steps, 3, device=dev)
    checked = 0
    for step in range(steps):
        if step and step % STOP_CHECK_EVERY == 0:
            for k in range(n_nets):
                _check_finite(step_terms[k, checked:step], checked, ps)
            checked = step
            hooks.check_stop(f"interleaved networks, step {step}")
        xb, ub = step_batches(clean_order, unclean_order, step, bsz)
        n_u = ub.numel() if ub is not None else 0
        views = _pair_views(rt, images, xb, ub, spec)
        own_u, q_bar = _pair_guesses(rt, views[0], n_u, spec, ps.num_clusters)
        for k in range(n_nets):
            if own_u[k] is not None and ub is not None:
                accept, labels = refurbish_candidates(own_u[k][None], BATCH_REFURBISH_THRESHOLD)
                apply_refurbish(rt.clean, rt.pseudo, ub, accept, labels)
            slot = 1 - k
            y_bar = None
            if spec.mixmatch:
                y_bar = corefined_labels(rt, slot, xb, rt.table[slot][xb], spec, ps.num_clusters)
            rt.optimizers[k].zero_grad(set_to_none=True)
            step_terms[k, step] = _backward(rt, k, views[k], xb, (y_bar, q_bar), spec, ps)
            optimizer_step(rt, k, step_terms[k, step])
        del views, q_bar, own_u
    for k in range(n_nets):
        _check_finite(step_terms[k, checked:], checked, ps)
    for k in range(n_nets):
        refresh_table(k, rt, images)
    return step_terms.sum(dim=(0, 1)), n_nets * steps
