"""DCGAN (Radford, Metz & Chintala, 2016): the unconditional baseline architecture.

The generator projects ``z`` to a 4x4 map and doubles the resolution with strided
transposed convolutions, halving the width each time (batch norm and ReLU between them,
tanh at the end); the discriminator mirrors it with strided convolutions, batch norm and
leaky ReLU. Weights start from N(0, 0.02) as in the paper. The paper's recipe (Adam,
lr 2e-4, beta1 0.5, the non-saturating loss) is the default; no spectral norm and no R1,
because batch norm in the discriminator is what the paper relies on.
"""
from __future__ import annotations

from artengine import Architecture, deferred_builder, hookimpl

ARTENGINE_HOOK_API = "1.0"


DCGAN = Architecture(
    name="dcgan",
    conditioning="none",
    description="DCGAN: unconditional; transposed-conv generator and conv discriminator "
    "with batch norm; non-saturating loss",
    # The networks live in dcgan_networks, imported when one is built: loading this plugin
    # (artengine plugins, verify) does not import torch.
    build_generator=deferred_builder("artengine_plugins.dcgan_networks:build_generator"),
    build_discriminator=deferred_builder("artengine_plugins.dcgan_networks:build_discriminator"),
    defaults={
        "ngf": 64,
        "ndf": 64,
        "z_dim": 100,
        "loss": "ns",
        "lr_g": 2e-4,
        "lr_d": 2e-4,
        "betas": [0.5, 0.999],
        "r1_gamma": 0.0,
        "augment": "translation,cutout",
    },
    presets={
        "demo": {"ngf": 32, "ndf": 32, "batch_size": 64, "lr_g": 2e-4, "lr_d": 2e-4},
    },
    reference="Radford, Metz & Chintala, Unsupervised Representation Learning with Deep "
    "Convolutional Generative Adversarial Networks, ICLR 2016",
)


@hookimpl
def artengine_architectures() -> list[Architecture]:
    return [DCGAN]
