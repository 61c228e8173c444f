"""Entry points that every rank runs together, announced by rank 0 through the rendezvous store.

``@collective(name, local=...)`` marks a function (the base network fit, one RUC run) as one that
all ranks execute. Called on rank 0 of a multi-rank session it posts ``name`` under the next
command key of the store, broadcasts its arguments (``group.broadcast_tree``: tensors by one
collective, the rest pickled) and runs; the followers (``core.distributed.follower``) poll the
store for that key, receive the arguments, substitute their own values for the ``local`` ones
(device, hooks, checkpoint path: each rank has its own; followers write nothing) and run the same
function. Polling the store, not a collective, is what lets followers wait while rank 0 spends
minutes outside training (evaluation, saving) without hitting the process group's timeout.
"""

from __future__ import annotations

import functools
import inspect
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from core.distributed.group import broadcast_tree, is_leader, world_size

F = TypeVar("F", bound=Callable[..., Any])

STOP = "__stop__"
_REGISTRY: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {}


@dataclass
class Session:
    """The command channel of one process group: its store and the next command's number."""

    store: dist.Store
    device: torch.device
    seq: int = 0
    active: bool = False  # inside a collective entry point: nested ones are not announced again
    children: list[Any] = field(default_factory=list)  # rank 0: the followers' subprocess.Popen
    devices: list[str] = field(default_factory=list)  # rank 0: every rank's device, rank 0 first

    def key(self) -> str:
        return f"ruc/cmd/{self.seq}"


_SESSION: Session | None = None


def set_session(session: Session | None) -> None:
    global _SESSION
    _SESSION = session


def current_session() -> Session | None:
    return _SESSION


def devices_in_use(default: torch.device) -> list[str]:
    """Every rank's device in the current session, or [``default``] without one."""
    s = _SESSION
    if s is None or not s.devices or world_size() == 1:
        return [str(default)]
    return list(s.devices)


def post(name: str) -> None:
    """Rank 0: announce command ``name`` (or STOP) to the followers."""
    s = _SESSION
    assert s is not None
    s.store.set(s.key(), pickle.dumps(name))
    s.seq += 1


def collective(name: str, *, local: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Register ``fn`` under ``name`` as an entry point all ranks run (module docstring)."""

    def deco(fn: F) -> F:
        _REGISTRY[name] = (fn, local)
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            s = _SESSION
            if s is None or s.active or world_size() == 1 or not is_leader():
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            shared = {k: v for k, v in bound.arguments.items() if k not in local}
            post(name)
            s.active = True
            try:
                broadcast_tree(shared, device=s.device)
                return fn(*args, **kwargs)
            finally:
                s.active = False

        return wrapper  # type: ignore[return-value]

    return deco


def follow(name: str, session: Session, local_values: dict[str, Any]) -> None:
    """A follower's side of command ``name``: receive the arguments and run the entry point."""
    fn, local = _REGISTRY[name]
    shared = broadcast_tree(None, device=session.device)
    session.active = True
    try:
        fn(**shared, **{k: local_values.get(k) for k in local})
    finally:
        session.active = False
