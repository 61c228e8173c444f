"""Batched, on-device image augmentation for RUC, in two recipes (``RECIPES``: paper, reference).

``weak_view`` and ``strong_view`` take float (B, C, H, W) images in [0, 1] and return new tensors
on the same device; each sample draws its own random parameters. ``weak_augment`` and
``strong_augment`` are the ``paper`` recipe's views (used directly by the base clustering methods).
Ops live in ``core.augment.ops``, the RandAugment pool in ``core.augment.randaugment``.
"""

from core.augment.strong import strong_augment
from core.augment.views import RECIPES, strong_view, weak_view
from core.augment.weak import weak_augment

__all__ = ["RECIPES", "strong_augment", "strong_view", "weak_augment", "weak_view"]
