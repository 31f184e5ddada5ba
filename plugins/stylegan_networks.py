"""The networks of the ``stylegan`` architecture (see :mod:`artengine_plugins.stylegan`).

Imported only when a network is built, so that loading the plugin does not import torch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from artengine import ClassHeadDiscriminator, minibatch_std


ARTENGINE_HOOK_API = "1.0"

_LRELU_GAIN = math.sqrt(2.0)


def _levels(image_size: int) -> int:
    levels = int(math.log2(image_size)) - 2
    if 2 ** (levels + 2) != image_size or levels < 1:
        raise ValueError(f"stylegan: image size must be a power of two >= 8, got {image_size}")
    return levels


def _channels(resolution: int, base: int, maximum: int) -> int:
    return max(8, min(maximum, base // resolution))


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit root-mean-square (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate: weights stored N(0, 1) and scaled at
    run time by 1/sqrt(fan_in) (times ``lr_mul``)."""

    def __init__(self, c_in: int, c_out: int, *, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((c_out,), float(bias_init) / lr_mul))
        self.scale = lr_mul / math.sqrt(c_in)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN if self.activation else x


class EqualConv2d(nn.Module):
    """Convolution with the equalised learning rate, optional 2x average-pool downsampling."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, bias: bool = True,
                 activation: bool = True, down: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = 1.0 / math.sqrt(c_in * kernel * kernel)
        self.padding = kernel // 2
        self.activation, self.down = activation, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)
        if self.down:
            x = F.avg_pool2d(x, 2)
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN if self.activation else x


class MappingNetwork(nn.Module):
    """(z, style code) -> w: both inputs normalised, concatenated, then an MLP."""

    def __init__(self, z_dim: int, style_dim: int, w_dim: int, layers: int, lr_mul: float = 0.01) -> None:
        super().__init__()
        dims = [z_dim + style_dim] + [w_dim] * layers
        self.net = nn.Sequential(*(EqualLinear(a, b, lr_mul=lr_mul, activation=True)
                                   for a, b in zip(dims[:-1], dims[1:])))

    def forward(self, z: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(style)], dim=1))


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution with weight demodulation.

    Computed as "modulate the activations, convolve with the shared weight, demodulate the
    outputs" (StyleGAN2's non-fused form), which is exactly equal to convolving with the
    per-sample modulated weight but runs as one ordinary batched convolution.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, w_dim: int, *, demodulate: bool = True,
                 up: bool = False, activation: bool = True) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = 1.0 / math.sqrt(c_in * kernel * kernel)
        self.padding = kernel // 2
        self.demodulate, self.up, self.activation = demodulate, up, activation

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # (N, c_in)
        weight = self.weight * self.scale
        x = x * styles[:, :, None, None]
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sigma_j = sqrt(sum_{i,k} (w_ijk * s_i)^2) for each sample and output channel j.
            sigma = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()
            x = x * sigma[:, :, None, None]
        x = x + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN if self.activation else x


class SynthesisBlock(nn.Module):
    """One resolution: (upsample +) two modulated 3x3 convs and a toRGB output."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, first: bool) -> None:
        super().__init__()
        self.first = first
        if first:
            self.const = nn.Parameter(torch.randn(c_out, 4, 4))
            self.conv1 = ModulatedConv2d(c_out, c_out, 3, w_dim)
        else:
            self.conv0 = ModulatedConv2d(c_in, c_out, 3, w_dim, up=True)
            self.conv1 = ModulatedConv2d(c_out, c_out, 3, w_dim)
        self.torgb = ModulatedConv2d(c_out, 3, 1, w_dim, demodulate=False, activation=False)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, w: torch.Tensor):
        if self.first:
            x = self.const.unsqueeze(0).expand(w.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, w)
        x = self.conv1(x, w)
        rgb = self.torgb(x, w)
        if img is not None:
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
            rgb = rgb + img
        return x, rgb


class StyleEncoder(nn.Module):
    """Reference image -> style code: strided residual-free conv stack, then linear."""

    def __init__(self, image_size: int, style_dim: int, base: int, maximum: int) -> None:
        super().__init__()
        levels = _levels(image_size)
        res = image_size
        layers: list[nn.Module] = [EqualConv2d(3, _channels(res, base, maximum), 1)]
        for _ in range(levels):
            layers.append(EqualConv2d(_channels(res, base, maximum), _channels(res // 2, base, maximum),
                                      3, down=True))
            res //= 2
        self.features = nn.Sequential(*layers)
        self.out = EqualLinear(_channels(4, base, maximum), style_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(images).mean(dim=(2, 3)))


class StyleGenerator(nn.Module):
    """Mapping network + synthesis network + the two sources of style codes."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        image_size = int(config["image_size"])
        self.z_dim = int(config["z_dim"])
        self.style_dim = int(config["style_dim"])
        self.num_classes = int(config["num_classes"])
        if self.num_classes < 1:
            raise ValueError("stylegan: needs labelled data (the style labels)")
        base, maximum = int(config["g_ch_base"]), int(config["g_ch_max"])
        w_dim = int(config["w_dim"])
        self.style_table = nn.Embedding(self.num_classes, self.style_dim)
        nn.init.normal_(self.style_table.weight)
        self.style_encoder = StyleEncoder(image_size, self.style_dim, int(config["e_ch_base"]),
                                          int(config["e_ch_max"]))
        self.mapping = MappingNetwork(self.z_dim, self.style_dim, w_dim, int(config["mapping_layers"]))
        blocks = []
        res, c_prev = 4, 0
        for i in range(_levels(image_size) + 1):
            c = _channels(res, base, maximum)
            blocks.append(SynthesisBlock(c_prev, c, w_dim, first=(i == 0)))
            c_prev, res = c, res * 2
        self.blocks = nn.ModuleList(blocks)

    def style_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Style codes of style labels (int64 indices)."""
        return self.style_table(labels)

    def style_from_images(self, images: torch.Tensor) -> torch.Tensor:
        """Style codes of reference images (``(N, 3, S, S)`` in ``[-1, 1]``)."""
        return self.style_encoder(images)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                styles: torch.Tensor | None = None) -> torch.Tensor:
        if styles is None:
            if labels is None:
                raise ValueError("stylegan generator needs style codes or style labels")
            styles = self.style_from_labels(labels)
        w = self.mapping(z, styles)
        x = img = None
        for block in self.blocks:
            x, img = block(x, img, w)
        return img


class DiscriminatorBlock(nn.Module):
    """Residual down-block: two 3x3 convs (the second downsamples), 1x1 skip, sum / sqrt(2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(c_in, c_in, 3)
        self.conv1 = EqualConv2d(c_in, c_out, 3, down=True)
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False, activation=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) / math.sqrt(2.0)


class StyleDiscriminator(ClassHeadDiscriminator, nn.Module):
    """Residual discriminator with projection conditioning on the style label."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        image_size = int(config["image_size"])
        base, maximum = int(config["d_ch_base"]), int(config["d_ch_max"])
        cmap_dim = int(config.get("cmap_dim", 128))
        res = image_size
        self.fromrgb = EqualConv2d(3, _channels(res, base, maximum), 1)
        blocks = []
        while res > 4:
            blocks.append(DiscriminatorBlock(_channels(res, base, maximum), _channels(res // 2, base, maximum)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        c4 = _channels(4, base, maximum)
        # Minibatch standard deviation (mbstd_group > 0): one more input map for the 4x4 conv.
        self.mbstd_group = int(config.get("mbstd_group", 0))
        self.conv = EqualConv2d(c4 + (1 if self.mbstd_group > 0 else 0), c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, cmap_dim)
        self.embed = EqualLinear(int(config["num_classes"]), cmap_dim)
        self.num_classes = int(config["num_classes"])
        self.cmap_dim = cmap_dim
        # The auxiliary classifier's head (AC-GAN, ``aux_weight > 0``) on the penultimate features.
        self.classes = EqualLinear(c4, self.num_classes) if float(config.get("aux_weight", 0.0)) > 0 else None

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.fromrgb(images))
        if self.mbstd_group > 0:
            h = minibatch_std(h, self.mbstd_group)
        return self.fc(self.conv(h).flatten(1))

    def _logits(self, features: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("stylegan discriminator needs style labels")
        h = self.out(features)
        cmap = self.embed(F.one_hot(labels, self.num_classes).to(h.dtype))
        return (h * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)


def build_generator(config: Mapping[str, Any]) -> StyleGenerator:
    """The generator (with style table and style encoder) for a run config."""
    return StyleGenerator(config)


def build_discriminator(config: Mapping[str, Any]) -> StyleDiscriminator:
    """The discriminator for a run config (minibatch standard deviation when ``mbstd_group > 0``)."""
    return StyleDiscriminator(config)
