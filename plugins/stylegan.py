"""Style-conditioned GAN after StyleGAN2 (Karras et al., 2020), with styles from a label or
from a reference image.

Generator: a *mapping network* turns ``z`` and a *style code* into the intermediate latent
``w``; a *synthesis network* starts from a learned constant and applies *modulated
convolutions* with weight demodulation (each layer's input channels are scaled by an affine
map of ``w``, then each output channel is renormalised), upsampling 2x per block, with the
"skip" output (a modulated 1x1 ``toRGB`` per resolution, summed). Layers use the
equalised learning rate. Noise inputs are left out: an image must be a function of its
latent and style alone.

The style code comes from one of two places, both trained jointly with the generator:
a *style table* (one learned code per style label) and a *style encoder* (a small
convolutional network reading a reference image). The trainer styles part of each batch
from real reference images and pulls the encoder's code of an image towards its label's
code, so both paths land in one style space.

Discriminator: the StyleGAN2 residual discriminator, conditioned by projection on the style
label (as in StyleGAN2-ADA); regularised with R1, no spectral norm. StyleGAN2's minibatch
standard deviation layer before the 4x4 convolution is an option (``mbstd_group``).
"""
from __future__ import annotations

from artengine import Architecture, deferred_builder, hookimpl

ARTENGINE_HOOK_API = "1.0"


STYLEGAN = Architecture(
    name="stylegan",
    conditioning="style",
    description="style-conditioned GAN (StyleGAN2-style): mapping network, modulated "
    "convolutions with demodulation; style from a label or a reference image; R1",
    # The networks live in stylegan_networks, imported when one is built: loading this plugin
    # (artengine plugins, verify) does not import torch.
    build_generator=deferred_builder("artengine_plugins.stylegan_networks:build_generator"),
    build_discriminator=deferred_builder("artengine_plugins.stylegan_networks:build_discriminator"),
    defaults={
        "z_dim": 64,
        "w_dim": 128,
        "style_dim": 64,
        "mapping_layers": 4,
        "g_ch_base": 1024,
        "g_ch_max": 128,
        "d_ch_base": 1024,
        "d_ch_max": 128,
        "e_ch_base": 256,
        "e_ch_max": 64,
        "cmap_dim": 128,
        "loss": "ns",
        "lr_g": 2e-3,
        "lr_d": 2e-3,
        "betas": [0.0, 0.99],
        "r1_gamma": 0.05,
        "r1_every": 16,
        "augment": "translation,cutout",
        "mbstd_group": 0,
    },
    presets={
        "demo": {"g_ch_base": 1024, "g_ch_max": 128, "d_ch_base": 1024, "d_ch_max": 128, "batch_size": 32},
        # Half-width networks (64 channels at most: a step costs about a quarter of the demo's)
        # with the auxiliary classifier loss and translation only (cutout hides half a
        # shape), and the discriminator at 3x the generator's learning rate: with the
        # equalised learning rate its weights are N(0, 1), and at 2e-3 its class head took
        # 7,500 steps to pass 90 % on real 32 px shapes, at 6e-3 2,000-2,500. Label accuracy
        # then reached 99.6 % at 3,000 steps (seed 0) and 96.0 % at 4,000 (seed 1); it swings
        # later, so pick the best kept checkpoint (docs/training.md, "Quality targets").
        "quality": {"g_ch_base": 512, "g_ch_max": 64, "d_ch_base": 512, "d_ch_max": 64, "batch_size": 32,
                    "augment": "translation", "aux_weight": 1.0, "lr_d": 6e-3},
    },
    reference="Karras et al., Analyzing and Improving the Image Quality of StyleGAN, CVPR 2020; "
    "Karras et al., Training Generative Adversarial Networks with Limited Data, NeurIPS 2020",
)


@hookimpl
def artengine_architectures() -> list[Architecture]:
    return [STYLEGAN]
