"""Safe loading of uploaded checkpoints (SCAN / SimCLR / self-label layouts) and safetensors export.

Security: ``.pt``/``.pth``/``.pth.tar`` files are read only with ``torch.load(weights_only=True)``,
whose restricted unpickler refuses any global outside tensors and plain containers, so a pickle
``__reduce__`` payload is rejected before anything runs. ``.safetensors`` holds no code at all.

Accepted content (after unwrapping): a state dict whose keys follow SCAN's layout, either
``backbone.* + cluster_head.<i>.*`` (clustering; SCAN's ``scan_*``/``selflabel_*`` files) or
``backbone.* + contrastive_head.*`` (embedding; SCAN's ``simclr_*`` files). Wrappers
``{'model': sd, 'head': i}`` (SCAN), ``{'state_dict': sd}`` and ``{'model': sd, ...}`` (SCAN's training
checkpoint with optimizer and epoch) are unwrapped; a DataParallel ``module.`` prefix is stripped.
The architecture is read from the key names and shapes, never from code in the file.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from core.errors import CoreInputError
from core.models.backbones import BACKBONE_NAMES, build_backbone
from core.models.heads import ClusteringModel, EmbeddingModel
from core.spec import BackboneName

CheckpointKind = Literal["clustering", "embedding"]

TORCH_SUFFIXES = (".pt", ".pth", ".pth.tar")
SAFETENSORS_SUFFIX = ".safetensors"
_FIELD = "checkpoint"
# Keys listed by name in an error before the rest is summarised as a count.
_MAX_NAMED_KEYS = 5
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_HEAD_KEY = re.compile(r"^cluster_head\.(\d+)\.(weight|bias)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, read from its keys and shapes.

    ``head`` is the selected head: the file's own ``head`` entry (SCAN stores its lowest-loss head),
    else 0. ``nheads`` is 0 for an embedding model. ``features_dim`` is the projection size of an
    embedding model (None for clustering); ``backbone_dim`` is D. ``mean``/``std`` come from our
    safetensors metadata (None otherwise).
    """

    kind: CheckpointKind
    backbone: BackboneName
    num_clusters: int | None
    nheads: int
    head: int
    in_channels: int
    features_dim: int | None
    backbone_dim: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable facts (for the API's checkpoint record)."""
        d = asdict(self)
        d["mean"] = list(self.mean) if self.mean is not None else None
        d["std"] = list(self.std) if self.std is not None else None
        return d


@dataclass(frozen=True)
class _RawCheckpoint:
    state_dict: dict[str, torch.Tensor]
    file_head: int | None
    metadata: dict[str, str]


def _name_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED_KEYS])
    more = len(keys) - _MAX_NAMED_KEYS
    return f"{len(keys)} key(s): {shown}" + (f" (+{more} more)" if more > 0 else "")


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


def _load_torch_file(path: Path) -> Any:
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
                _FIELD,
                f"refused: the file references the Python object {blocked.group(1)}, which could run code "
                "when loaded; only tensors and plain dicts/lists/numbers are accepted",
            ) from None
        raise CoreInputError(_FIELD, f"not a valid PyTorch checkpoint ({detail[:200]})") from None
    except Exception as err:  # noqa: BLE001 - any reader failure means a corrupt/unsupported upload
        first = " ".join(str(err).split())[:200]
        raise CoreInputError(
            _FIELD,
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
            _FIELD, f"not a readable safetensors file: {type(err).__name__}: {first}"
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
            _FIELD,
            f"top-level object is a {type(obj).__name__}; expected a state dict (dict of tensors) "
            "or a dict wrapping one under 'model' or 'state_dict'",
        )
    file_head: int | None = None
    if "head" in obj and not isinstance(obj["head"], torch.Tensor):
        raw_head = obj["head"]
        if isinstance(raw_head, bool) or not isinstance(raw_head, int):
            raise CoreInputError(f"{_FIELD}.head", f"must be an integer head index, got {raw_head!r}")
        file_head = raw_head
    state: Any = obj
    for wrapper_key in ("state_dict", "model"):
        if isinstance(obj.get(wrapper_key), Mapping):
            state = obj[wrapper_key]
            break
    if not state:
        raise CoreInputError(_FIELD, "the state dict is empty")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CoreInputError(_FIELD, f"entries that are not named tensors: {_name_keys(bad)}")
    sd: dict[str, torch.Tensor] = dict(state)
    # DataParallel/DistributedDataParallel save every key under 'module.'.
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd, file_head


def _read(path: Path) -> _RawCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise CoreInputError(_FIELD, f"file not found: {path.name}")
    if _format_of(path) == "safetensors":
        tensors, metadata = _load_safetensors_file(path)
        sd, _ = _unwrap(tensors)
        file_head = None
        if "head" in metadata:
            try:
                file_head = int(metadata["head"])
            except ValueError:
                raise CoreInputError(
                    f"{_FIELD}.metadata.head", f"not an integer: {metadata['head']!r}"
                ) from None
        return _RawCheckpoint(sd, file_head, metadata)
    sd, file_head = _unwrap(_load_torch_file(path))
    return _RawCheckpoint(sd, file_head, {})


def _block_indices(keys: Sequence[str], layer: str) -> set[int]:
    return {int(k.split(".")[1]) for k in keys if k.startswith(layer + ".") and k.split(".")[1].isdigit()}


def _detect_backbone(bb: Mapping[str, torch.Tensor]) -> tuple[BackboneName, int]:
    """Backbone name and input channels from ``backbone.*`` keys (prefix removed)."""
    if "blocks.0.conv.weight" in bb:
        w = bb["blocks.0.conv.weight"]
        if w.ndim != 4:
            raise CoreInputError(
                f"{_FIELD}:backbone.blocks.0.conv.weight", f"expected 4-d, got {tuple(w.shape)}"
            )
        return "small_cnn", int(w.shape[1])
    w = bb.get("conv1.weight")
    if w is None:
        raise CoreInputError(
            _FIELD,
            "unrecognised backbone: no backbone.conv1.weight (ResNet) or backbone.blocks.0.conv.weight "
            f"(small_cnn); backbone keys start with {_name_keys(sorted(bb))}",
        )
    if w.ndim != 4 or w.shape[0] != 64:
        raise CoreInputError(
            f"{_FIELD}:backbone.conv1.weight", f"expected shape (64, C, k, k), got {tuple(w.shape)}"
        )
    keys = list(bb)
    depth = tuple(len(_block_indices(keys, f"layer{i}")) for i in range(1, 5))
    kernel = int(w.shape[-1])
    name: BackboneName | None = None
    if kernel == 3 and depth == (2, 2, 2, 2):
        name = "resnet18_cifar"
    elif kernel == 7 and "layer1.0.conv3.weight" in bb and depth == (3, 4, 6, 3):
        name = "resnet50"
    elif kernel == 7 and depth == (2, 2, 2, 2):
        name = "resnet18"
    elif kernel == 7 and depth == (3, 4, 6, 3):
        name = "resnet34"
    if name is None:
        raise CoreInputError(
            _FIELD,
            f"unsupported ResNet: {kernel}x{kernel} stem with blocks per stage {depth}; supported: "
            "resnet18_cifar (3x3 stem, 2-2-2-2), resnet18 (7x7, 2-2-2-2), resnet34 (7x7, 3-4-6-3), "
            "resnet50 (7x7, bottleneck 3-4-6-3)",
        )
    return name, int(w.shape[1])


def _parse_stats(metadata: Mapping[str, str], key: str) -> tuple[float, ...] | None:
    if key not in metadata:
        return None
    try:
        values = json.loads(metadata[key])
        return tuple(float(v) for v in values)
    except (ValueError, TypeError):
        raise CoreInputError(
            f"{_FIELD}.metadata.{key}", f"expected a JSON list of numbers, got {metadata[key]!r}"
        ) from None


def _analyse(raw: _RawCheckpoint) -> CheckpointInfo:
    sd = raw.state_dict
    bb = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    head_keys = [k for k in sd if k.startswith("cluster_head.")]
    proj_keys = [k for k in sd if k.startswith("contrastive_head.")]
    if not bb:
        raise CoreInputError(
            _FIELD,
            "no backbone.* keys: expected SCAN's layout (backbone.*, cluster_head.<i>.* or "
            f"contrastive_head.*); found {_name_keys(sorted(sd))}",
        )
    if head_keys and proj_keys:
        raise CoreInputError(
            _FIELD, "has both cluster_head.* and contrastive_head.* keys; cannot tell its kind"
        )
    if not head_keys and not proj_keys:
        raise CoreInputError(
            _FIELD,
            "neither cluster_head.* (clustering model) nor contrastive_head.* (embedding model) keys found",
        )
    backbone, in_channels = _detect_backbone(bb)
    if in_channels not in (1, 3):
        raise CoreInputError(_FIELD, f"backbone input channels must be 1 or 3, found {in_channels}")
    dim = {"resnet50": 2048, "small_cnn": 128}.get(backbone, 512)
    mean, std = _parse_stats(raw.metadata, "mean"), _parse_stats(raw.metadata, "std")

    if proj_keys:
        w0, w2 = sd.get("contrastive_head.0.weight"), sd.get("contrastive_head.2.weight")
        if w0 is None or w2 is None:
            raise CoreInputError(
                _FIELD,
                "contrastive_head must be SCAN's mlp head (contrastive_head.0.weight and "
                f"contrastive_head.2.weight); found {_name_keys(sorted(proj_keys))}",
            )
        if w2.ndim != 2 or w2.shape[1] != dim:
            raise CoreInputError(
                f"{_FIELD}:contrastive_head.2.weight",
                f"expected shape (features_dim, {dim}) for {backbone}, got {tuple(w2.shape)}",
            )
        return CheckpointInfo(
            "embedding", backbone, None, 0, 0, in_channels, int(w2.shape[0]), dim, mean, std
        )

    bad = [k for k in head_keys if not _HEAD_KEY.match(k)]
    if bad:
        raise CoreInputError(_FIELD, f"cluster heads must be linear layers; unexpected {_name_keys(bad)}")
    indices = sorted({int(_HEAD_KEY.match(k).group(1)) for k in head_keys})  # type: ignore[union-attr]
    nheads = len(indices)
    if indices != list(range(nheads)):
        raise CoreInputError(_FIELD, f"cluster head indices must be 0..{nheads - 1}, found {indices}")
    sizes: dict[int, int] = {}
    for i in indices:
        w = sd.get(f"cluster_head.{i}.weight")
        if w is None or w.ndim != 2 or w.shape[1] != dim:
            found = None if w is None else tuple(w.shape)
            raise CoreInputError(
                f"{_FIELD}:cluster_head.{i}.weight",
                f"expected shape (num_clusters, {dim}) for {backbone}, got {found}",
            )
        sizes[i] = int(w.shape[0])
    if len(set(sizes.values())) != 1:
        raise CoreInputError(_FIELD, f"cluster heads disagree on the number of clusters: {sizes}")
    head = raw.file_head if raw.file_head is not None else 0
    if not 0 <= head < nheads:
        raise CoreInputError(
            f"{_FIELD}.head", f"the file selects head {head}, but it has {nheads} head(s) (0..{nheads - 1})"
        )
    return CheckpointInfo("clustering", backbone, sizes[0], nheads, head, in_channels, None, dim, mean, std)


def _check_metadata(info: CheckpointInfo, metadata: Mapping[str, str]) -> None:
    """Our own safetensors metadata must agree with what the keys say."""
    for key, found in (("kind", info.kind), ("backbone", info.backbone)):
        if key in metadata and metadata[key] != found:
            raise CoreInputError(
                f"{_FIELD}.metadata.{key}", f"says {metadata[key]!r} but the tensors are a {found!r} model"
            )


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """Read a checkpoint safely and describe it (kind, backbone, clusters, heads, channels).

    Raises CoreInputError for unreadable, unsafe or unrecognised files.
    """
    raw = _read(Path(path))
    info = _analyse(raw)
    _check_metadata(info, raw.metadata)
    return info


def _load_state(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Strict load with every mismatch named; missing BatchNorm ``num_batches_tracked`` is tolerated
    (older PyTorch versions did not save it and it does not affect inference)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_name_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {_name_keys(unexpected)}")
    if wrong:
        problems.append(f"wrong shape for {_name_keys(wrong)}")
    if problems:
        raise CoreInputError(_FIELD, "does not match the detected architecture: " + "; ".join(problems))
    converted: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        target = expected[k]
        if target.is_floating_point():
            if v.is_complex():
                raise CoreInputError(f"{_FIELD}:{k}", f"expected a real tensor, got {v.dtype}")
            v = v.to(target.dtype)
            if not torch.isfinite(v).all():
                raise CoreInputError(f"{_FIELD}:{k}", "contains NaN or infinite values")
        else:
            v = v.to(target.dtype)
        converted[k] = v
    model.load_state_dict(converted, strict=False)


def load_clustering_model(
    path: Path,
    *,
    num_clusters: int | None,
    head: int | None,
    backbone: str | None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> ClusteringModel:
    """Load a clustering checkpoint and keep one head (``head`` if given, else the file's choice).

    ``num_clusters``/``backbone`` (when not None) are the job's expectations; a mismatch is a
    CoreInputError naming both. ``mean``/``std`` override the normalisation (default: the file's
    metadata, else 0.5/0.25). Returns a model in eval mode with ``nheads == 1``.
    """
    raw = _read(Path(path))
    info = _analyse(raw)
    _check_metadata(info, raw.metadata)
    if info.kind != "clustering":
        raise CoreInputError(
            _FIELD,
            "is an embedding model (contrastive_head.*), but a clustering model (cluster_head.*) is needed",
        )
    if backbone is not None and backbone != info.backbone:
        raise CoreInputError(
            "backbone", f"the job expects {backbone!r} but the checkpoint holds {info.backbone!r}"
        )
    if num_clusters is not None and num_clusters != info.num_clusters:
        raise CoreInputError(
            "num_clusters",
            f"the job expects {num_clusters} clusters but the checkpoint's heads have {info.num_clusters}",
        )
    selected = info.head if head is None else head
    if not 0 <= selected < info.nheads:
        raise CoreInputError(
            "head",
            f"head {selected} is out of range: the checkpoint has {info.nheads} head(s) "
            f"(0..{info.nheads - 1})",
        )
    net, dim = build_backbone(info.backbone, in_channels=info.in_channels)
    assert info.num_clusters is not None
    model = ClusteringModel(
        net,
        dim,
        info.num_clusters,
        nheads=info.nheads,
        mean=mean if mean is not None else info.mean,
        std=std if std is not None else info.std,
    )
    _load_state(model, raw.state_dict)
    model.cluster_head = nn.ModuleList([model.cluster_head[selected]])
    model.nheads = 1
    model.active_head = 0
    return model.eval()


def load_embedding_model(
    path: Path,
    *,
    backbone: str | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> EmbeddingModel:
    """Load an embedding (SimCLR-layout) checkpoint; returns an EmbeddingModel in eval mode."""
    raw = _read(Path(path))
    info = _analyse(raw)
    _check_metadata(info, raw.metadata)
    if info.kind != "embedding":
        raise CoreInputError(
            _FIELD,
            "is a clustering model (cluster_head.*), but an embedding model (contrastive_head.*) is needed",
        )
    if backbone is not None and backbone != info.backbone:
        raise CoreInputError(
            "backbone", f"the job expects {backbone!r} but the checkpoint holds {info.backbone!r}"
        )
    net, dim = build_backbone(info.backbone, in_channels=info.in_channels)
    assert info.features_dim is not None
    model = EmbeddingModel(
        net,
        dim,
        features_dim=info.features_dim,
        mean=mean if mean is not None else info.mean,
        std=std if std is not None else info.std,
    )
    _load_state(model, raw.state_dict)
    return model.eval()


def save_safetensors(model: ClusteringModel | EmbeddingModel, path: Path) -> None:
    """Write the state dict (contiguous CPU tensors) and metadata (kind, backbone, num_clusters, nheads,
    head, in_channels, mean, std) to ``path``; ``load_*_model`` reads it back."""
    from safetensors.torch import save_file

    if isinstance(model, ClusteringModel):
        kind, num_clusters = "clustering", str(model.num_clusters)
    elif isinstance(model, EmbeddingModel):
        kind, num_clusters = "embedding", ""
    else:
        raise TypeError(f"expected ClusteringModel or EmbeddingModel, got {type(model).__name__}")
    backbone = model.backbone_name
    if backbone not in BACKBONE_NAMES:
        raise ValueError(f"model.backbone_name must be one of {BACKBONE_NAMES}, got {backbone!r}")
    metadata = {
        "format": "ruc-service",
        "kind": kind,
        "backbone": str(backbone),
        "num_clusters": num_clusters,
        "in_channels": str(getattr(model.backbone, "in_channels", "")),
        "mean": json.dumps(model.mean.flatten().tolist()),
        "std": json.dumps(model.std.flatten().tolist()),
    }
    if isinstance(model, ClusteringModel):
        metadata["nheads"] = str(model.nheads)
        metadata["head"] = str(model.active_head)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
