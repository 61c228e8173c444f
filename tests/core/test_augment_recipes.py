"""Tests of core.augment's recipes: the paper and reference strong/weak views, against torchvision
and PIL where they define the same transform."""

from __future__ import annotations

import pytest
import torch
from augment_images import from_pil, generator, quantised_images, random_images, to_pil
from PIL import Image, ImageEnhance, ImageOps

from core.augment import RECIPES, ops, strong_augment, strong_view, weak_augment, weak_view
from core.augment.randaugment import OP_NAMES, apply_ops, op_index
from core.augment.reference import CUTOUT_FILL, cutout_half, randaugment_mc
from core.errors import CoreInputError
from core.spec import RefineSpec

# ---------------------------------------------------------------- recipes: strong_view / weak_view


def _views(recipe: str):
    return {
        "strong": lambda x, g: strong_view(x, recipe=recipe, n=2, m=2, generator=g),
        "weak": lambda x, g: weak_view(x, recipe=recipe, generator=g),
    }


_RECIPE_VIEWS = [(r, v) for r in RECIPES for v in ("strong", "weak")]


def _ramp(b: int, h: int, w: int) -> torch.Tensor:
    """(B, 3, H, W): channel 0 is the column index / (W - 1), channel 1 the row index / (H - 1)."""
    cols = torch.arange(w, dtype=torch.float32).div(w - 1).expand(h, w)
    rows = torch.arange(h, dtype=torch.float32).div(h - 1)[:, None].expand(h, w)
    return torch.stack([cols, rows, torch.full((h, w), 0.5)]).expand(b, 3, h, w).contiguous()


def test_recipe_names_are_the_spec_literal_and_paper_is_the_default() -> None:
    assert RECIPES == ("paper", "reference")
    assert RefineSpec().augmentation == "paper"
    assert RefineSpec(augmentation="reference").augmentation == "reference"
    desc = RefineSpec.model_fields["augmentation"].description
    assert "paper" in desc and "reference" in desc and "RandomResizedCrop" in desc and "Cutout" in desc
    with pytest.raises(ValueError, match="augmentation"):
        RefineSpec(augmentation="fixmatch")


@pytest.mark.parametrize(("recipe", "view"), _RECIPE_VIEWS)
@pytest.mark.parametrize(("c", "h", "w"), [(1, 8, 8), (3, 32, 32), (3, 13, 20)])
def test_views_keep_shape_dtype_and_range(recipe: str, view: str, c: int, h: int, w: int) -> None:
    x = random_images(16, c, h, w)
    y = _views(recipe)[view](x, generator(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    changed = (y - x).abs().flatten(1).amax(1) > 0
    assert int(changed.sum()) >= 12  # the paper's Identity (and Color on grey) may keep a few
    yb = _views(recipe)[view](x.bfloat16(), generator(1))
    assert yb.dtype == torch.bfloat16 and float(yb.min()) >= 0.0 and float(yb.max()) <= 1.0


@pytest.mark.parametrize(("recipe", "view"), _RECIPE_VIEWS)
def test_views_are_deterministic_given_the_generator(recipe: str, view: str) -> None:
    fn = _views(recipe)[view]
    x = random_images(32, 3, 16, 16)
    assert torch.equal(fn(x, generator(7)), fn(x, generator(7)))
    assert not torch.equal(fn(x, generator(7)), fn(x, generator(8)))


@pytest.mark.parametrize(("recipe", "view"), _RECIPE_VIEWS)
def test_each_image_gets_its_own_parameters(recipe: str, view: str) -> None:
    x = random_images(1, 3, 32, 32).expand(64, 3, 32, 32).contiguous()
    y = _views(recipe)[view](x, generator(0))
    # The paper's weak view has 2 * 9 * 9 = 162 crop/flip outcomes at 32x32 (about 52 of 64
    # distinct expected); the others are continuous.
    assert torch.unique(y.flatten(1), dim=0).shape[0] >= 45


def test_paper_recipe_is_the_strong_and_weak_augment_of_the_base_methods() -> None:
    x = random_images(32, 3, 16, 16)
    assert torch.equal(
        strong_view(x, recipe="paper", n=2, m=2, generator=generator(3)),
        strong_augment(x, generator=generator(3)),
    )
    assert torch.equal(
        weak_view(x, recipe="paper", generator=generator(3)), weak_augment(x, generator=generator(3))
    )


def test_bad_recipe_and_reference_magnitude_name_their_field() -> None:
    x = random_images(2, 3, 8, 8)
    with pytest.raises(CoreInputError, match="recipe"):
        weak_view(x, recipe="fixmatch", generator=generator(0))  # type: ignore[arg-type]
    with pytest.raises(CoreInputError, match="m"):
        strong_view(x, recipe="reference", n=2, m=1, generator=generator(0))
    with pytest.raises(CoreInputError, match="n"):
        strong_view(x, recipe="reference", n=15, m=2, generator=generator(0))


@pytest.mark.parametrize("recipe", RECIPES)
def test_weak_view_flips_about_half_of_the_images(recipe: str) -> None:
    x = _ramp(1000, 32, 32)
    y = weak_view(x, recipe=recipe, generator=generator(4))
    # Column ramp: the centre of a flipped image decreases from left to right.
    flipped = (y[:, 0, 16, 17] < y[:, 0, 16, 14]).float().mean()
    assert 0.45 <= float(flipped) <= 0.55


def test_reference_crop_keeps_between_a_fifth_and_all_of_the_area() -> None:
    h = w = 32
    y = weak_view(_ramp(2000, h, w), recipe="reference", generator=generator(5))
    # Crops only upsample, so the ramp's span over the output is the box's last minus first pixel.
    width = (y[:, 0].amax((1, 2)) - y[:, 0].amin((1, 2))) * (w - 1) + 1
    height = (y[:, 1].amax((1, 2)) - y[:, 1].amin((1, 2))) * (h - 1) + 1
    frac = (width.round() * height.round()) / (h * w)
    # torchvision rounds the side lengths, which can take a box just below 0.2 of the area.
    assert float(frac.min()) >= 0.18 and float(frac.max()) <= 1.0
    assert float(frac.min()) < 0.25 and float(frac.max()) > 0.95
    # Area drawn uniform in [0.2, 1] (mean 0.6), but boxes that do not fit are redrawn, which
    # pulls the mean to 0.55 (torchvision's own get_params: 0.550 over 20,000 draws).
    assert abs(float(frac.mean()) - 0.55) < 0.02
    aspect = width.round() / height.round()
    # Ratio drawn in [3/4, 4/3]; rounding small sides to whole pixels widens it a little (17/12).
    assert float(aspect.min()) >= 0.7 and float(aspect.max()) <= 1.42
    assert float(aspect.min()) < 0.8 and float(aspect.max()) > 1.25


def test_resized_crop_matches_torchvision() -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = random_images(3, 3, 32, 32)
    top, left = torch.tensor([3, 0, 0]), torch.tensor([5, 10, 0])
    height, width = torch.tensor([14, 32, 32]), torch.tensor([20, 22, 32])
    flip = torch.tensor([False, True, True])
    y = ops.resized_crop(x, top, left, height, width, flip)
    for i in range(3):
        box = (int(top[i]), int(left[i]), int(height[i]), int(width[i]))
        ref = tvf.resized_crop(x[i], *box, [32, 32], antialias=True)
        ref = ref.flip(-1) if flip[i] else ref
        assert (y[i] - ref).abs().max() < 1e-5


@pytest.mark.parametrize(("h", "w"), [(8, 8), (32, 32), (20, 13)])
def test_cutout_fills_a_square_of_half_the_side_with_grey(h: int, w: int) -> None:
    x = torch.full((500, 3, h, w), 0.9)
    y = cutout_half(x, generator=generator(6))
    side = min(h, w) // 2
    mask = (y == CUTOUT_FILL).all(dim=1)  # (B, H, W)
    assert torch.equal(mask | (y == 0.9).all(dim=1), torch.ones_like(mask))  # nothing else changed
    rows, cols = mask.any(2), mask.any(1)  # (B, H), (B, W)
    n_rows, n_cols = rows.sum(1), cols.sum(1)
    assert torch.equal(mask.sum((1, 2)), n_rows * n_cols)  # the filled pixels form a rectangle
    assert int(n_rows.max()) == side and int(n_cols.max()) == side
    assert int(n_rows.min()) >= side // 2 and int(n_cols.min()) >= side // 2  # clipped at most by half
    full = (n_rows == side) & (n_cols == side)
    assert float(full.float().mean()) > 0.4
    # Only boxes reaching the bottom or right border are clipped (the scripts clamp top/left).
    last_row = rows[:, -1]
    last_col = cols[:, -1]
    assert bool(((n_rows == side) | last_row).all()) and bool(((n_cols == side) | last_col).all())


def test_reference_strong_view_always_carries_its_cutout() -> None:
    x = random_images(200, 3, 8, 8)
    y = strong_view(x, recipe="reference", n=2, m=2, generator=generator(2))
    grey = (y == CUTOUT_FILL).all(dim=1).sum((1, 2))
    assert int(grey.min()) >= 2 * 2  # at least the clipped quarter of the 4x4 square


def _pil_candidates(img: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every result RandAugmentMC(1, 2) of the RUC scripts can give for one image, by PIL."""
    pil = to_pil(img)
    side = pil.size[0]
    shift = int(0.27 * side)
    affine = {
        "ShearX": lambda v: (1, v, 0, 0, 1, 0),
        "ShearY": lambda v: (1, 0, 0, v, 1, 0),
        "TranslateX": lambda v: (1, 0, v * shift / 0.27, 0, 1, 0),
        "TranslateY": lambda v: (1, 0, 0, 0, 1, v * shift / 0.27),
    }
    out = {
        "Identity": pil,
        "AutoContrast": ImageOps.autocontrast(pil),
        "Equalize": ImageOps.equalize(pil),
        "Solarize": ImageOps.solarize(pil, 231),
        "Rotate+": pil.rotate(41),
        "Rotate-": pil.rotate(-41),
    }
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        out[name] = getattr(ImageEnhance, name)(pil).enhance(0.109)
    for name, coeffs in affine.items():
        for sign, v in (("+", 0.27), ("-", -0.27)):
            out[name + sign] = pil.transform(pil.size, Image.AFFINE, coeffs(v))
    return {k: from_pil(v) for k, v in out.items()}


def test_reference_randaugment_ops_are_the_scripts_fixed_strength_ops() -> None:
    x = quantised_images(300, 3, 16, 16, seed=3) * 0.75 + 0.2  # not full-range: AutoContrast changes it
    x = (x * 255).round() / 255
    y = randaugment_mc(x, n=1, m=2, generator=generator(0))
    matched: list[str] = []
    for i in range(x.shape[0]):
        cands = _pil_candidates(x[i])
        # PIL rounds the enhance ops' blends to 8 bits; the geometric ops match it exactly.
        err = {k: float((y[i] - v).abs().max()) for k, v in cands.items()}
        best = min(err, key=err.get)
        assert err[best] <= 2.5 / 255, (i, best, err[best])
        matched.append(best)
    assert len(set(matched)) >= 18  # every op of the pool (and both signs) was drawn
    # Posterize keeps 8 bits and Identity does nothing: with p = 0.5 the image is kept
    # with probability 0.5 + 0.5 * 2/14 = 0.57.
    kept = matched.count("Identity") / len(matched)
    assert 0.48 <= kept <= 0.66


def test_reference_ops_apply_with_probability_one_half() -> None:
    x = quantised_images(4000, 1, 8, 8, seed=5) * 0.75 + 0.2
    x = (x * 255).round() / 255
    y = randaugment_mc(x, n=1, m=2, generator=generator(1))
    kept = float(((y - x).abs().flatten(1).amax(1) < 1e-6).float().mean())
    # Changed by every op but Identity, 8-bit Posterize, Color (on grey) and Equalize (PIL's
    # step is 0 below 255 pixels, so 8x8 images are kept): 4 of 14.
    expected = 0.5 + 0.5 * 4 / 14
    assert abs(kept - expected) < 0.03


def test_reference_draws_distinct_ops_per_image() -> None:
    x = quantised_images(64, 3, 8, 8) * 0.75 + 0.2
    # All 14 ops, none twice, at p = 0.5 each: the two geometric ops that can cancel aside,
    # no image comes out unchanged.
    y = randaugment_mc(x, n=len(OP_NAMES), m=2, generator=generator(0))
    assert (y - x).abs().flatten(1).amax(1).min() > 0.01


def test_reference_geometry_matches_pil_nearest_black_fill() -> None:
    x = quantised_images(1, 3, 16, 16)
    pil = to_pil(x[0])
    cases = [
        ("Rotate", 41.0, pil.rotate(41)),
        ("ShearX", 0.27, pil.transform(pil.size, Image.AFFINE, (1, 0.27, 0, 0, 1, 0))),
        ("ShearY", -0.27, pil.transform(pil.size, Image.AFFINE, (1, 0, 0, -0.27, 1, 0))),
        ("TranslateX", 4.0, pil.transform(pil.size, Image.AFFINE, (1, 0, 4, 0, 1, 0))),
    ]
    for name, p, ref in cases:
        y = apply_ops(
            x, torch.tensor([[op_index(name)]]), torch.tensor([[p]]), fill=0.0, mode="nearest", pivot="corner"
        )
        assert torch.allclose(y[0], from_pil(ref), atol=1e-6), name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("recipe", "view"), _RECIPE_VIEWS)
def test_views_on_cuda_agree_with_cpu(recipe: str, view: str) -> None:
    fn = _views(recipe)[view]
    x = random_images(64, 3, 32, 32)
    a = fn(x.cuda(), generator(0))
    assert a.device.type == "cuda" and torch.equal(a, fn(x.cuda(), generator(0)))
    ref = fn(x, generator(0))
    assert ((a.cpu() - ref).abs() > 1e-3).float().mean() < 0.01
