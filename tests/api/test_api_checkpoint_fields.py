"""What a checkpoint upload states (backbone variant, normalisation) travels from the query fields
through validation to the file jobs read; a bad statement makes the upload ``invalid`` naming the
field, and a bad ``base.normalisation`` in a job spec is a 422 naming it. SQLite and Postgres."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from api_support import Keys, ready_dataset
from fastapi.testclient import TestClient
from safetensors.torch import save as save_safetensors_bytes

from core.models import ClusteringModel, build_backbone, parse_statement, read_statement
from service.settings import Settings
from worker.validation import validate_checkpoint

ROUTE = "/v1/checkpoints"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    # A ResNet-18 checkpoint in fp16 is 22 MB; the shared fixture caps uploads at 4 KB.
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url="filesystem://",
        max_upload_bytes=32 * 2**20,
        upload_chunk_bytes=2**20,
        api_key_cache_seconds=5.0,
    )


def _scan_resnet_bytes() -> bytes:
    """SCAN's {'model', 'head'} checkpoint of a 3x3-stem ResNet-18 (CIFAR and STL share its keys)."""
    torch.manual_seed(0)
    bb, dim = build_backbone("resnet18_cifar", in_channels=3)
    sd = {
        k: v.half() if v.is_floating_point() else v
        for k, v in ClusteringModel(bb, dim, 10).state_dict().items()
    }
    buf = io.BytesIO()
    torch.save({"model": sd, "head": 0}, buf)
    return buf.getvalue()


def _grey_small_bytes(**metadata: str) -> bytes:
    torch.manual_seed(0)
    bb, dim = build_backbone("small_cnn", in_channels=1)
    return save_safetensors_bytes(ClusteringModel(bb, dim, 2).state_dict(), metadata=metadata or None)


def _upload(client: TestClient, keys: Keys, name: str, data: bytes, query: str = "") -> dict:
    r = client.post(f"{ROUTE}{query}", headers=keys.a, files={"file": (name, data)})
    assert r.status_code == 201, r.text
    return r.json()


def _validated(client: TestClient, keys: Keys, settings: Settings, ck_id: str) -> dict:
    validate_checkpoint(ck_id, settings=settings)
    return client.get(f"{ROUTE}/{ck_id}", headers=keys.a).json()


def test_stated_backbone_and_normalisation_reach_the_facts_and_the_job(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    data = _scan_resnet_bytes()
    stated = _upload(client, keys, "scan_stl-10.pth.tar", data, "?backbone=resnet18_stl&normalisation=stl10")
    assert stated["status"] == "validating"
    assert stated["info"] == {"stated": {"backbone": "resnet18_stl", "normalisation": "stl10"}}
    ck = _validated(client, keys, settings, stated["id"])
    assert ck["status"] == "ready", ck
    info = ck["info"]
    assert (info["backbone"], info["backbone_source"]) == ("resnet18_stl", "upload")
    assert info["backbone_candidates"] == ["resnet18_cifar", "resnet18_stl"]
    assert info["normalisation"] == {
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "source": "upload",
        "preset": "stl10",
    }
    # Jobs read exactly what validation accepted, from beside the stored file.
    stored = settings.storage_dir / "checkpoints" / stated["id"] / "model.pth.tar"
    assert read_statement(stored) == parse_statement({"backbone": "resnet18_stl", "normalisation": "stl10"})

    unstated = _validated(client, keys, settings, _upload(client, keys, "scan.pth.tar", data)["id"])
    assert unstated["status"] == "ready"
    assert (unstated["info"]["backbone"], unstated["info"]["backbone_source"]) == (
        "resnet18_cifar",
        "image_size",
    )
    assert unstated["info"]["normalisation"] is None and unstated["info"]["stated"] is None


def test_bad_statements_and_metadata_make_the_upload_invalid_naming_the_field(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    grey = _grey_small_bytes()
    cases = [
        ("?mean=Infinity&std=0.2", grey, "mean: Input should be a finite number"),
        ("?mean=0.5&std=NaN", grey, "std: Input should be a finite number"),
        ("?mean=0.5&std=0", grey, "std: must be > 0"),
        ("?mean=0.5,0.4&std=0.2", grey, "mean: must have 1 or 3 values"),
        ("?mean=0.5", grey, "normalisation: give a preset, or both mean and std"),
        ("?normalisation=cifar100", grey, "normalisation: Input should be 'cifar10'"),
        (
            "?normalisation=cifar10",
            grey,
            "normalisation.preset: 'cifar10' has 3 channels but the images have 1",
        ),
        (
            "?backbone=resnet18_stl",
            grey,
            "backbone: the upload states 'resnet18_stl' but the weights are a small_cnn",
        ),
        ("?backbone=alexnet", grey, "backbone: unknown backbone 'alexnet'"),
        (
            "",
            _grey_small_bytes(mean="[Infinity]", std="[0.2]"),
            "checkpoint.metadata.mean: must be finite numbers",
        ),
        ("", _grey_small_bytes(mean="[0.5]", std="[NaN]"), "checkpoint.metadata.std: must be finite numbers"),
    ]
    for query, data, reason in cases:
        ck = _validated(client, keys, settings, _upload(client, keys, "m.safetensors", data, query)["id"])
        assert ck["status"] == "invalid" and ck["reason"].startswith(reason), (query, ck["reason"])
        assert ck["kind"] is None
        if query:  # what the client sent stays visible next to the reason
            assert ck["info"]["stated"], ck
    fine = _upload(client, keys, "m.safetensors", grey, "?mean=0.5&std=0.25&backbone=small_cnn")
    ck = _validated(client, keys, settings, fine["id"])
    assert ck["status"] == "ready", ck
    assert ck["info"]["normalisation"] == {"mean": [0.5], "std": [0.25], "source": "upload", "preset": None}
    too_long = client.post(
        f"{ROUTE}?mean={'1,' * 150}", headers=keys.a, files={"file": ("m.safetensors", grey)}
    )
    assert too_long.status_code == 422


@pytest.mark.parametrize(
    ("normalisation", "field"),
    [
        ('{"mean": [Infinity], "std": [0.2]}', "base.normalisation.mean"),
        ('{"mean": [0.5], "std": [NaN]}', "base.normalisation.std"),
        ('{"mean": [0.5], "std": [0]}', "base.normalisation.std"),
        ('{"mean": [0.5, 0.5], "std": [0.2]}', "base.normalisation.mean"),
        ('{"mean": [0.5]}', "base.normalisation"),
        ('{"preset": "cifar10", "mean": [0.5], "std": [0.2]}', "base.normalisation"),
        ('"cifar100"', "base.normalisation.preset"),
    ],
)
def test_bad_spec_normalisation_is_422_naming_the_field(
    client: TestClient, keys: Keys, settings: Settings, normalisation: str, field: str
) -> None:
    ds = ready_dataset(client, settings, keys.a)
    body = (
        f'{{"dataset_id": {json.dumps(ds)}, "num_clusters": 2, "base": {{"normalisation": {normalisation}}}}}'
    )
    r = client.post("/v1/jobs", headers={**keys.a, "Content-Type": "application/json"}, content=body)
    assert r.status_code == 422, r.text
    # the error names the field, down to the list item for a non-finite value (mean.0)
    fields = [e["field"] for e in r.json()["errors"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), r.json()
