"""core.predict on a real (small) refinement: the saved ensemble's Predictor assigns the run's own
images exactly as the run did, in any order and batch, from an .npz or an archive alike, also after
the job's evaluation attacked it; it refuses images of another kind; model.onnx under onnxruntime
gives the torch model's clusters and probabilities. (The whole job, assignments.csv included, is
tests/integration/test_predictions.py's.)"""

from __future__ import annotations

import copy
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
from core.hooks import RunHooks
from core.models import ClusteringModel, build_backbone
from core.pipeline.artifacts import save_ensemble
from core.pipeline.context import JobContext
from core.pipeline.evaluating import attack_subset, evaluate_run
from core.predict.inputs import prediction_limits
from core.predict.onnx_export import export_onnx
from core.predict.predictor import Predictor
from core.ruc import train_ruc
from core.spec import JobSpec

N, K = 200, 10


@pytest.fixture(scope="module")
def job(digits_dataset: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One RUC epoch on 200 digits from noisy labels, evaluated (attacked) and saved as a job does.

    Batch 64 makes the run's inference chunks 64, 64, 64 and 8 images.
    """
    spec = JobSpec.model_validate(
        {
            "dataset_id": "digits",
            "num_clusters": K,
            "refine": {"epochs": 1, "batch_size": 64, "lambda_u_rampup_epochs": 1},
            "evaluate": {"attacks": [{"kind": "fgsm", "eps": [8 / 255]}], "attack_max_samples": 64},
        }
    )
    ds = ImageDataset(images=digits_dataset.images[:N].clone(), labels=digits_dataset.labels[:N].clone())
    g = torch.Generator().manual_seed(0)
    pseudo = ds.labels.clone()
    noisy = torch.rand(N, generator=g) < 0.3
    pseudo[noisy] = torch.randint(0, K, (int(noisy.sum()),), generator=g)
    torch.manual_seed(0)
    backbone, dim = build_backbone("small_cnn", in_channels=1)
    base = ClusteringModel(backbone, dim, K, mean=0.3, std=0.35)
    ruc = train_ruc(base, ds.images, pseudo, ~noisy, spec.refine, num_clusters=K, seed=0, device="cpu")
    trained = [copy.deepcopy(net.state_dict()) for net in ruc.models]
    folder = tmp_path_factory.mktemp("job")
    ctx = JobContext(spec, ds, torch.device("cpu"), folder, {}, RunHooks(), resume=False)
    y = ds.labels.numpy()
    evaluate_run(ctx, ruc, 0, base_probs=ruc.probs.numpy(), y=y, k=K, attacked=attack_subset(ctx, y))
    save_ensemble(ruc, base, spec, folder / "ensemble.safetensors", image_shape=(8, 8, 1))
    export_onnx(ruc.models, folder / "model.onnx", image_shape=(8, 8, 1))
    return {
        "images": ds.images,
        "ruc": ruc,
        "trained": trained,
        "onnx": folder / "model.onnx",
        "predictor": Predictor.load(folder / "ensemble.safetensors"),
    }


def test_the_jobs_evaluation_leaves_the_ensemble_as_trained(job: dict[str, Any]) -> None:
    """The attacks must not leave the networks training: BatchNorm statistics would then move on
    every later forward, and the saved ensemble would no longer give the assignments reported."""
    for net, before in zip(job["ruc"].models, job["trained"], strict=True):
        assert not net.training
        after = net.state_dict()
        assert all(torch.equal(before[key], after[key]) for key in before)


def test_the_runs_own_images_get_its_assignments(job: dict[str, Any], tmp_path: Path) -> None:
    predictor: Predictor = job["predictor"]
    assert predictor.image_shape == (8, 8, 1) and predictor.num_clusters == K and predictor.chunk == 64
    probs = predictor.predict(job["images"])
    refined = job["ruc"].probs
    agree = float((probs.argmax(1) == refined.argmax(1)).float().mean())
    print(f"predictions vs the run's assignments on its {N} images: {agree:.3f} equal")
    assert agree == 1.0 and torch.equal(probs, refined)  # the same arithmetic, bit for bit
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

    session = ort.InferenceSession(str(job["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "assignments"]
    images = job["images"]
    probs, assignments = session.run(None, {"images": images.numpy()})
    # The torch reference in float32 (what the graph holds), through the Predictor's own path.
    fp32 = dataclasses.replace(job["predictor"], autocast_dtype=None)
    expected = fp32.predict(images).numpy()
    gap = float(np.abs(probs - expected).max())
    same = float((assignments == expected.argmax(1)).mean())
    as_job = float((assignments == job["ruc"].probs.argmax(1).numpy()).mean())
    print(f"model.onnx vs torch float32: max |p - p'| {gap:.2e}, clusters {same:.3f} equal", end="; ")
    print(f"vs the job's own (bf16 where the CPU has it) {as_job:.3f}")
    assert probs.shape == (N, K) and assignments.dtype == np.int64
    assert gap < 1e-4 and same == 1.0
    assert np.array_equal(assignments, probs.argmax(1))
    single, _ = session.run(None, {"images": images[:1].numpy()})  # any N: the batch axis is dynamic
    assert np.abs(single - expected[:1]).max() < 1e-4
