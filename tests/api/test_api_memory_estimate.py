"""The submit-time memory estimate: a job that cannot fit the worker is a 422 naming the field to
change; its constants agree with the real backbones (the one place a test may load torch here)."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import Keys, ready_dataset, submit
from fastapi.testclient import TestClient

from api.memory_estimate import (
    BACKBONE_FEATURE_DIM,
    BACKBONE_PARAMETERS,
    GiB,
    default_backbone,
    estimate_job_memory,
    vit_activation_bytes,
    vit_tokens,
)
from core.spec import JobSpec
from service.settings import Settings

CIFAR = {"count": 50_000, "height": 32, "width": 32, "channels": 3, "has_labels": True}


def test_estimate_of_cifar10_with_paper_defaults() -> None:
    est = estimate_job_memory(JobSpec(dataset_id="ds_x", num_clusters=10), CIFAR)
    assert est is not None and est.backbone == "resnet18_cifar"
    print(f"CIFAR-10, paper defaults: {est.describe()}")
    # uint8 + float32 copy of 50,000 x 3,072 = 768 MB; activations 200 x 1,024 px x 4,700 B = 963 MB.
    assert est.terms["images"] == 5 * 50_000 * 3072 and est.terms["activations"] == 200 * 1024 * 4700
    assert 2 * GiB < est.total < 4 * GiB
    bigger = estimate_job_memory(
        JobSpec(dataset_id="ds_x", num_clusters=10, refine={"batch_size": 2000}), CIFAR
    )
    assert bigger is not None and bigger.largest_field() == "refine.batch_size"
    assert estimate_job_memory(JobSpec(dataset_id="ds_x", num_clusters=10), {"count": 5}) is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_submit_over_the_worker_memory_is_422_naming_the_field(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    mid = ready_dataset(client, settings, keys.a, **{**CIFAR, "height": 64, "width": 64})
    big = ready_dataset(client, settings, keys.a, **{**CIFAR, "height": 96, "width": 96})
    huge = ready_dataset(client, settings, keys.a, **{**CIFAR, "count": 2_000_000, "height": 64, "width": 64})
    many = ready_dataset(client, settings, keys.a, count=2_000_000, height=8, width=8, channels=1)
    cases = [
        # 4,096 images of 96 x 96 px through resnet18_cifar: 177 GB of activations, and still 22 GB at
        # 512, the least the worker's preflight may shrink the batch to.
        (big, {"refine": {"batch_size": 4096, "backbone": "resnet18_cifar"}}, "refine.batch_size"),
        # 2M x 4,096 similarity rows (33 GB) of the metric strategies, for 0.6 GB of 8 x 8 images ...
        (many, {"refine": {"batch_size": 64}}, "refine.strategy"),
        # ... and 2M images of 64 x 64 x 3 themselves (123 GB with the float32 copy).
        (huge, {"refine": {"batch_size": 64, "strategy": "confidence"}}, "dataset_id"),
    ]
    for ds, extra, field in cases:
        r = submit(client, keys.a, ds, **extra)
        assert r.status_code == 422, (extra, r.text[:300])
        body = r.json()
        assert body["code"] == "exceeds-worker-memory" and body["errors"][0]["field"] == field, body
        assert (
            "RUC_WORKER_MEMORY_BYTES" in body["detail"]
            and body["estimated_bytes"] > settings.worker_memory_bytes
        )
    assert client.get("/v1/jobs", headers=keys.a).json()["data"] == []
    assert submit(client, keys.a, mid).status_code == 202  # paper defaults fit
    # 79 GB of activations at 4,096 images of 64 x 64 px, 9.9 GB at 512: the preflight shrinks it.
    assert submit(client, keys.a, mid, refine={"batch_size": 4096}).status_code == 202


def test_constants_match_the_real_backbones() -> None:
    torch = pytest.importorskip("torch")
    from core.models import build_backbone, default_backbone_for

    for name, params in BACKBONE_PARAMETERS.items():
        module, dim = build_backbone(name, in_channels=3)  # type: ignore[arg-type]
        assert sum(p.numel() for p in module.parameters()) == params, name
        assert dim == BACKBONE_FEATURE_DIM[name], name
    for side in (8, 16, 17, 32, 64, 65, 96, 224):
        assert default_backbone(side, side) == default_backbone_for(side, side)
    del torch


def _saved_bytes_per_image(model: Any, x: Any) -> float:
    """Bytes of the tensors a training forward of ``model`` saves for backward (weights excluded)."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(saved.values()) / x.shape[0]


def test_vit_terms_match_the_real_model() -> None:
    """A ViT checkpoint's parameters, tokens and saved activations as the estimate computes them
    from its ``vit`` facts, against core.models.vit measured with autograd's saved-tensor hooks."""
    torch = pytest.importorskip("torch")
    from core.models import VisionTransformer, ViTConfig, input_plan
    from core.models.vit import parameter_count

    configs = (
        ViTConfig(patch_size=8, dim=128, depth=2, heads=2, mlp_dim=512, grid=4),
        ViTConfig(
            patch_size=14, dim=192, depth=2, heads=3, mlp_dim=384, grid=4, registers=4, layer_scale=True
        ),
    )
    for config in configs:
        model = VisionTransformer(config).train()
        facts = {**config.as_dict(), "parameters": parameter_count(config)}
        assert facts["parameters"] == sum(p.numel() for p in model.parameters())
        for height, width in ((32, 32), (45, 60), (96, 96)):
            assert vit_tokens(facts, height, width)[0] == input_plan(config, height, width)["tokens"]
            measured = _saved_bytes_per_image(model, torch.rand(2, 3, height, width))
            estimated = vit_activation_bytes(facts, height, width)
            print(
                f"ViT {config.dim}x{config.depth}, {height}x{width} px: saved {measured:.0f} B/image, "
                f"estimated {estimated}"
            )
            assert measured <= estimated <= 1.15 * measured
