"""Vision Transformer checkpoints: which layout a state dict has, the architecture its tensors imply,
and the renaming onto core.models.vit's parameter names.

Layouts, told apart by key names:

- ``torchvision`` (``vit_b_16``, ``vit_l_16``, ...): ``conv_proj``, ``class_token``,
  ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_<i>.{ln_1, self_attention.in_proj_*,
  self_attention.out_proj, ln_2, mlp.0 | mlp.linear_1, mlp.3 | mlp.linear_2}``, ``encoder.ln``.
  ``heads.*`` (the ImageNet classifier) is ignored.
- ``dinov2`` and ``timm`` (one naming): ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
  ``blocks.<i>.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``,
  ``norm``; registers as ``register_tokens`` (DINOv2) or ``reg_token`` (timm); DINOv2's training
  form ``blocks.<chunk>.<i>.*`` is read as ``blocks.<i>.*``. ``head.*`` (timm's classifier) and
  ``mask_token`` (DINOv2's masked-patch token) are ignored. A file with ``mask_token`` or
  ``register_tokens`` is reported as ``dinov2``, else ``timm``.

Read from the tensors: patch size and input channels (the patch conv's kernel), width D (its
filters), depth (block indices 0..n-1), MLP width (``fc1`` rows), qkv bias, LayerScale, registers,
and the checkpoint's square patch grid from the position embedding's length L: L - 1 a square (the
class token embedded: torchvision, timm, DINOv2), L a square (timm's ``no_embed_class``, e.g. its
DINOv2-with-registers ports) or L - 1 - R a square (timm with embedded registers). The weights do
not hold the number of heads: it is the safetensors metadata ``num_heads`` when given, else 16 for
D = 1280 (ViT-H/14), else D / 64 (every published ViT-Ti/S/B/L/g has 64-channel heads).

Every other key, or a missing one, makes the file invalid with the keys named; so do LayerScale on
some blocks only and SwiGLU blocks (ViT-g: DINOv2's ``mlp.w12``/``w3``, timm's packed ``fc1``),
which this module does not build.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from core.errors import CoreInputError
from core.models.checkpoint_io import FIELD, key_problems
from core.models.vit import VisionTransformer, ViTConfig, parameter_count

ViTLayout = Literal["torchvision", "dinov2", "timm"]
# Bounds far above any published ViT (ViT-22B: depth 48, width 6144), so a hostile file's meta model
# stays small.
MAX_DEPTH = 128
MAX_DIM = 8192
MAX_PATCH = 64
MAX_REGISTERS = 64
MAX_GRID = 256
# Published widths whose heads are not 64 channels wide: ViT-H/14 (torchvision and timm), 16 heads.
_KNOWN_HEADS = {1280: 16}
_HEAD_WIDTH = 64

# SCAN's wrapping of a backbone and its heads.
BACKBONE_PREFIX = "backbone."
HEAD_PREFIXES = ("cluster_head.", "contrastive_head.")
_TV_BLOCK = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_TV_BLOCK_PARTS = {
    "ln_1.": "norm1.",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.": "attn.proj.",
    "ln_2.": "norm2.",
    "mlp.0.": "mlp.fc1.",
    "mlp.linear_1.": "mlp.fc1.",
    "mlp.3.": "mlp.fc2.",
    "mlp.linear_2.": "mlp.fc2.",
}
_TV_TOP = {
    "conv_proj.": "patch_embed.proj.",
    "class_token": "cls_token",
    "encoder.pos_embedding": "pos_embed",
}
_TV_BLOCK_PARTS_BACK = {new: old for old, new in _TV_BLOCK_PARTS.items() if "linear_" not in old}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class ViTState:
    """A ViT state dict renamed to our keys. ``file_names``: our key -> the file's key (prefix
    removed); ``ignored``: the file's keys that are not part of the backbone (classifiers); ``prefix``: what
    the file puts before every backbone key (SCAN's ``backbone.``, or nothing)."""

    layout: ViTLayout
    state_dict: dict[str, torch.Tensor]
    file_names: dict[str, str]
    ignored: tuple[str, ...]
    prefix: str = ""

    def file_name(self, key: str) -> str:
        """Our ``key`` as this file names it, or would name it (for a missing key)."""
        if key in self.file_names:
            return self.prefix + self.file_names[key]
        if self.layout == "torchvision":
            return self.prefix + _torchvision_file_name(key)
        return self.prefix + ("reg_token" if key == "register_tokens" and self.layout == "timm" else key)


def vit_layout(keys: Mapping[str, Any]) -> ViTLayout | None:
    """The ViT layout of a (backbone) state dict's keys, or None when it is no ViT."""
    if "conv_proj.weight" in keys and "class_token" in keys:
        return "torchvision"
    if "patch_embed.proj.weight" in keys and "cls_token" in keys:
        return "dinov2" if "mask_token" in keys or "register_tokens" in keys else "timm"
    return None


def split_backbone(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """The backbone's tensors (``backbone.`` removed) and whether they were wrapped so; a file
    without ``backbone.*`` keys whose keys are a ViT's is a bare backbone."""
    bb = {k[len(BACKBONE_PREFIX) :]: v for k, v in sd.items() if k.startswith(BACKBONE_PREFIX)}
    if bb or vit_layout(sd) is None:
        return bb, True
    return dict(sd), False


def model_state_dict(sd: Mapping[str, torch.Tensor], layout: ViTLayout) -> dict[str, torch.Tensor]:
    """A ViT file's tensors under our models' keys: ``backbone.`` + the renamed backbone keys (the
    classifier left out), SCAN's heads as they are."""
    bb, _ = split_backbone(sd)
    heads = {k: v for k, v in sd.items() if k.startswith(HEAD_PREFIXES)}
    return {**{BACKBONE_PREFIX + k: v for k, v in to_native(bb, layout).state_dict.items()}, **heads}


def _torchvision_name(key: str) -> str | None:
    """Our name for a torchvision key, None for the classifier; unknown keys keep their name."""
    if key.startswith("heads."):
        return None
    if key.startswith("encoder.ln."):
        return "norm." + key[len("encoder.ln.") :]
    for old, new in _TV_TOP.items():
        if key.startswith(old):
            return new + key[len(old) :]
    m = _TV_BLOCK.match(key)
    if m:
        rest = m.group(2)
        for old, new in _TV_BLOCK_PARTS.items():
            if rest.startswith(old):
                return f"blocks.{m.group(1)}.{new}{rest[len(old) :]}"
    return key


def _torchvision_file_name(key: str) -> str:
    """torchvision's name for one of our keys (legacy MLP names aside)."""
    m = _BLOCK_KEY.match(key)
    if m:
        rest = m.group(2)
        for new, old in _TV_BLOCK_PARTS_BACK.items():
            if rest.startswith(new):
                return f"encoder.layers.encoder_layer_{m.group(1)}.{old}{rest[len(new) :]}"
        return key
    if key.startswith("norm."):
        return "encoder.ln." + key[len("norm.") :]
    for old, new in _TV_TOP.items():
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def _timm_name(key: str) -> str | None:
    if key.startswith("head.") or key == "mask_token":
        return None
    if key == "reg_token":
        return "register_tokens"
    m = _CHUNKED_BLOCK.match(key)
    return f"blocks.{m.group(1)}.{m.group(2)}" if m else key


def to_native(sd: Mapping[str, torch.Tensor], layout: ViTLayout, *, prefix: str = "") -> ViTState:
    """Rename a ViT state dict of ``layout`` to our keys, setting the classifier keys aside;
    ``prefix``: what the file had before these keys (for messages)."""
    rename = _torchvision_name if layout == "torchvision" else _timm_name
    out: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    ignored: list[str] = []
    for key, value in sd.items():
        new = rename(key)
        if new is None:
            ignored.append(prefix + key)
            continue
        if new in out:
            raise CoreInputError(
                FIELD, f"keys {prefix + names[new]!r} and {prefix + key!r} are the same parameter"
            )
        out[new], names[new] = value, key
    return ViTState(layout, out, names, tuple(ignored), prefix)


def _shape(state: ViTState, key: str, ndim: int) -> tuple[int, ...]:
    t = state.state_dict.get(key)
    if t is None:
        raise CoreInputError(FIELD, f"a {state.layout} ViT needs {state.file_name(key)!r}; it is missing")
    if t.ndim != ndim:
        raise CoreInputError(f"{FIELD}:{state.file_name(key)}", f"expected {ndim}-d, got {tuple(t.shape)}")
    return tuple(int(s) for s in t.shape)


def _bounded(state: ViTState, key: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise CoreInputError(f"{FIELD}:{state.file_name(key)}", f"{value} is outside {low}..{high}")
    return value


def _depth(state: ViTState) -> int:
    indices = sorted({int(m.group(1)) for k in state.state_dict if (m := _BLOCK.match(k))})
    if not indices:
        raise CoreInputError(FIELD, "a ViT needs transformer blocks (blocks.<i>.*); none found")
    if indices != list(range(len(indices))):
        shown = indices[:8] + (["..."] if len(indices) > 8 else [])  # type: ignore[list-item]
        raise CoreInputError(FIELD, f"ViT block indices must be 0..n-1, found {shown}")
    if len(indices) > MAX_DEPTH:
        raise CoreInputError(FIELD, f"{len(indices)} ViT blocks, more than {MAX_DEPTH}")
    return len(indices)


def _grid(state: ViTState, length: int, registers: int) -> tuple[int, int]:
    """(grid side, prefix tokens embedded) from the position embedding's length."""
    for prefix in dict.fromkeys((1, 0, 1 + registers)):
        side = math.isqrt(max(length - prefix, 0))
        if side > 0 and side * side == length - prefix:
            return _bounded(state, "pos_embed", side, 1, MAX_GRID), prefix
    raise CoreInputError(
        f"{FIELD}:{state.file_name('pos_embed')}",
        f"{length} position embeddings are no square patch grid plus 0, 1 or {1 + registers} prefix tokens",
    )


def _heads(dim: int, metadata: Mapping[str, str]) -> tuple[int, str]:
    """(heads, source): metadata ``num_heads``, else the known width, else D / 64."""
    raw = metadata.get("num_heads")
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1 or dim % int(raw):
            raise CoreInputError(f"{FIELD}.metadata.num_heads", f"must divide the width {dim}, got {raw!r}")
        return int(raw), "metadata"
    if dim in _KNOWN_HEADS:
        return _KNOWN_HEADS[dim], "width"
    if dim % _HEAD_WIDTH == 0:
        return dim // _HEAD_WIDTH, "width"
    raise CoreInputError(
        FIELD,
        f"cannot tell the heads of a {dim}-wide ViT (not a multiple of {_HEAD_WIDTH}); give them "
        "as safetensors metadata num_heads",
    )


def read_config(state: ViTState, metadata: Mapping[str, str]) -> tuple[ViTConfig, str]:
    """The architecture the renamed tensors imply, and where the head count came from."""
    sd = state.state_dict
    patch_key = "patch_embed.proj.weight"
    dim, channels, p, p_w = _shape(state, patch_key, 4)
    if p != p_w:
        raise CoreInputError(f"{FIELD}:{state.file_name(patch_key)}", f"non-square patches {p}x{p_w}")
    _bounded(state, patch_key, dim, 1, MAX_DIM)
    _bounded(state, patch_key, p, 1, MAX_PATCH)
    registers = 0
    if "register_tokens" in sd:
        registers = _bounded(
            state, "register_tokens", _shape(state, "register_tokens", 3)[1], 1, MAX_REGISTERS
        )
    grid, pos_prefix = _grid(state, _shape(state, "pos_embed", 3)[1], registers)
    if "blocks.0.mlp.fc1.weight" not in sd and any(".mlp.w12." in k for k in sd):
        raise CoreInputError(FIELD, "DINOv2's SwiGLU blocks (ViT-g, mlp.w12/w3) are not supported")
    mlp_dim = _bounded(
        state, "blocks.0.mlp.fc1.weight", _shape(state, "blocks.0.mlp.fc1.weight", 2)[0], 1, 8 * MAX_DIM
    )
    fc2 = sd.get("blocks.0.mlp.fc2.weight")
    if fc2 is not None and fc2.ndim == 2 and 2 * fc2.shape[1] == mlp_dim:
        raise CoreInputError(FIELD, "SwiGLU blocks (timm's packed mlp.fc1 of ViT-g) are not supported")
    heads, heads_source = _heads(dim, metadata)
    config = ViTConfig(
        patch_size=p,
        dim=dim,
        depth=_depth(state),
        heads=heads,
        mlp_dim=mlp_dim,
        grid=grid,
        in_channels=channels,
        registers=registers,
        pos_prefix=pos_prefix,
        layer_scale="blocks.0.ls1.gamma" in sd,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )
    return config, heads_source


def expected_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``VisionTransformer(config)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = VisionTransformer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_keys(state: ViTState, config: ViTConfig) -> None:
    """Raise CoreInputError naming every missing, unexpected or wrong-shape key."""
    problems = key_problems(expected_shapes(config), state.state_dict, file_name=state.file_name)
    if problems:
        raise CoreInputError(
            FIELD, f"does not match the {state.layout} ViT its keys describe: " + "; ".join(problems)
        )


def vit_facts(state: ViTState, config: ViTConfig, heads_source: str) -> dict[str, Any]:
    """What validation reports about a ViT backbone (the config's fields among them)."""
    return {
        "layout": state.layout,
        **config.as_dict(),
        "image_size": config.image_size,
        "heads_source": heads_source,
        "parameters": parameter_count(config),
        "embedding": "class token after the final norm",
    }


def key_report(state: ViTState) -> dict[str, Any]:
    """Backbone keys matched (all of ours, as ``check_keys`` passed) and the file's ignored keys."""
    return {"matched": len(state.state_dict), "ignored": list(state.ignored)}
