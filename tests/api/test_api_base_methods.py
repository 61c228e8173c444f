"""POST /v1/jobs with the base methods of issue 4: auto-K jobs are accepted, bad parameters are named."""

from __future__ import annotations

from api_support import Keys, broker_tasks, mark_ready, ready_dataset, submit, upload
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.db.models import Checkpoint, Job
from service.db.session import session_scope
from service.settings import Settings

PROBLEM = "application/problem+json"


def _job_count(settings: Settings) -> int:
    with session_scope(settings.database_url) as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def test_auto_k_job_is_accepted_without_num_clusters(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    ds = ready_dataset(client, settings, keys.a)  # 6 images
    auto_k = {"k_min": 2, "k_max": 5, "estimators": ["silhouette", "gmeans"]}
    r = submit(client, keys.a, ds, num_clusters=None, base={"method": "gcc", "auto_k": auto_k})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["spec"]["num_clusters"] is None
    assert job["spec"]["base"]["auto_k"]["estimators"] == ["silhouette", "gmeans"]
    assert job["spec"]["base"]["auto_k"]["consensus"] == "median"  # defaults filled in
    # A clustering checkpoint's cluster count does not conflict with a K still to be estimated.
    ck = upload(client, keys.a, name="scan.pth", data=b"0" * 10, route="/v1/checkpoints")["id"]
    mark_ready(settings, Checkpoint, ck, kind="clustering", info={"num_clusters": 3})
    r = submit(
        client,
        keys.a,
        ds,
        num_clusters=None,
        base={"method": "kmeans", "auto_k": {}, "clustering_checkpoint_id": ck},
    )
    assert r.status_code == 202, r.text
    assert [args for _name, args in broker_tasks(settings, "gpu")] == [[job["id"]], [r.json()["id"]]]


def test_every_base_method_is_accepted(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    for method in ("scan", "dec", "idec", "dcn", "gcc", "and"):
        r = submit(client, keys.a, ds, base={"method": method})
        assert r.status_code == 202, (method, r.text)
        assert r.json()["spec"]["base"]["method"] == method
    # "and" is a Python keyword: its sub-spec travels under that name and round-trips.
    r = submit(client, keys.a, ds, base={"method": "and", "and": {"rounds": 2}})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["base"]["and"]["rounds"] == 2
    # SimCLR trained here when nothing is uploaded; its defaults are filled in
    r = submit(client, keys.a, ds, base={"method": "scan", "pretext": {"epochs": 5}})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["base"]["pretext"] == {
        "epochs": 5,
        "batch_size": 256,
        "lr": 1e-3,
        "weight_decay": 1e-6,
        "temperature": 0.5,
        "features_dim": 128,
    }
    assert _job_count(settings) == 8


def test_invalid_base_method_parameters_are_named(client: TestClient, keys: Keys, settings: Settings) -> None:
    ds = ready_dataset(client, settings, keys.a)
    cases: list[tuple[dict, str]] = [
        ({"base": {"method": "spectral"}}, "base.method"),
        ({"base": {"method": "scan", "scan": {"entropy_weight": -1}}}, "base.scan.entropy_weight"),
        (
            {"base": {"method": "scan", "scan": {"self_label_threshold": 1.0}}},
            "base.scan.self_label_threshold",
        ),
        ({"base": {"method": "dec", "brb": {"alpha": 2}}}, "base.brb.alpha"),
        ({"base": {"method": "idec", "deep": {"hidden_dims": []}}}, "base.deep.hidden_dims"),
        ({"base": {"method": "dcn", "deep": {"latent_dim": 1}}}, "base.deep.latent_dim"),
        ({"base": {"method": "gcc", "gcc": {"temperature": 0}}}, "base.gcc.temperature"),
        ({"base": {"method": "and", "and": {"memory_momentum": 1.0}}}, "base.and.memory_momentum"),
        ({"base": {"method": "and", "and": {"bogus": 1}}}, "base.and.bogus"),
        (
            {"num_clusters": None, "base": {"auto_k": {"k_min": 9, "k_max": 3}}},
            "base.auto_k",
        ),
        (
            {"num_clusters": None, "base": {"auto_k": {"estimators": ["xmeans", "xmeans"]}}},
            "base.auto_k.estimators",
        ),
        ({"num_clusters": None, "base": {"auto_k": {"estimators": ["elbow"]}}}, "base.auto_k.estimators.0"),
        ({"num_clusters": None, "base": {"auto_k": {"sample_cap": 10}}}, "base.auto_k.sample_cap"),
        ({"num_clusters": None, "base": {"method": "labels", "auto_k": {}}}, "base"),
        ({"base": {"method": "scan", "pretext": {"epochs": 0}}}, "base.pretext.epochs"),
        ({"base": {"method": "scan", "pretext": {"temperature": -1}}}, "base.pretext.temperature"),
        ({"base": {"pretext": {}, "embedding_checkpoint_id": "ck"}}, "base"),
        ({"num_clusters": None}, "num_clusters"),
        ({"num_clusters": 3, "base": {"auto_k": {}}}, "num_clusters"),
    ]
    for extra, field in cases:
        r = submit(client, keys.a, ds, **extra)
        assert r.status_code == 422, (extra, r.text)
        assert r.headers["content-type"] == PROBLEM
        fields = [e["field"] for e in r.json()["errors"]]
        assert field in fields, (extra, fields)
    assert _job_count(settings) == 0
    assert broker_tasks(settings, "gpu") == []
