"""Vision Transformer checkpoints in torchvision's, timm's and DINOv2's layouts load into our ViT and
embed exactly as the independent definitions do (torchvision's VisionTransformer, timm's, the
DINOv2-layout reference in vit_reference.py), at the checkpoint's image size and, through resampled
position embeddings, at others; the architecture is read from the weights; bad files are refused
by name."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn
from vit_reference import DinoV2Reference, chunked, jitter

from core.errors import CoreInputError
from core.models import (
    ClusteringModel,
    VisionTransformer,
    ViTConfig,
    build_backbone,
    choose_backbone,
    input_plan,
    inspect_checkpoint,
    load_clustering_model,
    load_embedding_model,
    save_safetensors,
)
from core.models.checkpoint_io import RawCheckpoint
from core.models.checkpoint_layout import analyse_checkpoint
from core.spec.common import NORMALISATION_PRESETS

IMAGENET_MEAN, IMAGENET_STD = NORMALISATION_PRESETS["imagenet"]
TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Small models: thread start-up costs more than it saves, and the test machine is shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images as the references take them: ImageNet-normalised."""
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _images(n: int, height: int, width: int | None = None, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, height, width or height, generator=torch.Generator().manual_seed(seed))


def _max_diff(ours: nn.Module, reference: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Largest difference of our embedding model's backbone feature and the reference's class
    token, on the same [0, 1] images."""
    with torch.no_grad():
        return float((ours.features(x) - reference(_normalised(x))).abs().max())  # type: ignore[operator]


def _torchvision_vit(**kw: Any) -> torchvision.models.VisionTransformer:
    torch.manual_seed(0)
    args = {"image_size": 32, "patch_size": 8, "num_layers": 3, "num_heads": 2, "hidden_dim": 128}
    return jitter(
        torchvision.models.VisionTransformer(**{**args, "mlp_dim": 320, "num_classes": 10, **kw}), 0.05
    )


@pytest.mark.parametrize("legacy_mlp_names", [False, True])
def test_torchvision_vit_embeds_as_torchvision_does(tmp_path: Path, legacy_mlp_names: bool) -> None:
    ref = _torchvision_vit()
    sd = ref.state_dict()
    if legacy_mlp_names:  # torchvision < 0.12 named the MLP's layers linear_1 / linear_2
        sd = {
            k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in sd.items()
        }
    torch.save(sd, tmp_path / "vit.pth")
    info = inspect_checkpoint(tmp_path / "vit.pth")
    assert (info.kind, info.backbone, info.projection_head, info.features_dim) == (
        "embedding",
        "vit",
        False,
        128,
    )
    vit = info.vit or {}
    assert {
        k: vit[k] for k in ("layout", "patch_size", "image_size", "depth", "dim", "heads", "mlp_dim")
    } == {
        "layout": "torchvision",
        "patch_size": 8,
        "image_size": 32,
        "depth": 3,
        "dim": 128,
        "heads": 2,
        "mlp_dim": 320,
    }
    assert vit["heads_source"] == "width" and vit["parameters"] == sum(
        p.numel() for name, p in ref.named_parameters() if not name.startswith("heads.")
    )
    assert info.keys == {"matched": len(sd) - 2, "ignored": ["heads.head.weight", "heads.head.bias"]}
    assert info.normalisation == {
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "source": "checkpoint_layout",
        "preset": "imagenet",
    }
    model = load_embedding_model(tmp_path / "vit.pth")
    ref.heads = nn.Identity()  # torchvision's forward then returns the class token after encoder.ln
    x = _images(4, 32)
    diff = _max_diff(model, ref, x)
    print(f"torchvision ViT (legacy names {legacy_mlp_names}): max |ours - torchvision| = {diff:.2e}")
    assert diff < TOL
    with torch.no_grad():  # the embedding a job clusters: the class token, L2-normalised
        assert torch.allclose(model(x), F.normalize(ref(_normalised(x)), dim=1), atol=TOL)


@pytest.mark.parametrize(
    ("name", "depth", "dim", "patch"),
    [("vit_b_16", 12, 768, 16), ("vit_l_16", 24, 1024, 16), ("vit_h_14", 32, 1280, 14)],
)
def test_torchvisions_published_vits_are_read_from_their_shapes(
    name: str, depth: int, dim: int, patch: int
) -> None:
    with torch.device("meta"):  # shapes only: no memory, no weights downloaded
        net = getattr(torchvision.models, name)()
    info = analyse_checkpoint(RawCheckpoint(net.state_dict(), None, {}))
    vit = info.vit or {}
    heads = net.encoder.layers[0].self_attention.num_heads
    assert (vit["depth"], vit["dim"], vit["patch_size"], vit["image_size"]) == (depth, dim, patch, 224)
    assert vit["heads"] == heads, f"{name}: the head rule gives {vit['heads']}, torchvision has {heads}"


def _timm(**kw: Any) -> TimmViT:
    torch.manual_seed(0)
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 128, "depth": 2, "num_heads": 2, "mlp_ratio": 3.0}
    return jitter(TimmViT(**{**args, "num_classes": 7, "dynamic_img_size": True, **kw}), 0.05)


TIMM_VARIANTS: dict[str, tuple[dict[str, Any], int]] = {
    # name: (timm arguments, prefix tokens with a position embedding)
    "class token embedded": ({}, 1),
    "registers, no_embed_class, LayerScale (timm's DINOv2-reg ports)": (
        {"reg_tokens": 4, "no_embed_class": True, "init_values": 1e-5},
        0,
    ),
    "registers embedded": ({"reg_tokens": 2}, 3),
    "no qkv bias": ({"qkv_bias": False}, 1),
}


@pytest.mark.parametrize("variant", list(TIMM_VARIANTS))
def test_timm_vit_embeds_as_timm_does_at_its_size_and_others(tmp_path: Path, variant: str) -> None:
    kw, pos_prefix = TIMM_VARIANTS[variant]
    ref = _timm(**kw)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "timm.pth")
    info = inspect_checkpoint(tmp_path / "timm.pth")
    vit = info.vit or {}
    assert (vit["layout"], vit["registers"], vit["pos_prefix"]) == (
        "timm",
        kw.get("reg_tokens", 0),
        pos_prefix,
    )
    assert (vit["layer_scale"], vit["qkv_bias"], vit["mlp_dim"]) == (
        "init_values" in kw,
        kw.get("qkv_bias", True),
        384,
    )
    assert info.keys is not None and info.keys["ignored"] == ["head.weight", "head.bias"]
    model = load_embedding_model(tmp_path / "timm.pth")
    backbone = model.backbone
    assert isinstance(backbone, VisionTransformer)
    # timm's dynamic_img_size resamples the position embedding as ours does; at 32 px neither does.
    assert backbone.position_embedding(4, 4) is backbone.pos_embed
    for height, width in ((32, 32), (48, 48), (56, 40), (16, 24)):
        x = _images(3, height, width)
        diff = _max_diff(model, lambda z: ref.forward_features(z)[:, 0], x)
        with torch.no_grad():
            tokens = backbone.forward_tokens(_normalised(x)).shape[1]
            timm_tokens = ref.forward_features(_normalised(x)).shape[1]
        plan = input_plan(backbone.config, height, width)
        print(f"timm {variant}, {height}x{width} px: {tokens} tokens, max |ours - timm| = {diff:.2e}")
        assert diff < TOL
        assert tokens == timm_tokens == plan["tokens"] == 1 + vit["registers"] + (height // 8) * (width // 8)
        assert plan["pos_embed"] == ("checkpoint" if (height, width) == (32, 32) else "interpolated")


def test_a_side_off_the_patch_grid_is_resized_to_the_nearest_multiple(tmp_path: Path) -> None:
    ref = _timm()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    model = load_embedding_model(tmp_path / "timm.pth")
    x = _images(2, 30, 45)
    plan = input_plan(model.backbone.config, 30, 45)  # type: ignore[arg-type]
    assert plan == {
        "input_size": [32, 48],
        "resized": True,
        "grid": [4, 6],
        "checkpoint_grid": [4, 4],
        "pos_embed": "interpolated",
        "tokens": 25,
    }
    resized = F.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        assert torch.allclose(model.features(x), ref.forward_features(_normalised(resized))[:, 0], atol=TOL)


@pytest.mark.parametrize(("registers", "per_chunk"), [(0, 0), (4, 2)])
def test_dinov2_vit_embeds_as_the_reference_does(tmp_path: Path, registers: int, per_chunk: int) -> None:
    torch.manual_seed(0)
    ref = jitter(DinoV2Reference(img_size=28, patch=7, dim=128, depth=3, heads=2, registers=registers), 0.05)
    sd = ref.state_dict()
    torch.save(chunked(sd, per_chunk) if per_chunk else sd, tmp_path / "dinov2.pth")
    info = inspect_checkpoint(tmp_path / "dinov2.pth")
    vit = info.vit or {}
    assert (vit["layout"], vit["patch_size"], vit["image_size"], vit["depth"], vit["dim"]) == (
        "dinov2",
        7,
        28,
        3,
        128,
    )
    assert (vit["registers"], vit["pos_prefix"], vit["layer_scale"]) == (registers, 1, True)
    assert info.keys == {"matched": len(sd) - 1, "ignored": ["mask_token"]}
    model = load_embedding_model(tmp_path / "dinov2.pth")
    diff = _max_diff(model, ref, _images(4, 28))
    print(
        f"DINOv2 layout, {registers} registers, chunked {bool(per_chunk)}: max |ours - reference| {diff:.2e}"
    )
    assert diff < TOL


def test_a_vit_s_14_dinov2_checkpoint_loads_and_embeds_at_224_px(tmp_path: Path) -> None:
    """dinov2_vits14's shapes (384 wide, 12 blocks, 6 heads, patch 14, trained at 518 px), random
    weights; embedded at 224 px as timm embeds the same weights (both resample the position
    embedding from the 37x37 grid to 16x16)."""
    torch.manual_seed(0)
    # jittered: LayerScale's 1e-5 start would leave every block's branch all but silent
    ref = jitter(DinoV2Reference(img_size=518, patch=14, dim=384, depth=12, heads=6), 0.02)
    sd = ref.state_dict()
    torch.save(sd, tmp_path / "dinov2_vits14.pth")
    start = time.perf_counter()
    info = inspect_checkpoint(tmp_path / "dinov2_vits14.pth")
    inspected = time.perf_counter()
    model = load_embedding_model(tmp_path / "dinov2_vits14.pth")
    loaded = time.perf_counter()
    x = _images(2, 224)
    with torch.no_grad():
        emb = model.features(x)
    embedded = time.perf_counter()
    vit = info.vit or {}
    assert (vit["dim"], vit["depth"], vit["heads"], vit["patch_size"], vit["image_size"]) == (
        384,
        12,
        6,
        14,
        518,
    )
    assert vit["parameters"] == sum(p.numel() for name, p in ref.named_parameters() if name != "mask_token")
    assert input_plan(model.backbone.config, 224, 224)["tokens"] == 1 + 16 * 16  # type: ignore[arg-type]
    with torch.device("meta"):  # no initialisation: every parameter is loaded
        timm_ref = TimmViT(
            img_size=518, patch_size=14, embed_dim=384, depth=12, num_heads=6, init_values=1e-5,
            num_classes=0, dynamic_img_size=True,
        )  # fmt: skip
    timm_ref.load_state_dict({k: v for k, v in sd.items() if k != "mask_token"}, assign=True)
    timm_ref.eval()
    with torch.no_grad():  # one image: the comparison at this size costs a forward of its own
        diff = float((emb[:1] - timm_ref(_normalised(x[:1]))).abs().max())
    print(
        f"ViT-S/14 DINOv2 layout ({vit['parameters'] / 1e6:.1f} M parameters): inspect "
        f"{inspected - start:.2f} s, load {loaded - inspected:.2f} s, embed 2 images at 224 px "
        f"{embedded - loaded:.2f} s; max |ours - timm| (first image) = {diff:.2e}"
    )
    assert emb.shape == (2, 384) and diff < TOL


def test_timms_published_dinov2_with_registers_is_read_from_its_shapes() -> None:
    import timm

    with torch.device("meta"):
        reg4 = timm.create_model("vit_base_patch14_reg4_dinov2", pretrained=False)
    vit = analyse_checkpoint(RawCheckpoint(reg4.state_dict(), None, {})).vit or {}
    heads = reg4.blocks[0].attn.num_heads
    assert (vit["dim"], vit["heads"], vit["registers"], vit["pos_prefix"], vit["image_size"]) == (
        768,
        heads,
        4,
        0,
        518,
    )


def test_heads_from_safetensors_metadata(tmp_path: Path) -> None:
    """A 96-wide ViT with 3 heads: the weights cannot say, the metadata does."""
    ref = _timm(embed_dim=96, num_heads=3)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    torch.save(sd, tmp_path / "vit.pth")
    with pytest.raises(CoreInputError, match="cannot tell the heads of a 96-wide ViT"):
        inspect_checkpoint(tmp_path / "vit.pth")
    save_file(sd, str(tmp_path / "vit.safetensors"), metadata={"num_heads": "3"})
    assert (inspect_checkpoint(tmp_path / "vit.safetensors").vit or {})["heads_source"] == "metadata"
    model = load_embedding_model(tmp_path / "vit.safetensors")
    assert _max_diff(model, lambda z: ref.forward_features(z)[:, 0], _images(2, 32)) < TOL
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata={"num_heads": "5"})
    with pytest.raises(CoreInputError, match="checkpoint.metadata.num_heads: must divide the width 96"):
        inspect_checkpoint(tmp_path / "bad.safetensors")


def _small_timm_sd() -> dict[str, torch.Tensor]:
    return _timm().state_dict()


def _renamed(sd: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    return {k.replace(old, new): v for k, v in sd.items()}


BAD_FILES: dict[str, tuple[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], str]] = {
    "missing key": (
        lambda sd: {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"},
        "missing 1 key(s): blocks.1.mlp.fc2.bias",
    ),
    "unexpected key": (
        lambda sd: {**sd, "fc_norm.weight": torch.ones(128)},
        "unexpected 1 key(s): fc_norm.weight",
    ),
    "wrong shape": (
        lambda sd: {**sd, "blocks.1.attn.proj.weight": torch.zeros(128, 64)},
        "wrong shape for 1 key(s): blocks.1.attn.proj.weight (128, 64) (expected (128, 128))",
    ),
    "block gap": (
        lambda sd: _renamed(sd, "blocks.1.", "blocks.2."),
        "block indices must be 0..n-1, found [0, 2]",
    ),
    "pos-embed no grid": (
        lambda sd: {**sd, "pos_embed": torch.zeros(1, 20, 128)},
        "checkpoint:pos_embed: 20 position embeddings are no square patch grid",
    ),
    "DINOv2's SwiGLU": (lambda sd: _renamed(sd, "mlp.fc1.", "mlp.w12."), "DINOv2's SwiGLU blocks"),
    "timm's packed SwiGLU": (
        lambda sd: {
            **sd,
            **{f"blocks.{i}.mlp.fc1.weight": torch.zeros(768, 128) for i in (0, 1)},
            **{f"blocks.{i}.mlp.fc1.bias": torch.zeros(768) for i in (0, 1)},
        },
        "SwiGLU blocks (timm's packed mlp.fc1",
    ),
    "extra beside a wrapped ViT": (
        lambda sd: {**{f"backbone.{k}": v for k, v in sd.items()}, "optimizer.step": torch.zeros(1)},
        "unexpected 1 key(s): optimizer.step beside the ViT backbone",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_vit_files_are_refused_naming_the_keys(tmp_path: Path, case: str) -> None:
    mutate, message = BAD_FILES[case]
    torch.save(mutate(_small_timm_sd()), tmp_path / "bad.pth")
    with pytest.raises(CoreInputError) as err:
        inspect_checkpoint(tmp_path / "bad.pth")
    assert message in str(err.value), str(err.value)


def test_a_bare_vit_is_an_embedding_model_not_a_clustering_one(tmp_path: Path) -> None:
    torch.save(_small_timm_sd(), tmp_path / "vit.pth")
    with pytest.raises(CoreInputError, match="is an embedding model .* but a clustering model"):
        load_clustering_model(tmp_path / "vit.pth", num_clusters=None, head=None, backbone=None)
    info = inspect_checkpoint(tmp_path / "vit.pth")
    with pytest.raises(
        CoreInputError, match="base.backbone: the job expects 'resnet18' but the checkpoint holds vit"
    ):
        choose_backbone(
            info, spec_backbone="resnet18", height=32, width=32, field="base.embedding_checkpoint_id"
        )
    assert choose_backbone(info, spec_backbone=None, height=32, width=32, field="x") == ("vit", "keys")


def test_our_safetensors_export_of_a_vit_model_loads_back(tmp_path: Path) -> None:
    """A ViT model saved by save_safetensors (our names, which are timm's, and num_heads in the
    metadata: 3 heads of 32 channels, which no rule would guess) loads back computing the same."""
    torch.manual_seed(0)
    config = ViTConfig(patch_size=4, dim=96, depth=2, heads=3, mlp_dim=192, grid=4, registers=1)
    net, dim = build_backbone("vit", in_channels=3, vit=config)
    model = ClusteringModel(jitter(net, 0.05), dim, 5, nheads=2, mean=0.4, std=0.3).eval()
    save_safetensors(model, tmp_path / "vit.safetensors")
    info = inspect_checkpoint(tmp_path / "vit.safetensors")
    assert (info.kind, info.backbone_source, (info.vit or {})["heads_source"]) == (
        "clustering",
        "metadata",
        "metadata",
    )
    loaded = load_clustering_model(tmp_path / "vit.safetensors", num_clusters=5, head=0, backbone=None)
    assert loaded.backbone.config == config  # type: ignore[union-attr]
    x = _images(3, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=TOL)


def test_a_missing_key_is_named_as_the_file_would_name_it(tmp_path: Path) -> None:
    sd = _torchvision_vit().state_dict()
    del sd["encoder.layers.encoder_layer_1.ln_2.bias"]
    wrapped = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("heads.")}
    for name, data, missing in (
        ("bare.pth", sd, "encoder.layers.encoder_layer_1.ln_2.bias"),
        ("scan.pth", wrapped, "backbone.encoder.layers.encoder_layer_1.ln_2.bias"),
    ):
        torch.save(data, tmp_path / name)
        with pytest.raises(
            CoreInputError, match=f"torchvision ViT its keys describe: missing 1 key\\(s\\): {missing}$"
        ):
            inspect_checkpoint(tmp_path / name)
