"""Make deterministic CIFAR-like images for the ResNet-8 example configs (configs/resnet8*.yaml).

No CIFAR-10 image is shipped (licence, size); these stand in for photos: a smooth random colour field (a few
low-frequency waves), one brighter or darker blob, a little pixel noise, stretched to a random contrast that
often reaches 0 and 255 as photos do. Pixels are integers 0..255 (the MLPerf Tiny ResNet-8 takes raw pixel
values; its reference int8 file has input scale 1.0, zero point -128).

Outputs (run from the repo root: `.venv/bin/python configs/make_cifar_like.py`; numpy only, seeded):
  configs/data/cifar_like_calibration.npy  (48, 32, 32, 3) uint8: calibration images for the converter. The
      first image is stretched to span exactly 0..255, so the int8 input range is [0, 255] and one input LSB
      is 1.0 pixel value.
  configs/data/cifar_like_centers.npy      (3, 32, 32, 3) float32: centres of the certified L-inf balls, other
      images of the same kind, clipped to [4, 251] so that balls of up to four input LSBs stay inside the
      calibrated pixel range (no input saturation).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SEED = 20260601
CALIBRATION = 48  # 147 KB as uint8: small enough to commit
CENTERS = 3
MARGIN = 4.0  # pixel values: the largest ball radius of the configs (four input LSBs of 1.0)
HERE = Path(__file__).resolve().parent


def cifar_like_images(count: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """(count, size, size, 3) float64 integer pixel values in [0, 255]."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    images = np.empty((count, size, size, 3))
    for i in range(count):
        img = np.broadcast_to(rng.uniform(0, 1, 3), (size, size, 3)).copy()
        for _ in range(3):
            fy, fx = rng.uniform(0, 3, 2)
            wave = np.cos(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
            img += 0.3 * wave[..., None] * rng.uniform(-1, 1, 3)
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-1, 1, 3)
        img += rng.normal(0, 0.03, img.shape)
        lo, hi = img.min(), img.max()
        low, high = np.sort(rng.uniform(-60, 315, 2))  # the stretch often overshoots: clipped to 0..255
        images[i] = low + (img - lo) / max(hi - lo, 1e-9) * (high - low)
    return np.clip(np.round(images), 0, 255)


def main() -> int:
    rng = np.random.default_rng(SEED)
    calibration = cifar_like_images(CALIBRATION, rng)
    first = calibration[0]
    calibration[0] = np.round((first - first.min()) / max(first.max() - first.min(), 1.0) * 255.0)
    centers = np.clip(cifar_like_images(CENTERS, rng), MARGIN, 255.0 - MARGIN)
    (HERE / "data").mkdir(exist_ok=True)
    np.save(HERE / "data" / "cifar_like_calibration.npy", calibration.astype(np.uint8))
    np.save(HERE / "data" / "cifar_like_centers.npy", centers.astype(np.float32))
    low, high = calibration.min(), calibration.max()
    sys.stdout.write(f"{CALIBRATION} calibration images (pixels {low:.0f}..{high:.0f}), "
                     f"{CENTERS} centres in [{centers.min():.0f}, {centers.max():.0f}]\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
