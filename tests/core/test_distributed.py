"""One job on several devices: RUC and the base fit on two gloo ranks (CPU) against one rank.

Rank 0 is this test process, rank 1 a child started by core.distributed.launched. Tolerances come
from bench/ruc_distributed.py (README, "One job on several GPUs"): over seeds 0-2 of this task the
two-rank runs' accuracy differed from the one-rank runs' by at most 0.0083 and their ECE by at
most 0.022 (seed 0: 0.0042 and 0.022), while seeds differ among themselves by up to 0.10.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from core.clustering.base_steps import fit_base_network, predict_probs
from core.distributed import launched, parse_devices, world_size
from core.distributed.commands import current_session
from core.errors import CoreInputError, RankLost
from core.hooks import RunHooks
from core.ruc import load_state, train_ruc
from tests.core.distributed_task import K, Task, acc_ece, images01, make_task, spec

ACC_TOL = 0.03  # |accuracy(world 2) - accuracy(world 1)|, one seed: 3.6x the largest measured
ECE_TOL = 0.04  # 1.8x the largest measured
CPU2 = [torch.device("cpu")] * 2


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # launched() gives each of the 2 ranks one thread
    yield
    torch.set_num_threads(before)
    assert not dist.is_initialized()


def _ruc(task: Task, device: Any, **kw: Any):
    return train_ruc(
        task.base, task.images, task.pseudo, task.clean, spec(), num_clusters=K, seed=0, device=device, **kw
    )


def _fit(task: Task) -> tuple[list[float], torch.Tensor]:
    model = make_task().base
    losses = fit_base_network(
        model, images01(task), task.pseudo, epochs=3, seed=0, hooks=RunHooks(), batch_size=40
    )
    return losses, predict_probs(model, images01(task))


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    task = make_task()
    torch.set_num_threads(1)
    one = {"fit": _fit(task), "ruc": _ruc(task, "cpu")}
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    with launched(CPU2) as dev:
        assert world_size() == 2
        two = {"fit": _fit(task), "ruc": _ruc(task, dev)}
    return {"task": task, "one": one, "two": two, "seconds": time.perf_counter() - t0}


def test_two_rank_ruc_matches_one_rank(runs: dict[str, Any]) -> None:
    task, one, two = runs["task"], runs["one"]["ruc"], runs["two"]["ruc"]
    acc1, ece1 = acc_ece(one.probs, task.truth)
    acc2, ece2 = acc_ece(two.probs, task.truth)
    assert abs(acc2 - acc1) <= ACC_TOL, (acc1, acc2)
    assert abs(ece2 - ece1) <= ECE_TOL, (ece1, ece2)
    assert acc2 > 0.6  # it learned something (the pseudo-labels alone are ~0.8 right)
    # Same schedule and bookkeeping: every epoch ran, the losses were summed over both ranks.
    assert [m["epoch"] for m in two.per_epoch] == [1, 2, 3]
    for m1, m2 in zip(one.per_epoch, two.per_epoch, strict=True):
        assert m2["lr"] == m1["lr"] and m2["tau2"] == m1["tau2"]
        assert m2["loss_x"] == pytest.approx(m1["loss_x"], rel=0.25)
    assert torch.allclose(two.probs.sum(1), torch.ones(task.images.shape[0]), atol=1e-5)


def test_two_rank_base_fit_matches_one_rank(runs: dict[str, Any]) -> None:
    (loss1, p1), (loss2, p2) = runs["one"]["fit"], runs["two"]["fit"]
    assert len(loss2) == 3
    assert loss2[-1] == pytest.approx(loss1[-1], rel=0.1)
    agreement = float((p1.argmax(1) == p2.argmax(1)).float().mean())
    assert agreement >= 0.9, agreement


def _kill_in_epoch_2(fraction: float, _epoch: Any, _total: Any) -> None:
    """After network 1's pass of epoch 2 (of 3): kill rank 1 mid-epoch."""
    if fraction == pytest.approx(3 / 6):
        session = current_session()
        assert session is not None
        session.children[0].kill()


def test_kill_mid_epoch_then_resume_on_two_and_on_one_rank(runs: dict[str, Any], tmp_path: Path) -> None:
    task = runs["task"]
    ckpt = tmp_path / "ruc_state.pt"
    killed_at: list[float] = []

    def on_progress(fraction: float, epoch: Any, total: Any) -> None:
        _kill_in_epoch_2(fraction, epoch, total)
        if fraction == pytest.approx(3 / 6):
            killed_at.append(time.perf_counter())

    with pytest.raises(RankLost, match="distributed rank 1 exited"), launched(CPU2) as dev:
        _ruc(task, dev, checkpoint_path=ckpt, hooks=RunHooks(on_progress=on_progress))
    assert time.perf_counter() - killed_at[0] < 30  # gloo notices the dead peer, no timeout wait
    assert load_state(ckpt).epoch == 1
    copy = tmp_path / "copy.pt"
    shutil.copy(ckpt, copy)

    events: list[str] = []
    with launched(CPU2) as dev:
        resumed2 = _ruc(
            task, dev, checkpoint_path=ckpt, hooks=RunHooks(on_event=lambda _l, m: events.append(m))
        )
    assert "RUC: resuming after epoch 1" in events
    # Two gloo ranks on the CPU are deterministic: the resumed run is the uninterrupted one.
    assert torch.equal(resumed2.probs, runs["two"]["ruc"].probs)
    assert load_state(ckpt).epoch == 3

    torch.set_num_threads(1)
    resumed1 = _ruc(task, "cpu", checkpoint_path=copy)
    assert [m["epoch"] for m in resumed1.per_epoch] == [1, 2, 3]
    assert resumed1.per_epoch[0] == resumed2.per_epoch[0]  # epoch 1 came from the world-2 checkpoint
    acc1, _ = acc_ece(runs["one"]["ruc"].probs, task.truth)
    acc_r, _ = acc_ece(resumed1.probs, task.truth)
    assert abs(acc_r - acc1) <= ACC_TOL


def test_parse_devices() -> None:
    assert parse_devices("cpu:2") == CPU2
    assert parse_devices("cuda:0,cuda:1") == [torch.device("cuda", 0), torch.device("cuda", 1)]
    with pytest.raises(CoreInputError, match="named twice"):
        parse_devices("cuda:0,cuda:0")
    with pytest.raises(CoreInputError, match="one kind"):
        parse_devices("cpu,cuda:0")
