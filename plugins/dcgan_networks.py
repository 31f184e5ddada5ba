"""The networks of the ``dcgan`` architecture (see :mod:`artengine_plugins.dcgan`).

Imported only when a network is built, so that loading the plugin does not import torch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def _levels(image_size: int) -> int:
    """Number of 2x upsamplings from 4x4 to ``image_size``."""
    levels = int(math.log2(image_size)) - 2
    if 2 ** (levels + 2) != image_size or levels < 1:
        raise ValueError(f"dcgan: image size must be a power of two >= 8, got {image_size}")
    return levels


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """z -> 4x4 -> ... -> image_size, transposed convolutions with batch norm."""

    def __init__(self, z_dim: int, image_size: int, ngf: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        levels = _levels(image_size)
        width = ngf * 2 ** (levels - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(levels - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                styles: torch.Tensor | None = None) -> torch.Tensor:
        return self.main(z.view(z.shape[0], self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """image -> logit: strided convolutions, batch norm (not on the first layer), leaky ReLU."""

    def __init__(self, image_size: int, ndf: int) -> None:
        super().__init__()
        levels = _levels(image_size)
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(levels - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.main(images).flatten()


def build_generator(config: Mapping[str, Any]) -> DCGANGenerator:
    """The generator for a run config (``z_dim``, ``image_size``, ``ngf``)."""
    return DCGANGenerator(int(config["z_dim"]), int(config["image_size"]), int(config["ngf"]))


def build_discriminator(config: Mapping[str, Any]) -> DCGANDiscriminator:
    """The discriminator for a run config (``image_size``, ``ndf``)."""
    return DCGANDiscriminator(int(config["image_size"]), int(config["ndf"]))
