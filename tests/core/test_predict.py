"""core.predict on a real (small) job: the Predictor assigns the job's own images exactly as the job
did, in any order and batch, from an .npz or an archive alike; it refuses images of another kind;
model.onnx under onnxruntime gives the torch model's clusters and probabilities."""

from __future__ import annotations

import csv
import dataclasses
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from core.datasets import ImageDataset, load_dataset
from core.errors import CoreInputError
from core.pipeline import ONNX_NAME, run_job
from core.predict.inputs import prediction_limits
from core.predict.predictor import Predictor
from core.spec import JobSpec

N = 200


@pytest.fixture(scope="module")
def job(digits_dataset: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 1-epoch job on 200 digits; batch 64 makes the job's inference chunks 64, 64, 64 and 8."""
    spec = JobSpec.model_validate(
        {
            "dataset_id": "digits",
            "num_clusters": 10,
            "seed": 0,
            "base": {"backbone": "small_cnn", "fit_epochs": 2, "kmeans_restarts": 1, "pca_dim": 20},
            "refine": {"strategy": "confidence", "confidence_threshold": 0.9, "epochs": 1, "batch_size": 64},
            "evaluate": {"attacks": [{"kind": "fgsm", "eps": [8 / 255]}], "attack_max_samples": 32},
        }
    )
    ds = ImageDataset(images=digits_dataset.images[:N].clone(), labels=digits_dataset.labels[:N].clone())
    out = run_job(spec, ds, device="cpu", work_dir=tmp_path_factory.mktemp("job"))
    rows = list(csv.DictReader(out.artifacts["assignments.csv"].read_text().splitlines()))
    return {
        "images": ds.images,
        "artifacts": out.artifacts,
        "refined": np.array([int(r["refined_cluster"]) for r in rows]),
        "confidence": np.array([float(r["refined_confidence"]) for r in rows]),
        "predictor": Predictor.load(out.artifacts["refined_ensemble.safetensors"]),
    }


def test_the_jobs_own_images_get_the_jobs_assignments(job: dict[str, Any], tmp_path: Path) -> None:
    predictor: Predictor = job["predictor"]
    assert predictor.image_shape == (8, 8, 1) and predictor.num_clusters == 10 and predictor.chunk == 64
    probs = predictor.predict(job["images"])
    agree = float((probs.argmax(1).numpy() == job["refined"]).mean())
    print(f"predictions vs assignments.csv on the job's {N} images: {agree:.3f} equal")
    assert agree == 1.0
    assert np.abs(probs.max(1).values.numpy() - job["confidence"]).max() <= 5e-7  # the CSV's 6 decimals
    # A sample's prediction does not depend on its batch-mates: any subset, in any order, is the same.
    order = torch.randperm(N, generator=torch.Generator().manual_seed(1))[:37]
    assert torch.equal(predictor.predict(job["images"][order]), probs[order])
    # The same images as a folder archive of PNGs (another format datasets accept) predict the same.
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in order.tolist():
            png = io.BytesIO()
            Image.fromarray(job["images"][i, :, :, 0].numpy(), mode="L").save(png, format="PNG")
            zf.writestr(f"{i:03d}.png", png.getvalue())
    read = load_dataset(archive, limits=prediction_limits((8, 8, 1), max_images=50))
    names = sorted(order.tolist())  # an archive is read in path order
    assert torch.equal(predictor.predict(read.images), probs[names])


def test_images_of_another_kind_are_refused_naming_the_field(job: dict[str, Any], tmp_path: Path) -> None:
    predictor: Predictor = job["predictor"]
    cases = [
        (torch.zeros(3, 8, 8, 3, dtype=torch.uint8), "have 3 channel(s) but the job's images have 1"),
        (torch.zeros(3, 16, 8, 1, dtype=torch.uint8), "are 16x8 (HxW) but the job's images are 8x8"),
        (torch.zeros(3, 8, 8, 1), "must be a non-empty uint8"),
        (torch.zeros(0, 8, 8, 1, dtype=torch.uint8), "must be a non-empty uint8"),
        (torch.zeros(11, 8, 8, 1, dtype=torch.uint8), "11 images, more than the limit of 10"),
    ]
    for images, words in cases:
        with pytest.raises(CoreInputError, match=r"^images: ") as err:
            predictor.check(images, max_images=10)
        assert words in err.value.problem
    assert predictor.check(job["images"][:10], max_images=10) == 10
    # Reading is bounded by the job's image size: a larger image in an archive is refused from its header.
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w") as zf:
        png = io.BytesIO()
        Image.new("L", (64, 64)).save(png, format="PNG")
        zf.writestr("a.png", png.getvalue())
    with pytest.raises(CoreInputError, match="pixels"):
        load_dataset(big, limits=prediction_limits((8, 8, 1), max_images=10))


def test_model_onnx_gives_the_torch_models_clusters_and_probabilities(job: dict[str, Any]) -> None:
    import onnxruntime as ort

    path = job["artifacts"][ONNX_NAME]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "assignments"]
    images = job["images"]
    probs, assignments = session.run(None, {"images": images.numpy()})
    # The torch reference in float32 (what the graph holds), through the Predictor's own path.
    fp32 = dataclasses.replace(job["predictor"], autocast_dtype=None)
    expected = fp32.predict(images).numpy()
    gap = float(np.abs(probs - expected).max())
    same = float((assignments == expected.argmax(1)).mean())
    as_job = float((assignments == job["refined"]).mean())
    print(f"model.onnx vs torch float32: max |p - p'| {gap:.2e}, clusters {same:.3f} equal", end="; ")
    print(f"vs the job's own (bf16 where the CPU has it) {as_job:.3f}")
    assert probs.shape == (N, 10) and assignments.dtype == np.int64
    assert gap < 1e-4 and same == 1.0
    assert np.array_equal(assignments, probs.argmax(1))
    single, _ = session.run(None, {"images": images[:1].numpy()})  # any N: the batch axis is dynamic
    assert np.abs(single - expected[:1]).max() < 1e-4
