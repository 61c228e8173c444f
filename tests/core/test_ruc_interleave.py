"""refine.interleave: both networks step alternately and share the label guesses (core.ruc.interleave).

Same tiny synthetic data as test_ruc_trainer (8x8 colour classes, 20% noisy pseudo-labels,
small_cnn), whose fixture and helpers are reused (this folder is on the path while it is collected).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_ruc_trainer import _run, _spec, data  # noqa: F401  (data: the module's fixture)

from core.errors import StopRequested
from core.hooks import RunHooks
from core.ruc import PerfOptions, load_state


def test_interleaved_run_learns_is_deterministic_and_differs_from_sequential(
    data: dict[str, Any],  # noqa: F811
) -> None:
    spec = _spec(epochs=3, lambda_u_rampup_epochs=3, interleave=True)
    progress: list[float] = []
    a = _run(data, spec, hooks=RunHooks(on_progress=lambda f, e, t: progress.append(f)))
    b = _run(data, spec)
    assert torch.equal(a.probs, b.probs) and torch.equal(a.clean_mask, b.clean_mask)
    assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(m["loss_x"] > 0 and m["loss_u"] > 0 for m in a.per_epoch)
    # It corrects its noisy input labels as the sequential epoch does (test_ruc_trainer).
    acc = (a.probs.argmax(dim=1) == data["truth"]).float().mean().item()
    given = (data["pseudo"] == data["truth"]).float().mean().item()
    assert acc > given + 0.05, (acc, given)
    sequential = _run(data, spec.model_copy(update={"interleave": False}))
    assert not torch.allclose(a.probs, sequential.probs)


def test_interleaved_run_resumes_from_an_epoch_checkpoint(
    data: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    spec = _spec(epochs=3, lambda_u_rampup_epochs=3, refurbish_threshold=0.5, interleave=True)
    straight = _run(data, spec)
    ckpt = tmp_path / "ruc.pt"
    seen: list[dict[str, Any]] = []
    with pytest.raises(StopRequested):
        _run(
            data,
            spec,
            checkpoint_path=ckpt,
            hooks=RunHooks(on_epoch=seen.append, should_stop=lambda: len(seen) >= 1),
        )
    assert load_state(ckpt).epoch == 1
    resumed = _run(data, spec, checkpoint_path=ckpt, resume=True)
    assert [m["epoch"] for m in resumed.per_epoch] == [1, 2, 3]
    assert torch.equal(resumed.probs, straight.probs)
    assert torch.equal(resumed.clean_mask, straight.clean_mask)
    assert torch.equal(resumed.pseudo_labels, straight.pseudo_labels)
    assert (
        straight.per_epoch[-1]["clean_size"]
        > straight.per_epoch[0]["clean_size"] - straight.per_epoch[0]["refurbished"]
    )


def test_interleave_batch_refurbishing_and_single_network(data: dict[str, Any]) -> None:  # noqa: F811
    batch = _run(data, _spec(epochs=1, interleave=True, refurbish_mode="batch"))
    assert torch.isfinite(batch.probs).all()
    # Without co-training there is no partner to share a guess with: the flag changes nothing.
    solo = _run(data, _spec(epochs=1, co_training=False, interleave=True))
    solo_default = _run(data, _spec(epochs=1, co_training=False))
    assert torch.equal(solo.probs, solo_default.probs)


def test_folded_label_guessing_trains_as_the_unfolded(data: dict[str, Any]) -> None:  # noqa: F811
    fp32 = {"channels_last": False, "autocast_dtype": torch.float32}
    plain = _run(data, _spec(epochs=1), perf=PerfOptions(**fp32, fold_batchnorm=False))
    folded = _run(data, _spec(epochs=1), perf=PerfOptions(**fp32, fold_batchnorm=True))
    paired = _run(data, _spec(epochs=1, interleave=True), perf=PerfOptions(**fp32, fold_batchnorm=True))
    assert torch.isfinite(paired.probs).all()
    # the guesses differ by rounding only, so one epoch of training ends where the unfolded one does
    assert (folded.probs - plain.probs).abs().max().item() < 1e-3
