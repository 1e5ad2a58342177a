"""Synthetic CIFAR-10: uint8 32x32 RGB images of ten classes, the offline default of cifar_resnext."""
from __future__ import annotations

import numpy as np
import torch


def generate_cifar(n: int, split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` generated CIFAR-shaped images (uint8 (n, 3, 32, 32)) and labels, the same for the same seed.

    A class is a hue (five hues) and a stripe direction (horizontal or vertical): colour alone tells a
    class from eight of the others, stripes from the ninth. Both survive crops and flips. Each image
    also gets a random stripe frequency and phase, brightness, a distractor square and pixel noise,
    so the task is learnable but not trivial. Images come in chunks of 1000 seeded by (seed, split,
    chunk), so the first k images do not depend on n.
    """
    palette = np.array([[0.85, 0.25, 0.2], [0.25, 0.7, 0.3], [0.25, 0.35, 0.85], [0.85, 0.75, 0.2],
                        [0.6, 0.3, 0.75]], dtype=np.float32)
    grid = np.arange(32, dtype=np.float32)
    images, labels = [], []
    for chunk in range(0, n, 1000):
        rng = np.random.default_rng([seed, split == "train", chunk // 1000])
        m = 1000  # whole chunks, cut at the end, so image k is the same whatever n is
        y = rng.integers(0, 10, m)
        hue = palette[y % 5] + rng.normal(0, 0.08, (m, 3)).astype(np.float32)
        freq = rng.uniform(0.25, 0.6, (m, 1, 1))
        phase = rng.uniform(0, 2 * np.pi, (m, 1, 1))
        coord = np.where((y >= 5)[:, None, None], grid[None, None, :], grid[None, :, None])  # vertical / horizontal
        stripes = np.sin(freq * coord + phase).astype(np.float32)  # (m, 32, 32)
        brightness = rng.uniform(0.6, 1.1, (m, 1, 1, 1)).astype(np.float32)
        x = brightness * hue[:, :, None, None] * (0.75 + 0.25 * stripes[:, None])
        r, c, size = rng.integers(0, 24, (3, m, 1, 1))  # a square of random colour somewhere, as clutter
        square = (grid[:, None] >= r) & (grid[:, None] < r + 4 + size % 6) & (grid >= c) & (grid < c + 4 + size % 6)
        x = np.where(square[:, None], rng.uniform(0, 1, (m, 3, 1, 1)).astype(np.float32), x)
        x += rng.normal(0, 0.08, x.shape).astype(np.float32)
        images.append((np.clip(x, 0, 1) * 255).round().astype(np.uint8))
        labels.append(y)
    return torch.from_numpy(np.concatenate(images)[:n]), torch.from_numpy(np.concatenate(labels)[:n].astype(np.int64))
