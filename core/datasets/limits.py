"""``ArchiveLimits``: the resource limits of every upload reader; no torch, so the API reads them too."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class ArchiveLimits:
    """Resource limits for reading uploads (zip/tar bombs, decompression bombs).

    max_members: archive entries of any kind (directories and skipped files count too).
    max_total_bytes: uncompressed bytes read from an archive (declared sizes are checked first,
        then the bytes actually read are counted, so a lying header is caught); for ``.npz``, the
        uncompressed size of all arrays.
    max_member_bytes: uncompressed size of one image file in an archive.
    max_image_pixels: width * height of one image, checked from its header before decoding.
    max_dataset_bytes: size of the decoded uint8 (N, H, W, C) tensor, and separately of all float32
        feature arrays together.
    max_samples: N, the number of images or feature rows.
    max_feature_dim: D of one feature space (CLIP ViT-L: 768, DINOv2 ViT-g: 1536).
    """

    max_members: int = 500_000
    max_total_bytes: int = 4 * GIB
    max_member_bytes: int = 32 * MIB
    max_image_pixels: int = 4096 * 4096
    max_dataset_bytes: int = 8 * GIB
    max_samples: int = 10_000_000
    max_feature_dim: int = 16_384

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ArchiveLimits.{name} must be a positive integer, got {value!r}")
