"""The networks of the ``cgan`` architecture (see :mod:`artengine_plugins.cgan`).

Imported only when a network is built, so that loading the plugin does not import torch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from artengine import ClassHeadDiscriminator, minibatch_std


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(module) if enabled else module


def _levels(image_size: int) -> int:
    levels = int(math.log2(image_size)) - 2
    if 2 ** (levels + 2) != image_size or levels < 1:
        raise ValueError(f"cgan: image size must be a power of two >= 8, got {image_size}")
    return levels


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain and bias are looked up per class."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """Residual up-block: CBN, ReLU, 2x nearest upsample, conv3x3, CBN, ReLU, conv3x3."""

    def __init__(self, c_in: int, c_out: int, num_classes: int, sn: bool) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm(c_in, num_classes)
        self.conv1 = _sn(nn.Conv2d(c_in, c_out, 3, 1, 1), sn)
        self.bn2 = ConditionalBatchNorm(c_out, num_classes)
        self.conv2 = _sn(nn.Conv2d(c_out, c_out, 3, 1, 1), sn)
        self.shortcut = _sn(nn.Conv2d(c_in, c_out, 1), sn)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, labels)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), labels)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class CGANGenerator(nn.Module):
    """z, class -> image: linear to 4x4, residual up-blocks with conditional batch norm."""

    def __init__(self, z_dim: int, image_size: int, ch: int, num_classes: int, sn: bool) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("cgan: needs labelled data (at least one class)")
        self.z_dim = z_dim
        self.num_classes = num_classes
        levels = _levels(image_size)
        widths = [ch * min(4, 2 ** (levels - i)) for i in range(levels + 1)]  # e.g. 4ch,4ch,2ch,ch
        self.bottom = widths[0]
        self.linear = _sn(nn.Linear(z_dim, 4 * 4 * widths[0]), sn)
        self.blocks = nn.ModuleList(
            GeneratorBlock(widths[i], widths[i + 1], num_classes, sn) for i in range(levels)
        )
        self.bn_out = nn.BatchNorm2d(widths[-1])
        self.conv_out = _sn(nn.Conv2d(widths[-1], 3, 3, 1, 1), sn)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                styles: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("cgan generator needs class labels")
        h = self.linear(z).view(z.shape[0], self.bottom, 4, 4)
        for block in self.blocks:
            h = block(h, labels)
        return torch.tanh(self.conv_out(F.relu(self.bn_out(h))))


class DiscriminatorBlock(nn.Module):
    """Residual down-block: ReLU, conv3x3, ReLU, conv3x3, 2x average pool."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool) -> None:
        super().__init__()
        self.first, self.down = first, down
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.learned_shortcut = c_in != c_out or down
        if self.learned_shortcut:
            self.shortcut = spectral_norm(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)  # the first block sees raw pixels
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.learned_shortcut:
            # SNGAN's optimized first block pools before its shortcut conv; the others after.
            if self.first:
                s = self.shortcut(F.avg_pool2d(s, 2) if self.down else s)
            else:
                s = self.shortcut(s)
                s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


class ProjectionDiscriminator(ClassHeadDiscriminator, nn.Module):
    """image, class -> logit: residual down-blocks, sum pooling, linear + projection."""

    def __init__(self, image_size: int, ch: int, num_classes: int, class_head: bool = False,
                 mbstd_group: int = 0, class_factors: list[int] | None = None) -> None:
        super().__init__()
        self.class_factors = list(class_factors) if class_factors else None
        levels = _levels(image_size)
        widths = [ch * min(8, 2 ** i) for i in range(levels)] + [ch * min(8, 2 ** (levels - 1))]
        blocks = [DiscriminatorBlock(3, widths[0], down=True, first=True)]
        for i in range(1, levels):
            blocks.append(DiscriminatorBlock(widths[i - 1], widths[i], down=True, first=False))
        # Minibatch standard deviation (mbstd_group > 0): one more input map for the last block.
        self.mbstd_group = mbstd_group
        extra = 1 if mbstd_group > 0 else 0
        blocks.append(DiscriminatorBlock(widths[levels - 1] + extra, widths[levels], down=False, first=False))
        self.blocks = nn.Sequential(*blocks)
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, widths[-1]))
        # The auxiliary classifier's head (AC-GAN), on the same pooled features; for joint
        # labels it scores each part's values (ClassHeadDiscriminator combines them).
        head_width = sum(self.class_factors) if self.class_factors else num_classes
        self.classes = spectral_norm(nn.Linear(widths[-1], head_width)) if class_head else None

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.blocks[:-1](images)
        if self.mbstd_group > 0:
            h = minibatch_std(h, self.mbstd_group)
        return F.relu(self.blocks[-1](h)).sum(dim=(2, 3))

    def _logits(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("projection discriminator needs class labels")
        return self.linear(h).flatten() + (self.embed(labels) * h).sum(dim=1)


def build_generator(config: Mapping[str, Any]) -> CGANGenerator:
    """The generator for a run config (``z_dim``, ``image_size``, ``g_ch``, ``num_classes``)."""
    return CGANGenerator(int(config["z_dim"]), int(config["image_size"]), int(config["g_ch"]),
                         int(config["num_classes"]), bool(config.get("g_spectral_norm", True)))


def build_discriminator(config: Mapping[str, Any]) -> ProjectionDiscriminator:
    """The discriminator for a run config (``image_size``, ``d_ch``, ``num_classes``; a class
    head when ``aux_weight > 0``, per part of joint labels (``label_factors``) unless
    ``aux_per_part`` is off; minibatch standard deviation when ``mbstd_group > 0``)."""
    factors = config.get("label_factors") if config.get("aux_per_part", True) else None
    return ProjectionDiscriminator(int(config["image_size"]), int(config["d_ch"]), int(config["num_classes"]),
                                   class_head=float(config.get("aux_weight", 0.0)) > 0,
                                   mbstd_group=int(config.get("mbstd_group", 0)), class_factors=factors)
