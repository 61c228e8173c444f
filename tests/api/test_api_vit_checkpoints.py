"""ViT checkpoint uploads: torchvision's (``.pth``) and DINOv2's (``.safetensors``) layouts pass the
service's validation (the sandboxed child) and report their layout and architecture (refusals are
tests/core/test_vit_checkpoints.py's: the child runs the same inspect_checkpoint); a job on a ViT
checkpoint is sized by its architecture."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torchvision
from api_support import Keys, ready_dataset, submit
from fastapi.testclient import TestClient
from safetensors.torch import save as safetensors_bytes

from api.memory_estimate import estimate_job_memory
from core.memory import shrink_floor
from core.models import VisionTransformer, ViTConfig
from core.spec import JobSpec
from service.settings import Settings
from worker.validation import validate_checkpoint

ROUTE = "/v1/checkpoints"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url="filesystem://",
        max_upload_bytes=8 * 2**20,
        upload_chunk_bytes=2**20,
        api_key_cache_seconds=5.0,
    )


def _torchvision_pth() -> bytes:
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=128, mlp_dim=256, num_classes=10
    )
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


def _dinov2_safetensors() -> bytes:
    """DINOv2's names (ours are theirs) with its mask token, 4 registers and LayerScale, 28 px."""
    torch.manual_seed(0)
    config = ViTConfig(
        patch_size=14, dim=64, depth=2, heads=1, mlp_dim=128, grid=2, registers=4, layer_scale=True
    )
    sd = {k: v.contiguous() for k, v in VisionTransformer(config).state_dict().items()}
    return safetensors_bytes({**sd, "mask_token": torch.zeros(1, 64)})


def _validated(client: TestClient, keys: Keys, settings: Settings, name: str, data: bytes) -> dict:
    r = client.post(ROUTE, headers=keys.a, files={"file": (name, data)})
    assert r.status_code == 201, r.text
    validate_checkpoint(r.json()["id"], settings=settings)
    return client.get(f"{ROUTE}/{r.json()['id']}", headers=keys.a).json()


def _architecture(info: dict) -> tuple:
    vit = info["vit"]
    return (vit["layout"], vit["patch_size"], vit["image_size"], vit["depth"], vit["dim"], vit["heads"])


def test_vit_uploads_report_their_layout_and_architecture(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    tv = _validated(client, keys, settings, "vit_tiny.pth", _torchvision_pth())
    assert tv["status"] == "ready" and tv["kind"] == "embedding", tv
    info = tv["info"]
    assert (info["backbone"], info["projection_head"], info["features_dim"]) == ("vit", False, 128)
    assert _architecture(info) == ("torchvision", 8, 32, 2, 128, 2)
    assert info["vit"]["embedding"] == "class token after the final norm"
    assert info["keys"] == {"matched": 30, "ignored": ["heads.head.weight", "heads.head.bias"]}
    assert info["normalisation"] == {**IMAGENET, "source": "checkpoint_layout", "preset": "imagenet"}

    dino = _validated(client, keys, settings, "dinov2_tiny.safetensors", _dinov2_safetensors())
    assert dino["status"] == "ready", dino
    assert _architecture(dino["info"]) == ("dinov2", 14, 28, 2, 64, 1)
    assert (dino["info"]["vit"]["registers"], dino["info"]["vit"]["layer_scale"]) == (4, True)
    assert dino["info"]["keys"]["ignored"] == ["mask_token"]

    # A job on the ViT is sized by its architecture: 448 px images make 3,137 tokens of 128 channels.
    # The submit check counts the batch the worker's preflight may shrink to (B/8): 512 such images
    # of activations at once do not fit 24 GiB.
    ds = ready_dataset(client, settings, keys.a, count=4096, height=448, width=448, channels=3)
    base = {"embedding_checkpoint_id": tv["id"]}
    r = submit(client, keys.a, ds, base=base, refine={"batch_size": 4096})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "refine.batch_size", r.text
    spec = JobSpec(dataset_id=ds, num_clusters=2, base=base, refine={"batch_size": 4096})
    facts = {"count": 4096, "height": 448, "width": 448, "channels": 3}
    expected = estimate_job_memory(
        spec, facts, checkpoint_backbone="vit", checkpoint_vit=info["vit"], batch_size=shrink_floor(4096)
    )
    assert expected is not None and r.json()["estimated_bytes"] == expected.total
    assert "backbone vit" in r.json()["detail"]
