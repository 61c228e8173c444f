"""Tests of core.augment: the paper and reference recipes, their batched views and the ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from core.augment import RECIPES, ops, strong_augment, strong_view, weak_augment, weak_view
from core.augment.randaugment import OP_NAMES, apply_ops, op_index
from core.augment.reference import CUTOUT_FILL, cutout_half, randaugment_mc
from core.errors import CoreInputError
from core.spec import RefineSpec


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _imgs(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=_gen(seed))


def _to_pil(x: torch.Tensor) -> Image.Image:
    """(C, H, W) float on the 0..255 grid -> PIL image."""
    arr = (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def _from_pil(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1)


def _quantised(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return (_imgs(b, c, h, w, seed) * 255).round() / 255


# ---------------------------------------------------------------- shapes, range, determinism


@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
@pytest.mark.parametrize(("c", "h", "w"), [(1, 8, 8), (3, 13, 20), (3, 96, 96)])
def test_shape_dtype_device_and_range(fn, c: int, h: int, w: int) -> None:
    x = _imgs(4, c, h, w)
    y = fn(x, generator=_gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(y, x)


@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
def test_bfloat16_kept(fn) -> None:
    x = _imgs(8, 3, 16, 16).bfloat16()
    y = fn(x, generator=_gen(0))
    assert y.dtype == torch.bfloat16
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
def test_deterministic_given_generator_and_global_seed(fn) -> None:
    x = _imgs(16, 3, 16, 16)
    a = fn(x, generator=_gen(7))
    b = fn(x, generator=_gen(7))
    c = fn(x, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(3)
    d = fn(x)
    torch.manual_seed(3)
    e = fn(x)
    assert torch.equal(d, e)


@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
def test_each_sample_gets_its_own_transform(fn) -> None:
    x = _imgs(1, 3, 16, 16).expand(64, 3, 16, 16).contiguous()
    y = fn(x, generator=_gen(0))
    distinct = torch.unique(y.flatten(1), dim=0).shape[0]
    # Weak has 2 * 5 * 5 = 50 crop/flip combinations, strong many more: most samples differ.
    assert distinct >= 20


def test_rejects_bad_input() -> None:
    with pytest.raises(CoreInputError, match="images"):
        weak_augment(torch.rand(3, 8, 8))
    with pytest.raises(CoreInputError, match="channels"):
        strong_augment(torch.rand(2, 2, 8, 8))
    with pytest.raises(CoreInputError, match="float"):
        strong_augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


# ---------------------------------------------------------------- weak augmentation


def test_weak_is_a_reflect_padded_crop_possibly_flipped() -> None:
    x = _imgs(32, 3, 16, 16)
    y = weak_augment(x, generator=_gen(5))
    pad = 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    seen_flip, seen_shift = False, False
    for i in range(x.shape[0]):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(
                y[i],
                (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy : dy + 16, dx : dx + 16]),
            )
        ]
        assert matches, f"sample {i} is not a crop of the padded image"
        seen_flip |= any(m[2] for m in matches)
        seen_shift |= any((m[0], m[1]) != (pad, pad) for m in matches)
    assert seen_flip and seen_shift


def test_weak_flip_only_on_1px_padding_matches_torch_flip() -> None:
    # 8x8 has pad 1; the samples that were not shifted are either x or torch.flip(x, [-1]).
    x = _imgs(64, 1, 8, 8)
    y = weak_augment(x, generator=_gen(2))
    same = [(y[i] == x[i]).all().item() for i in range(64)]
    flipped = [(y[i] == torch.flip(x[i], [-1])).all().item() for i in range(64)]
    assert any(same) and any(flipped)


# ---------------------------------------------------------------- ops against their definitions


def test_solarize_inverts_levels_at_or_above_threshold() -> None:
    x = torch.tensor([0, 100, 127, 128, 200, 255], dtype=torch.float32).view(1, 1, 1, 6) / 255
    y = ops.solarize(x, torch.tensor([128.0]))
    expected = torch.tensor([0, 100, 127, 127, 55, 0], dtype=torch.float32) / 255
    assert torch.allclose(y.flatten(), expected, atol=1e-6)
    assert torch.equal(ops.solarize(x, torch.tensor([256.0])), x)


def test_posterize_keeps_top_bits() -> None:
    levels = torch.arange(256, dtype=torch.float32)
    x = (levels / 255).view(1, 1, 16, 16).repeat(3, 1, 1, 1)
    y = ops.posterize(x, torch.tensor([1, 4, 8]))
    got = (y * 255).round().to(torch.int64).view(3, -1)
    lv = levels.to(torch.int64)
    assert torch.equal(got[0], lv & 0b10000000)
    assert torch.equal(got[1], lv & 0b11110000)
    assert torch.equal(got[2], lv)


def test_autocontrast_stretches_each_channel_to_full_range() -> None:
    x = torch.rand(2, 3, 8, 8, generator=_gen(0)) * 0.5 + 0.2
    x[1, 2] = 0.4  # a constant channel stays as it is
    y = ops.autocontrast(x)
    assert torch.allclose(y[0].amin(dim=(1, 2)), torch.zeros(3))
    assert torch.allclose(y[0].amax(dim=(1, 2)), torch.ones(3))
    lo, hi = x[0, 0].min(), x[0, 0].max()
    assert torch.allclose(y[0, 0], (x[0, 0] - lo) / (hi - lo))
    assert torch.equal(y[1, 2], x[1, 2])


def test_equalize_matches_pil_and_flattens_histogram() -> None:
    x = _quantised(3, 3, 32, 32) ** 2  # skewed towards dark levels
    x = (x * 255).round() / 255
    y = ops.equalize(x)
    for i in range(3):
        ref = _from_pil(ImageOps.equalize(_to_pil(x[i])))
        assert torch.allclose(y[i], ref, atol=1e-6)
    # PIL's integer step saturates small images; 64x64 leaves it fine enough to see uniformity.
    big = _quantised(1, 3, 64, 64, seed=1) ** 2
    big = (big * 255).round() / 255
    out = ops.equalize(big)
    for ch in range(3):
        before = torch.histc(big[0, ch], bins=4, min=0, max=1)
        counts = torch.histc(out[0, ch], bins=4, min=0, max=1)
        assert before.max() > 1.6 * 4096 / 4  # the input is far from uniform
        assert ((counts - 1024).abs() < 1024 * 0.1).all()  # the output is close to uniform


def test_equalize_of_constant_image_is_identity() -> None:
    x = torch.full((1, 1, 4, 4), 0.5)
    assert torch.allclose(ops.equalize(x), (x * 255).round() / 255)


@pytest.mark.parametrize(
    ("name", "pil"),
    [
        ("brightness", ImageEnhance.Brightness),
        ("color", ImageEnhance.Color),
        ("contrast", ImageEnhance.Contrast),
        ("sharpness", ImageEnhance.Sharpness),
    ],
)
def test_enhance_ops_match_pil(name: str, pil) -> None:
    x = _quantised(3, 3, 12, 12, seed=4)
    factors = torch.tensor([0.3, 1.0, 1.7])
    y = getattr(ops, name)(x, factors)
    for i, f in enumerate(factors.tolist()):
        ref = _from_pil(pil(_to_pil(x[i])).enhance(f))
        # PIL rounds its degenerate images to 8 bits; we do not.
        assert (y[i] - ref).abs().max() <= 2.5 / 255, name


def test_enhance_factor_zero_gives_degenerate_images() -> None:
    x = _imgs(2, 3, 8, 8)
    zero = torch.zeros(2)
    assert torch.equal(ops.brightness(x, zero), torch.zeros_like(x))
    c = ops.color(x, zero)
    assert torch.allclose(c[:, 0], c[:, 1]) and torch.allclose(c[:, 1], c[:, 2])
    k = ops.contrast(x, zero)
    assert torch.allclose(k, k[:, :1, :1, :1].expand_as(k))


def test_color_on_grayscale_is_identity() -> None:
    x = _imgs(2, 1, 8, 8)
    assert torch.equal(ops.color(x, torch.tensor([0.0, 1.9])), x)


def test_translate_shifts_content_and_fills_grey() -> None:
    x = _imgs(1, 3, 8, 8)
    eye = torch.eye(2)[None]
    y = ops.affine(x, eye, torch.tensor([[-2.0, 0.0]]))  # reads x - 2: content moves right by 2
    assert torch.allclose(y[..., 2:], x[..., :-2], atol=1e-5)
    assert torch.allclose(y[..., :2], torch.full_like(y[..., :2], 0.5), atol=1e-5)
    y = ops.affine(x, eye, torch.tensor([[0.0, 3.0]]))  # reads y + 3: content moves up by 3
    assert torch.allclose(y[..., :-3, :], x[..., 3:, :], atol=1e-5)


def test_rotate_90_is_rot90_and_zero_shear_is_identity() -> None:
    x = _imgs(1, 3, 8, 8)
    y = ops.affine(x, ops.rotate_matrix(torch.tensor([90.0])), torch.zeros(1, 2))
    assert torch.allclose(y, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(ops.affine(x, ops.shear_x_matrix(torch.zeros(1)), torch.zeros(1, 2)), x, atol=1e-5)


def test_shear_x_moves_rows_in_proportion_to_their_height() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, :, 4] = 1.0  # a vertical line through the centre column
    r = 0.25
    y = ops.affine(x, ops.shear_x_matrix(torch.tensor([r])), torch.zeros(1, 2), fill=0.0)
    # Row 0 is 4 px above the centre: the line is read from x + r*(-4) = col 4 - 1, so it moves to col 5.
    assert int(y[0, 0, 0].argmax()) == 5
    assert int(y[0, 0, 4].argmax()) == 4
    assert int(y[0, 0, 8].argmax()) == 3


def test_strong_zero_magnitude_leaves_only_parameter_free_ops() -> None:
    x = _quantised(128, 3, 8, 8)
    y = strong_augment(x, n=1, m=0, generator=_gen(0))
    candidates = torch.stack([x, ops.autocontrast(x), ops.equalize(x)])  # (3, B, C, H, W)
    err = (candidates - y[None]).abs().flatten(2).amax(-1)  # (3, B)
    assert (err.amin(0) < 1e-5).all()
    assert (err[0] < 1e-5).sum() > 64  # 12 of 14 ops are the identity at m = 0


def test_strong_draws_many_op_kinds_per_batch() -> None:
    x = _quantised(1, 3, 16, 16).expand(256, 3, 16, 16).contiguous()
    y = strong_augment(x, n=1, m=2, generator=_gen(1))
    # Among samples with n=1, the identity op leaves the image untouched: about 1/14 of them.
    unchanged = (y - x).flatten(1).abs().amax(1) < 1e-6
    assert 5 <= int(unchanged.sum()) <= 45
    assert torch.unique(y.flatten(1), dim=0).shape[0] > 150


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
def test_runs_on_cuda_with_a_cpu_generator(fn) -> None:
    x = _imgs(32, 3, 32, 32).cuda()
    a = fn(x, generator=_gen(0))
    b = fn(x, generator=_gen(0))
    assert a.device == x.device and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # Same draws as on the CPU: the CPU result agrees up to float rounding in a few pixels.
    ref = fn(x.cpu(), generator=_gen(0))
    assert ((a.cpu() - ref).abs() > 1e-3).float().mean() < 0.01


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
    x = _imgs(16, c, h, w)
    y = _views(recipe)[view](x, _gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    changed = (y - x).abs().flatten(1).amax(1) > 0
    assert int(changed.sum()) >= 12  # the paper's Identity (and Color on grey) may keep a few
    yb = _views(recipe)[view](x.bfloat16(), _gen(1))
    assert yb.dtype == torch.bfloat16 and float(yb.min()) >= 0.0 and float(yb.max()) <= 1.0


@pytest.mark.parametrize(("recipe", "view"), _RECIPE_VIEWS)
def test_views_are_deterministic_given_the_generator(recipe: str, view: str) -> None:
    fn = _views(recipe)[view]
    x = _imgs(32, 3, 16, 16)
    assert torch.equal(fn(x, _gen(7)), fn(x, _gen(7)))
    assert not torch.equal(fn(x, _gen(7)), fn(x, _gen(8)))


@pytest.mark.parametrize(("recipe", "view"), _RECIPE_VIEWS)
def test_each_image_gets_its_own_parameters(recipe: str, view: str) -> None:
    x = _imgs(1, 3, 32, 32).expand(64, 3, 32, 32).contiguous()
    y = _views(recipe)[view](x, _gen(0))
    # The paper's weak view has 2 * 9 * 9 = 162 crop/flip outcomes at 32x32 (about 52 of 64
    # distinct expected); the others are continuous.
    assert torch.unique(y.flatten(1), dim=0).shape[0] >= 45


def test_paper_recipe_is_the_strong_and_weak_augment_of_the_base_methods() -> None:
    x = _imgs(32, 3, 16, 16)
    assert torch.equal(
        strong_view(x, recipe="paper", n=2, m=2, generator=_gen(3)), strong_augment(x, generator=_gen(3))
    )
    assert torch.equal(weak_view(x, recipe="paper", generator=_gen(3)), weak_augment(x, generator=_gen(3)))


def test_bad_recipe_and_reference_magnitude_name_their_field() -> None:
    x = _imgs(2, 3, 8, 8)
    with pytest.raises(CoreInputError, match="recipe"):
        weak_view(x, recipe="fixmatch", generator=_gen(0))  # type: ignore[arg-type]
    with pytest.raises(CoreInputError, match="m"):
        strong_view(x, recipe="reference", n=2, m=1, generator=_gen(0))
    with pytest.raises(CoreInputError, match="n"):
        strong_view(x, recipe="reference", n=15, m=2, generator=_gen(0))


@pytest.mark.parametrize("recipe", RECIPES)
def test_weak_view_flips_about_half_of_the_images(recipe: str) -> None:
    x = _ramp(1000, 32, 32)
    y = weak_view(x, recipe=recipe, generator=_gen(4))
    # Column ramp: the centre of a flipped image decreases from left to right.
    flipped = (y[:, 0, 16, 17] < y[:, 0, 16, 14]).float().mean()
    assert 0.45 <= float(flipped) <= 0.55


def test_reference_crop_keeps_between_a_fifth_and_all_of_the_area() -> None:
    h = w = 32
    y = weak_view(_ramp(2000, h, w), recipe="reference", generator=_gen(5))
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
    x = _imgs(3, 3, 32, 32)
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
    y = cutout_half(x, generator=_gen(6))
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
    x = _imgs(200, 3, 8, 8)
    y = strong_view(x, recipe="reference", n=2, m=2, generator=_gen(2))
    grey = (y == CUTOUT_FILL).all(dim=1).sum((1, 2))
    assert int(grey.min()) >= 2 * 2  # at least the clipped quarter of the 4x4 square


def _pil_candidates(img: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every result RandAugmentMC(1, 2) of the RUC scripts can give for one image, by PIL."""
    pil = _to_pil(img)
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
    return {k: _from_pil(v) for k, v in out.items()}


def test_reference_randaugment_ops_are_the_scripts_fixed_strength_ops() -> None:
    x = _quantised(300, 3, 16, 16, seed=3) * 0.75 + 0.2  # not full-range: AutoContrast changes it
    x = (x * 255).round() / 255
    y = randaugment_mc(x, n=1, m=2, generator=_gen(0))
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
    x = _quantised(4000, 1, 8, 8, seed=5) * 0.75 + 0.2
    x = (x * 255).round() / 255
    y = randaugment_mc(x, n=1, m=2, generator=_gen(1))
    kept = float(((y - x).abs().flatten(1).amax(1) < 1e-6).float().mean())
    # Changed by every op but Identity, 8-bit Posterize, Color (on grey) and Equalize (PIL's
    # step is 0 below 255 pixels, so 8x8 images are kept): 4 of 14.
    expected = 0.5 + 0.5 * 4 / 14
    assert abs(kept - expected) < 0.03


def test_reference_draws_distinct_ops_per_image() -> None:
    x = _quantised(64, 3, 8, 8) * 0.75 + 0.2
    # All 14 ops, none twice, at p = 0.5 each: the two geometric ops that can cancel aside,
    # no image comes out unchanged.
    y = randaugment_mc(x, n=len(OP_NAMES), m=2, generator=_gen(0))
    assert (y - x).abs().flatten(1).amax(1).min() > 0.01


def test_reference_geometry_matches_pil_nearest_black_fill() -> None:
    x = _quantised(1, 3, 16, 16)
    pil = _to_pil(x[0])
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
        assert torch.allclose(y[0], _from_pil(ref), atol=1e-6), name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("recipe", "view"), _RECIPE_VIEWS)
def test_views_on_cuda_agree_with_cpu(recipe: str, view: str) -> None:
    fn = _views(recipe)[view]
    x = _imgs(64, 3, 32, 32)
    a = fn(x.cuda(), _gen(0))
    assert a.device.type == "cuda" and torch.equal(a, fn(x.cuda(), _gen(0)))
    ref = fn(x, _gen(0))
    assert ((a.cpu() - ref).abs() > 1e-3).float().mean() < 0.01
