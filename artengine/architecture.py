"""Architectures: what an architecture plugin provides to the trainer and to generation.

An architecture plugin registers :class:`Architecture` components through
``artengine_architectures``. The engine owns everything around the networks (the training
loop, losses, EMA, augmentation, checkpoints, generation); an architecture provides two
factories and its preferred hyper-parameters.

The networks follow one calling convention, so the trainer and :mod:`artengine.models`
stay generic:

* generator: ``G(z, labels=None, styles=None) -> images`` in ``[-1, 1]``, shape
  ``(N, 3, S, S)``, with ``G.z_dim``. Conditioning ``"label"`` passes ``labels`` (int64
  class indices); conditioning ``"style"`` passes ``styles`` (float codes) and the
  generator also offers ``style_from_labels(labels)`` and ``style_from_images(images)``
  (images in ``[-1, 1]``), both returning codes of shape ``(N, G.style_dim)``.
* discriminator: ``D(images, labels=None) -> logits`` of shape ``(N,)``; conditional
  discriminators use ``labels`` (for a style model, the style label of the image).
* auxiliary classifier (optional): a discriminator built from a config with
  ``aux_weight > 0`` also offers ``D.forward_with_classes(images, labels) -> (logits,
  class_logits)``, the same logits plus class scores ``(N, num_classes)`` from a class head
  on its own features. The trainer then adds the AC-GAN loss (Odena et al., 2017): cross
  entropy of the real images' labels for D, of the requested labels for G. With
  ``aux_weight`` 0 the head is not built, so older runs' checkpoints still load.

* minibatch standard deviation (optional): discriminators built from a config with
  ``mbstd_group > 0`` append :func:`minibatch_std`'s feature map before their last block
  (StyleGAN's remedy for mode dropping: the discriminator sees how varied a group of
  images is, so a generator that makes every image alike is told apart). The
  discriminator's output for an image then depends on the other images of its group;
  the trainer runs real and generated images in separate passes, so a group never mixes
  them. With ``mbstd_group`` 0 (or absent, in older runs) the layer is not built.

Generators must compute each sample independently of the others in the batch (no batch
statistics in eval mode, no cross-sample layers), because generation promises that image
``i`` depends only on its own latent and conditioning.
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .data import joint_log_probs

Conditioning = Literal["none", "label", "style"]
CONDITIONINGS: tuple[str, ...] = ("none", "label", "style")

#: Hyper-parameters the trainer understands, with the engine's defaults. An architecture's
#: ``defaults`` override these; a user's options override both.
TRAINER_DEFAULTS: dict[str, Any] = {
    "z_dim": 128,
    "batch_size": 64,
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "betas": [0.5, 0.999],
    "loss": "ns",  # "ns" (non-saturating logistic) or "hinge"
    "d_steps": 1,  # discriminator steps per generator step
    "r1_gamma": 0.0,  # R1 penalty weight on real images (0: off)
    "r1_every": 16,  # lazy R1: apply every k discriminator steps, scaled by k
    "ema_kimg": 10.0,  # EMA half-life in thousands of images (StyleGAN2-ADA)
    "ema_rampup": 0.05,  # half-life <= rampup x images seen so far (early steps)
    "augment": "translation,cutout",  # DiffAugment policy ("" for none)
    "style_ref_prob": 0.5,  # style models: share of the batch styled from a reference image
    "style_align": 1.0,  # style models: weight of the encoder-to-label alignment loss
    "aux_weight": 0.0,  # conditional models: weight of the auxiliary classifier (AC-GAN) loss
}


def minibatch_std(x: Any, group: int) -> Any:
    """Append one feature map to ``x`` ``(N, C, H, W)``: the standard deviation of each
    feature over a group of ``group`` consecutive images, averaged over features and
    pixels, the same value for every image of the group (Karras et al., 2018). When
    ``group`` does not divide ``N``, the largest divisor of ``N`` below it is used.
    Consecutive groups keep a multi-process run equal to one process whenever each
    process's share of the batch divides by ``group``."""
    import torch

    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    y = x.reshape(n // g, g, c, h, w).float()
    y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1).add(1e-8).sqrt()  # (N/g, C, H, W)
    y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # (N/g,)
    y = y.repeat_interleave(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, y], dim=1)


class ClassHeadDiscriminator:
    """``forward`` and ``forward_with_classes`` for a discriminator (an ``nn.Module`` listing
    this class first among its bases) that defines ``_features(images) -> h``,
    ``_logits(h, labels) -> (N,)`` and ``classes``: a class head applied to ``h``, or
    ``None`` when the run's ``aux_weight`` is 0 (see the module doc). A discriminator with
    ``class_factors`` (joint labels, see :func:`artengine.data.label_factors`) has a head
    that scores each part's values; its class scores are then joint log-probabilities."""

    classes: Any

    def forward(self, images: Any, labels: Any = None) -> Any:
        return self._logits(self._features(images), labels)  # type: ignore[attr-defined]

    def forward_with_classes(self, images: Any, labels: Any = None) -> tuple[Any, Any]:
        """The logits and the class head's scores ``(N, num_classes)`` (``aux_weight > 0``)."""
        if self.classes is None:
            raise ValueError(f"{type(self).__name__} was built without a class head (aux_weight 0)")
        h = self._features(images)  # type: ignore[attr-defined]
        scores = self.classes(h)
        factors = getattr(self, "class_factors", None)
        if factors:  # a head per part of joint labels: log-probabilities of every joint label
            scores = joint_log_probs(scores, factors)
        return self._logits(h, labels), scores  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Architecture:
    """A GAN architecture registered through ``artengine_architectures``.

    ``build_generator(config)`` and ``build_discriminator(config)`` receive one plain,
    JSON-serialisable dict: the architecture's ``defaults`` updated with the user's
    options, plus ``image_size``, ``z_dim``, ``num_classes`` (0 when unconditional) and
    ``arch``. The same dict is stored in the run's ``config.json``, so a model can be
    rebuilt from it alone. ``defaults`` holds network widths and the architecture's
    preferred trainer settings (keys of :data:`TRAINER_DEFAULTS`, e.g. ``loss``,
    ``r1_gamma``, learning rates).
    """

    name: str
    conditioning: Conditioning
    description: str
    build_generator: Callable[[Mapping[str, Any]], Any]
    build_discriminator: Callable[[Mapping[str, Any]], Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    image_sizes: tuple[int, ...] = (32, 64)
    #: Named recipes (partial configs), e.g. ``"demo"``: the best short-budget settings.
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The paper the architecture follows, for model cards and ``artengine plugins``.
    reference: str = ""

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(
                f"architecture {self.name!r}: conditioning must be one of {CONDITIONINGS}, "
                f"got {self.conditioning!r}"
            )


def deferred_builder(target: str) -> Callable[[Mapping[str, Any]], Any]:
    """A ``build_generator`` or ``build_discriminator`` that imports ``"module:function"``
    when it is first called, then calls it with the config. Every installed plugin is
    imported whenever the engine starts (for ``artengine verify`` and ``artengine plugins``
    too): an architecture registered with deferred builders imports its networks, and the
    framework they need (torch), only when a network is built."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"deferred builder {target!r}: expected 'package.module:function'")
    return functools.partial(_build_deferred, module, name)


def _build_deferred(module: str, name: str, config: Mapping[str, Any]) -> Any:
    try:
        build = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:  # ValueError: the callers' "cannot build" line
        raise ValueError(f"deferred builder '{module}:{name}': cannot import it ({type(exc).__name__}: {exc})") from None
    return build(config)


def cpu_layout(value: Any, device: Any) -> Any:
    """A network (``nn.Module``) or a batch of images (a 4-D tensor) in the memory layout
    the engine runs networks in on ``device``: on CPU, channels-last (NHWC), where oneDNN's
    convolutions are faster (measured at 32 and 64 px, one thread: generator inference
    1.2-2x, a cgan or stylegan training step 1.2x, the dcgan step unchanged; the shipped
    tiny CLIP's encoder 1.46x); outputs differ from the default layout's by float rounding
    only (at most 3e-5 measured). Elsewhere ``value`` is returned unchanged. The layout is
    not part of the weights: checkpoints store contiguous tensors, so runs and weight files
    are the same whichever layout wrote or reads them."""
    import torch

    if torch.device(device).type == "cpu":
        value = value.to(memory_format=torch.channels_last)
    return value
