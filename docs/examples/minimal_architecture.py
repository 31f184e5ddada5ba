"""mlp_gan: the smallest useful architecture plugin, a fully connected GAN.

The engine's trainer owns the loop, losses, EMA, augmentation and checkpoints; the plugin
gives two factories that build networks from the run's config dict, and its defaults.
Networks follow the calling convention of artengine.architecture: ``G(z, labels=None,
styles=None)`` returns images in [-1, 1] of shape (N, 3, S, S) and has ``z_dim``;
``D(images, labels=None)`` returns one logit per image.
"""
from __future__ import annotations

from torch import nn

from artengine import Architecture, hookimpl

ARTENGINE_HOOK_API = "1.0"


class MLPGenerator(nn.Module):
    """z -> hidden -> pixels; no batch statistics, so each sample is independent."""

    def __init__(self, z_dim: int, image_size: int, hidden: int) -> None:
        super().__init__()
        self.z_dim, self.image_size = z_dim, image_size
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, 3 * image_size * image_size), nn.Tanh())

    def forward(self, z, labels=None, styles=None):
        return self.net(z).view(-1, 3, self.image_size, self.image_size)


class MLPDiscriminator(nn.Module):
    """pixels -> hidden -> one logit per image."""

    def __init__(self, image_size: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, images, labels=None):
        return self.net(images).flatten()


def build_generator(config):
    """The generator for a run config: the defaults below, the user's options, and
    ``image_size``, ``z_dim``, ``num_classes`` added by the engine."""
    return MLPGenerator(int(config["z_dim"]), int(config["image_size"]), int(config["hidden"]))


def build_discriminator(config):
    """The discriminator for the same config."""
    return MLPDiscriminator(int(config["image_size"]), int(config["hidden"]))


MLP_GAN = Architecture(
    name="mlp_gan",
    conditioning="none",
    description="fully connected generator and discriminator (a worked example)",
    build_generator=build_generator,
    build_discriminator=build_discriminator,
    defaults={"hidden": 256, "z_dim": 64, "augment": ""},
)


@hookimpl
def artengine_architectures():
    """The architectures of this plugin."""
    return [MLP_GAN]
