"""Batched, on-device image augmentation for RUC: weak (crop + flip) and strong (RandAugment).

Both take float (B, C, H, W) images in [0, 1] and return new tensors on the same device; each
sample draws its own random parameters. Ops live in ``core.augment.ops``.
"""

from core.augment.strong import strong_augment
from core.augment.weak import weak_augment

__all__ = ["strong_augment", "weak_augment"]
