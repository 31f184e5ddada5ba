"""DiffAugment (Zhao et al., 2020): differentiable augmentation of real and generated images.

The discriminator only ever sees augmented images, real and fake alike, and the generator's
gradient flows through the same augmentation, so the augmentation does not leak into the
generated distribution while the discriminator overfits far less on small datasets.

Policies (comma-separated): ``color`` (random brightness, saturation, contrast),
``translation`` (shift by up to 1/8 of the size, zero-filled), ``cutout`` (zero a square
of half the size at a random place).

Random parameters are drawn for the *global* batch from the torch generator and each
process keeps its own slice, so multi-process training draws exactly what one process
would, and a resumed run draws what the uninterrupted one drew.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES: tuple[str, ...] = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """Split and check a policy string such as ``"translation,cutout"``."""
    parts = tuple(p.strip() for p in policy.split(",") if p.strip())
    for part in parts:
        if part not in POLICIES:
            raise ValueError(f"unknown augmentation {part!r} (known: {', '.join(POLICIES)})")
    return parts


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], rows: slice, global_batch: int) -> torch.Tensor:
    """Augment ``x`` (this process's ``rows`` of a global batch of ``global_batch`` images)."""
    for part in policy:
        if part == "color":
            x = _color(x, rows, global_batch)
        elif part == "translation":
            x = _translation(x, rows, global_batch)
        elif part == "cutout":
            x = _cutout(x, rows, global_batch)
    return x


def _rand(global_batch: int, rows: slice, *shape: int, device: torch.device) -> torch.Tensor:
    return torch.rand(global_batch, *shape)[rows].to(device)


def _color(x: torch.Tensor, rows: slice, n: int) -> torch.Tensor:
    brightness = _rand(n, rows, 1, 1, 1, device=x.device) - 0.5
    saturation = _rand(n, rows, 1, 1, 1, device=x.device) * 2.0
    contrast = _rand(n, rows, 1, 1, 1, device=x.device) + 0.5
    x = x + brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * saturation + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean


def _translation(x: torch.Tensor, rows: slice, n: int, ratio: float = 0.125) -> torch.Tensor:
    size_h, size_w = x.shape[2], x.shape[3]
    reach_h, reach_w = int(size_h * ratio + 0.5), int(size_w * ratio + 0.5)
    shift = _rand(n, rows, 2, device=x.device)
    dy = (shift[:, 0] * (2 * reach_h + 1)).long() - reach_h
    dx = (shift[:, 1] * (2 * reach_w + 1)).long() - reach_w
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    ys = (torch.arange(size_h, device=x.device)[None, :, None] + dy[:, None, None] + 1).clamp(0, size_h + 1)
    xs = (torch.arange(size_w, device=x.device)[None, None, :] + dx[:, None, None] + 1).clamp(0, size_w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # the 1-pixel zero border is what shifted-in areas read
    return padded.permute(0, 2, 3, 1)[batch, ys, xs].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, rows: slice, n: int, ratio: float = 0.5) -> torch.Tensor:
    size_h, size_w = x.shape[2], x.shape[3]
    cut_h, cut_w = int(size_h * ratio + 0.5), int(size_w * ratio + 0.5)
    offset = _rand(n, rows, 2, device=x.device)
    top = (offset[:, 0] * (size_h + 1 - cut_h % 2)).long() - cut_h // 2
    left = (offset[:, 1] * (size_w + 1 - cut_w % 2)).long() - cut_w // 2
    ys = torch.arange(size_h, device=x.device)[None, :, None]
    xs = torch.arange(size_w, device=x.device)[None, None, :]
    inside = ((ys >= top[:, None, None]) & (ys < top[:, None, None] + cut_h)
              & (xs >= left[:, None, None]) & (xs < left[:, None, None] + cut_w))
    return x * (~inside).unsqueeze(1).to(x.dtype)
