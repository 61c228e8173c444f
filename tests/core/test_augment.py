"""Tests of core.augment's batched ops: shapes, range, determinism, the weak view, each op against
its definition (PIL where PIL has it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from augment_images import from_pil, generator, quantised_images, random_images, to_pil
from PIL import ImageEnhance, ImageOps

from core.augment import ops, strong_augment, weak_augment
from core.errors import CoreInputError

# ---------------------------------------------------------------- shapes, range, determinism


@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
@pytest.mark.parametrize(("c", "h", "w"), [(1, 8, 8), (3, 13, 20), (3, 96, 96)])
def test_shape_dtype_device_and_range(fn, c: int, h: int, w: int) -> None:
    x = random_images(4, c, h, w)
    y = fn(x, generator=generator(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(y, x)


@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
def test_bfloat16_kept(fn) -> None:
    x = random_images(8, 3, 16, 16).bfloat16()
    y = fn(x, generator=generator(0))
    assert y.dtype == torch.bfloat16
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
def test_deterministic_given_generator_and_global_seed(fn) -> None:
    x = random_images(16, 3, 16, 16)
    a = fn(x, generator=generator(7))
    b = fn(x, generator=generator(7))
    c = fn(x, generator=generator(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(3)
    d = fn(x)
    torch.manual_seed(3)
    e = fn(x)
    assert torch.equal(d, e)


@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
def test_each_sample_gets_its_own_transform(fn) -> None:
    x = random_images(1, 3, 16, 16).expand(64, 3, 16, 16).contiguous()
    y = fn(x, generator=generator(0))
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
    x = random_images(32, 3, 16, 16)
    y = weak_augment(x, generator=generator(5))
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
    x = random_images(64, 1, 8, 8)
    y = weak_augment(x, generator=generator(2))
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
    x = torch.rand(2, 3, 8, 8, generator=generator(0)) * 0.5 + 0.2
    x[1, 2] = 0.4  # a constant channel stays as it is
    y = ops.autocontrast(x)
    assert torch.allclose(y[0].amin(dim=(1, 2)), torch.zeros(3))
    assert torch.allclose(y[0].amax(dim=(1, 2)), torch.ones(3))
    lo, hi = x[0, 0].min(), x[0, 0].max()
    assert torch.allclose(y[0, 0], (x[0, 0] - lo) / (hi - lo))
    assert torch.equal(y[1, 2], x[1, 2])


def test_equalize_matches_pil_and_flattens_histogram() -> None:
    x = quantised_images(3, 3, 32, 32) ** 2  # skewed towards dark levels
    x = (x * 255).round() / 255
    y = ops.equalize(x)
    for i in range(3):
        ref = from_pil(ImageOps.equalize(to_pil(x[i])))
        assert torch.allclose(y[i], ref, atol=1e-6)
    # PIL's integer step saturates small images; 64x64 leaves it fine enough to see uniformity.
    big = quantised_images(1, 3, 64, 64, seed=1) ** 2
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
    x = quantised_images(3, 3, 12, 12, seed=4)
    factors = torch.tensor([0.3, 1.0, 1.7])
    y = getattr(ops, name)(x, factors)
    for i, f in enumerate(factors.tolist()):
        ref = from_pil(pil(to_pil(x[i])).enhance(f))
        # PIL rounds its degenerate images to 8 bits; we do not.
        assert (y[i] - ref).abs().max() <= 2.5 / 255, name


def test_enhance_factor_zero_gives_degenerate_images() -> None:
    x = random_images(2, 3, 8, 8)
    zero = torch.zeros(2)
    assert torch.equal(ops.brightness(x, zero), torch.zeros_like(x))
    c = ops.color(x, zero)
    assert torch.allclose(c[:, 0], c[:, 1]) and torch.allclose(c[:, 1], c[:, 2])
    k = ops.contrast(x, zero)
    assert torch.allclose(k, k[:, :1, :1, :1].expand_as(k))


def test_color_on_grayscale_is_identity() -> None:
    x = random_images(2, 1, 8, 8)
    assert torch.equal(ops.color(x, torch.tensor([0.0, 1.9])), x)


def test_translate_shifts_content_and_fills_grey() -> None:
    x = random_images(1, 3, 8, 8)
    eye = torch.eye(2)[None]
    y = ops.affine(x, eye, torch.tensor([[-2.0, 0.0]]))  # reads x - 2: content moves right by 2
    assert torch.allclose(y[..., 2:], x[..., :-2], atol=1e-5)
    assert torch.allclose(y[..., :2], torch.full_like(y[..., :2], 0.5), atol=1e-5)
    y = ops.affine(x, eye, torch.tensor([[0.0, 3.0]]))  # reads y + 3: content moves up by 3
    assert torch.allclose(y[..., :-3, :], x[..., 3:, :], atol=1e-5)


def test_rotate_90_is_rot90_and_zero_shear_is_identity() -> None:
    x = random_images(1, 3, 8, 8)
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
    x = quantised_images(128, 3, 8, 8)
    y = strong_augment(x, n=1, m=0, generator=generator(0))
    candidates = torch.stack([x, ops.autocontrast(x), ops.equalize(x)])  # (3, B, C, H, W)
    err = (candidates - y[None]).abs().flatten(2).amax(-1)  # (3, B)
    assert (err.amin(0) < 1e-5).all()
    assert (err[0] < 1e-5).sum() > 64  # 12 of 14 ops are the identity at m = 0


def test_strong_draws_many_op_kinds_per_batch() -> None:
    x = quantised_images(1, 3, 16, 16).expand(256, 3, 16, 16).contiguous()
    y = strong_augment(x, n=1, m=2, generator=generator(1))
    # Among samples with n=1, the identity op leaves the image untouched: about 1/14 of them.
    unchanged = (y - x).flatten(1).abs().amax(1) < 1e-6
    assert 5 <= int(unchanged.sum()) <= 45
    assert torch.unique(y.flatten(1), dim=0).shape[0] > 150


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fn", [weak_augment, strong_augment])
def test_runs_on_cuda_with_a_cpu_generator(fn) -> None:
    x = random_images(32, 3, 32, 32).cuda()
    a = fn(x, generator=generator(0))
    b = fn(x, generator=generator(0))
    assert a.device == x.device and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # Same draws as on the CPU: the CPU result agrees up to float rounding in a few pixels.
    ref = fn(x.cpu(), generator=generator(0))
    assert ((a.cpu() - ref).abs() > 1e-3).float().mean() < 0.01
