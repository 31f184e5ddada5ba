"""Conditional GAN with a projection discriminator (Miyato & Koyama, 2018).

The generator is the SNGAN/BigGAN-style residual generator whose batch norms are
class-conditional (each class learns its own gain and bias, de Vries et al. 2017); the
discriminator is a residual network whose output is ``linear(h) + <embed(y), h>``: the
projection of the pooled features onto a learned class embedding. Spectral norm on every
layer of both networks and the hinge loss follow the paper; the learning rates follow
the two time-scale rule (the discriminator learns faster). A minibatch standard deviation
map before the discriminator's last block (StyleGAN's remedy for mode dropping) is an option
(``mbstd_group``).
"""
from __future__ import annotations

from artengine import Architecture, deferred_builder, hookimpl

ARTENGINE_HOOK_API = "1.0"


CGAN = Architecture(
    name="cgan",
    conditioning="label",
    description="conditional GAN: residual generator with class-conditional batch norm, "
    "projection discriminator with spectral norm; hinge loss",
    # The networks live in cgan_networks, imported when one is built: loading this plugin
    # (artengine plugins, verify) does not import torch.
    build_generator=deferred_builder("artengine_plugins.cgan_networks:build_generator"),
    build_discriminator=deferred_builder("artengine_plugins.cgan_networks:build_discriminator"),
    defaults={
        "g_ch": 32,
        "d_ch": 32,
        "g_spectral_norm": True,
        "z_dim": 128,
        "loss": "hinge",
        "lr_g": 1e-4,
        "lr_d": 4e-4,
        "betas": [0.0, 0.999],
        "r1_gamma": 0.0,
        "augment": "translation,cutout",
        "mbstd_group": 0,
        # Joint labels (--label-attribute shape+colour): the class head scores each part.
        "aux_per_part": True,
    },
    presets={
        # A minute or two on 2 CPU cores at 32 px: narrow networks, small batches, no spectral
        # norm in G (as in Miyato & Koyama's generator), faster two time-scale learning rates.
        "demo": {"g_ch": 16, "d_ch": 16, "g_spectral_norm": False, "batch_size": 32, "lr_g": 2e-4, "lr_d": 4e-4},
        # The demo's networks with the auxiliary classifier loss, a faster discriminator (it must
        # learn the classes before the generator can follow) and translation only (cutout hides
        # half a shape): on 32 px shapes about 4,000 steps give >= 95 % label accuracy
        # (docs/training.md, "Quality targets").
        "quality": {"g_ch": 16, "d_ch": 16, "g_spectral_norm": False, "batch_size": 32, "lr_g": 5e-4,
                    "lr_d": 2e-3, "augment": "translation", "aux_weight": 1.0},
    },
    reference="Miyato & Koyama, cGANs with Projection Discriminator, ICLR 2018",
)


@hookimpl
def artengine_architectures() -> list[Architecture]:
    return [CGAN]
