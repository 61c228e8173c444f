"""Reading uploaded checkpoint files safely: bytes -> a plain state dict, the file's head, its metadata.

Security: ``.pt``/``.pth``/``.pth.tar`` files are read only with ``torch.load(weights_only=True)``,
whose restricted unpickler refuses any global outside tensors and plain containers, so a pickle
``__reduce__`` payload is rejected before anything runs. ``.safetensors`` holds no code at all.

Wrappers ``{'model': sd, 'head': i}`` (SCAN), ``{'state_dict': sd}`` and ``{'model': sd, ...}`` (SCAN's
training checkpoint with optimizer and epoch) are unwrapped; a DataParallel ``module.`` prefix is
stripped.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from core.datasets.zip_guard import check_zip_directory
from core.errors import CoreInputError

TORCH_SUFFIXES = (".pt", ".pth", ".pth.tar")
SAFETENSORS_SUFFIX = ".safetensors"
FIELD = "checkpoint"
# Keys listed by name in an error before the rest is summarised as a count.
_MAX_NAMED_KEYS = 5
# Records of one torch zip file: one per tensor storage plus a few (data.pkl, version, byteorder).
MAX_TORCH_RECORDS = 100_000
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass(frozen=True)
class RawCheckpoint:
    """state_dict: name -> tensor (prefixes stripped). file_head: the file's own ``head`` entry.
    metadata: safetensors metadata ({} for torch files)."""

    state_dict: dict[str, torch.Tensor]
    file_head: int | None
    metadata: dict[str, str]


def name_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED_KEYS])
    more = len(keys) - _MAX_NAMED_KEYS
    return f"{len(keys)} key(s): {shown}" + (f" (+{more} more)" if more > 0 else "")


def key_problems(
    expected: Mapping[str, Sequence[int]],
    sd: Mapping[str, torch.Tensor],
    *,
    file_name: Callable[[str], str] | None = None,
) -> list[str]:
    """Missing, unexpected and wrong-shape keys of ``sd`` against ``expected`` (key -> shape), each
    kind as one phrase naming its keys as the file names them (``file_name``: our key -> the
    file's, for renamed layouts). A missing BatchNorm ``num_batches_tracked`` is no problem: older
    PyTorch versions did not save it and inference does not read it."""
    name = file_name or str
    missing = [name(k) for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [name(k) for k in sd if k not in expected]
    wrong = [
        f"{name(k)} {tuple(sd[k].shape)} (expected {tuple(shape)})"
        for k, shape in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {name_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {name_keys(unexpected)}")
    if wrong:
        problems.append(f"wrong shape for {name_keys(wrong)}")
    return problems


def _weights_only_detail(err: BaseException) -> str:
    """The specific reason inside torch's long weights_only message (drop its boilerplate)."""
    text = str(err)
    start = text.find("trusted source.")
    if start >= 0:
        text = text[start + len("trusted source.") :]
    end = text.find("Check the documentation")
    if end >= 0:
        text = text[:end]
    return " ".join(text.split()) or type(err).__name__


def _check_torch_zip(path: Path) -> None:
    """A zip-format torch file must hold stored (uncompressed) members that fit in the file.

    ``torch.save`` writes every record stored; torch's reader would inflate a deflated record whole
    into memory, so a few hundred KB could claim gigabytes. Checked before ``torch.load`` reads it.
    """
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return  # the legacy (pre-1.6) pickle format; torch.load checks it
    check_zip_directory(
        path,
        max_members=MAX_TORCH_RECORDS,
        field=FIELD,
        what="readable PyTorch checkpoint (corrupt or truncated?)",
    )
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CoreInputError(FIELD, f"not a readable PyTorch checkpoint (corrupt zip): {err}") from None
    size = path.stat().st_size
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CoreInputError(
                f"{FIELD}:{info.filename}",
                f"record is compressed (method {info.compress_type}); torch.save stores records "
                "uncompressed, refused",
            )
        if info.file_size != info.compress_size or info.file_size > size:
            raise CoreInputError(
                f"{FIELD}:{info.filename}",
                f"record declares {info.file_size} bytes but the file holds {info.compress_size} of it",
            )
    if sum(i.file_size for i in infos) > size:
        raise CoreInputError(FIELD, "records declare more bytes than the file holds; corrupt checkpoint")


def _load_torch_file(path: Path) -> Any:
    _check_torch_zip(path)
    try:
        with warnings.catch_warnings():
            # The restricted unpickler warns about pickle protocols; irrelevant to the user.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _weights_only_detail(err)
        blocked = _GLOBAL.search(detail)
        if blocked:
            raise CoreInputError(
                FIELD,
                f"refused: the file references the Python object {blocked.group(1)}, which could run code "
                "when loaded; only tensors and plain dicts/lists/numbers are accepted",
            ) from None
        raise CoreInputError(FIELD, f"not a valid PyTorch checkpoint ({detail[:200]})") from None
    except Exception as err:  # noqa: BLE001 - any reader failure means a corrupt/unsupported upload
        first = " ".join(str(err).split())[:200]
        raise CoreInputError(
            FIELD,
            f"not a readable PyTorch checkpoint (corrupt or truncated?): {type(err).__name__}: {first}",
        ) from None


def _load_safetensors_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as err:  # noqa: BLE001 - any reader failure means a corrupt/unsupported upload
        first = " ".join(str(err).split())[:200]
        raise CoreInputError(
            FIELD, f"not a readable safetensors file: {type(err).__name__}: {first}"
        ) from None
    return tensors, metadata


def _format_of(path: Path) -> Literal["torch", "safetensors"]:
    name = path.name.lower()
    if name.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    if name.endswith(TORCH_SUFFIXES):
        return "torch"
    # Unknown suffix (e.g. a storage key): safetensors starts with an 8-byte header length then '{'.
    with path.open("rb") as f:
        head = f.read(9)
    return "safetensors" if len(head) == 9 and head[8:9] == b"{" else "torch"


def _unwrap(obj: Any) -> tuple[dict[str, torch.Tensor], int | None]:
    """Find the state dict in a loaded object; return it with the file's ``head`` entry."""
    if not isinstance(obj, Mapping):
        raise CoreInputError(
            FIELD,
            f"top-level object is a {type(obj).__name__}; expected a state dict (dict of tensors) "
            "or a dict wrapping one under 'model' or 'state_dict'",
        )
    file_head: int | None = None
    if "head" in obj and not isinstance(obj["head"], torch.Tensor):
        raw_head = obj["head"]
        if isinstance(raw_head, bool) or not isinstance(raw_head, int):
            raise CoreInputError(f"{FIELD}.head", f"must be an integer head index, got {raw_head!r}")
        file_head = raw_head
    state: Any = obj
    for wrapper_key in ("state_dict", "model"):
        if isinstance(obj.get(wrapper_key), Mapping):
            state = obj[wrapper_key]
            break
    if not state:
        raise CoreInputError(FIELD, "the state dict is empty")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CoreInputError(FIELD, f"entries that are not named tensors: {name_keys(bad)}")
    sd: dict[str, torch.Tensor] = dict(state)
    # DataParallel/DistributedDataParallel save every key under 'module.'.
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd, file_head


def read_checkpoint(path: Path) -> RawCheckpoint:
    """Read ``path`` safely (format sniffed from the name, else the bytes); CoreInputError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CoreInputError(FIELD, f"file not found: {path.name}")
    if _format_of(path) == "safetensors":
        tensors, metadata = _load_safetensors_file(path)
        sd, _ = _unwrap(tensors)
        file_head = None
        if "head" in metadata:
            try:
                file_head = int(metadata["head"])
            except ValueError:
                raise CoreInputError(
                    f"{FIELD}.metadata.head", f"not an integer: {metadata['head']!r}"
                ) from None
        return RawCheckpoint(sd, file_head, metadata)
    sd, file_head = _unwrap(_load_torch_file(path))
    return RawCheckpoint(sd, file_head, {})
