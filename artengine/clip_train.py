"""The shipped tiny CLIP: how it is trained, and how its zero-shot accuracy is measured.

artengine's offline default CLIP is an ordinary open_clip ``CLIP`` (a ViT image tower and
a transformer text tower with the standard BPE tokenizer), small enough to ship inside the
package and train on two CPU cores in a few minutes. It learns from the built-in ``shapes``
dataset (reached through the plugin registry, like any dataset): each image's caption is
its positive text. Two images with the same attributes (colour, shape, background) have
captions that describe both equally well, so the contrastive targets are spread over every
pair with identical attributes instead of pretending they are negatives.

``artengine clip train --out DIR`` re-creates the shipped model; ``artengine clip eval``
measures zero-shot attribute accuracy on a held-out seed with prompts unlike the captions.
The output folder is open_clip's own layout (``open_clip_config.json`` plus
``open_clip_model.safetensors``), so ``open_clip.create_model("local-dir:DIR")`` reads it too.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .io import atomic_write_bytes, atomic_write_json

log = logging.getLogger("artengine.clip")

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
TRAINING_RECORD_NAME = "training.json"

# CLIP's own normalisation constants (open_clip.constants.OPENAI_DATASET_MEAN/STD).
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)

#: Architecture of the tiny CLIP, in open_clip's config format: open_clip's ModifiedResNet
#: image tower (a small ViT learns shape far more slowly from scratch: in a 150-step
#: supervised probe it stayed at chance where this ResNet reached 82 %) and its standard
#: text transformer. 8.9 M parameters, most of them the token embedding of the standard
#: 49,408-entry BPE vocabulary.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": [2, 2, 2, 2], "width": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
    },
    "preprocess_cfg": {"mean": list(_MEAN), "std": list(_STD), "interpolation": "bicubic",
                       "resize_mode": "shortest"},
}

#: Zero-shot prompts deliberately unlike the dataset's captions (which read "a red star on
#: a dotted background", "red star, dotted backdrop", ...): other words, other order, one
#: attribute at a time.
EVAL_PROMPTS: dict[str, tuple[str, ...]] = {
    "colour": ("something coloured {}", "an image in {}", "the colour {}", "mostly {} paint"),
    "shape": ("an image showing a {}", "this is a {}", "the outline of a {}", "a {} icon"),
}


@dataclass
class TrainConfig:
    """How the tiny CLIP is trained. The defaults re-create the shipped model."""

    samples: int = 8192  # distinct training images, rendered once
    steps: int = 400
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 40
    drop_words: float = 0.4  # chance of leaving each attribute word out of a caption
    seed: int = 0
    data_seed: int = 0  # shapes seed of the training images (evaluation uses another)
    threads: int | None = None  # torch threads; None: torch's default


@dataclass
class ZeroShotResult:
    """Zero-shot accuracy per attribute on held-out images."""

    accuracy: dict[str, float]
    images: int
    seed: int
    prompts: dict[str, list[str]] = field(default_factory=dict)
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- data


def open_shapes(*, seed: int, length: int, image_size: int = 64) -> Any:
    """The built-in ``shapes`` dataset through the plugin registry (the core never imports
    plugin modules)."""
    from .plugins import get_plugins

    datasets = get_plugins().components("datasets")
    if "shapes" not in datasets:
        raise InputError("the tiny CLIP trains on the built-in 'shapes' dataset, but no loaded "
                         "plugin provides it (is ARTENGINE_PLUGINS excluding 'shapes'?)")
    return datasets["shapes"].open(None, image_size=image_size, seed=seed, length=length)


def render(dataset: Any, count: int, *, progress: Callable[[int], None] | None = None
           ) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """The first ``count`` samples as ``(N, H, W, 3)`` uint8, captions and attributes."""
    images, captions, attributes = [], [], []
    for i in range(count):
        sample = dataset[i]
        images.append(np.asarray(sample.image, dtype=np.uint8))
        captions.append(sample.caption)
        attributes.append(dict(sample.attributes))
        if progress is not None and (i + 1) % 256 == 0:
            progress(i + 1)
    return np.stack(images), captions, attributes


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW normalised like CLIP's preprocess."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Label-preserving augmentation: flips, quarter turns, and a low-resolution round
    trip (generated art is often 32 px upscaled). Never colour jitter: colour is a label."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    k = int(torch.randint(0, 4, (1,), generator=generator))
    x = torch.rot90(x, k, dims=(2, 3))
    if float(torch.rand(1, generator=generator)) < 0.3:
        size = x.shape[-1]
        small = F.interpolate(x, size=size // 2, mode="bilinear", antialias=True, align_corners=False)
        x = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return x


# ----------------------------------------------------------------------------- model


def build_tiny_clip(config: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """A randomly initialised tiny CLIP (an ``open_clip.CLIP``)."""
    import open_clip

    cfg = dict((config or TINY_CLIP_CONFIG)["model_cfg"])
    return open_clip.CLIP(**cfg)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # As in open_clip's training: no decay on gains, biases, embeddings and the scale.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def drop_attribute_words(caption: str, attributes: Mapping[str, str], drop: set[str]) -> str:
    """``caption`` without the words naming the attributes in ``drop`` (each attribute's
    value, where it appears as a whole word)."""
    text = caption
    for name in drop:
        text = re.sub(rf"\b{re.escape(attributes[name])}\b", " ", text)
    return re.sub(r"\s+([,.])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()


def _targets(values: torch.Tensor, mentioned: torch.Tensor) -> torch.Tensor:
    """``M[t, i]``: text ``t`` describes image ``i``, i.e. every attribute the text
    mentions has image ``i``'s value. ``values``: ``(B, A)`` attribute value ids of the
    batch; ``mentioned``: ``(B, A)`` booleans for the texts."""
    same = values[:, None, :] == values[None, :, :]  # (text, image, attribute)
    return (same | ~mentioned[:, None, :]).all(dim=2).float()


def train_tiny_clip(
    config: TrainConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a tiny CLIP on rendered shapes. Returns the model (eval mode) and a record of
    the run (config, loss curve, duration)."""
    import open_clip

    cfg = config or TrainConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    say = progress or (lambda _msg: None)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    started = time.perf_counter()
    dataset = open_shapes(seed=cfg.data_seed, length=cfg.samples, image_size=64)
    say(f"rendering {cfg.samples} training images")
    images, captions, attributes = render(dataset, cfg.samples)
    render_s = time.perf_counter() - started
    tokenizer = open_clip.SimpleTokenizer(
        context_length=TINY_CLIP_CONFIG["model_cfg"]["text_cfg"]["context_length"])
    names = sorted(attributes[0])
    vocab = {name: sorted({a[name] for a in attributes}) for name in names}
    values = torch.tensor([[vocab[n].index(a[n]) for n in names] for a in attributes])
    # An attribute can be left out of a caption when its value is a word of the caption.
    droppable = torch.tensor([[re.search(rf"\b{re.escape(a[n])}\b", c) is not None for n in names]
                              for a, c in zip(attributes, captions)])
    pixels = torch.from_numpy(images)

    model = build_tiny_clip()
    model.train()
    optimiser = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress_ = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress_))

    losses: list[list[float]] = []
    train_started = time.perf_counter()
    for step in range(cfg.steps):
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(0, cfg.samples, (cfg.batch_size,), generator=generator)
        # Captions with some attribute words left out teach attribute-level texts ("a
        # star", "something red"), the kind of prompt the bias audit classifies with.
        drop = droppable[idx] & (torch.rand(idx.shape[0], len(names), generator=generator) < cfg.drop_words)
        texts = [drop_attribute_words(captions[int(i)], attributes[int(i)],
                                      {names[a] for a in range(len(names)) if drop[row, a]})
                 for row, i in enumerate(idx)]
        x = _augment(_normalise(pixels[idx]), generator)
        image_features = model.encode_image(x, normalize=True)
        text_features = model.encode_text(tokenizer(texts), normalize=True)
        logits = model.logit_scale.exp() * text_features @ image_features.T  # (text, image)
        match = _targets(values[idx], ~drop)
        loss = 0.5 * (F.cross_entropy(logits, match / match.sum(1, keepdim=True))
                      + F.cross_entropy(logits.T, match.T / match.T.sum(1, keepdim=True)))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():  # CLIP clamps its temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        losses.append([step, loss.item()])
        if step % 25 == 0 or step == cfg.steps - 1:
            say(f"step {step + 1}/{cfg.steps} loss {losses[-1][1]:.3f}")
    model.eval()
    record = {
        "config": asdict(cfg),
        "architecture": TINY_CLIP_CONFIG,
        "parameters": sum(p.numel() for p in model.parameters()),
        "render_seconds": round(render_s, 1),
        "train_seconds": round(time.perf_counter() - train_started, 1),
        "threads": torch.get_num_threads(),
        "loss": losses[:: max(1, len(losses) // 100)] + [losses[-1]],
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
    }
    return model, record


# ----------------------------------------------------------------------------- saving


def save_tiny_clip(model: torch.nn.Module, out: str | Path, record: Mapping[str, Any] | None = None) -> Path:
    """Write ``out/`` in open_clip's local-dir layout: config JSON and fp16 safetensors.

    Half precision keeps the file under 20 MB; weights are cast back to float32 on load.
    """
    from safetensors.torch import save

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, save(state, metadata={"format": "pt", "producer": "artengine"}))
    atomic_write_json(folder / CONFIG_NAME, TINY_CLIP_CONFIG)
    if record is not None:
        atomic_write_json(folder / TRAINING_RECORD_NAME, dict(record))
    return folder


# ----------------------------------------------------------------------------- evaluation


def zero_shot_accuracy(
    clip: Any,
    *,
    images: int = 600,
    seed: int = 20_261_125,
    prompts: Mapping[str, Sequence[str]] | None = None,
) -> ZeroShotResult:
    """Zero-shot attribute accuracy of a :class:`artengine.clip.ClipModel` on ``images``
    held-out shapes (``seed`` differs from the training seed), classifying each attribute
    with an ensemble of ``prompts`` (default :data:`EVAL_PROMPTS`)."""
    prompts = {k: tuple(v) for k, v in (prompts or EVAL_PROMPTS).items()}
    dataset = open_shapes(seed=seed, length=images, image_size=64)
    pixels, _, attributes = render(dataset, images)
    embeddings = clip.encode_images(pixels)
    accuracy, confusion = {}, {}
    for name, templates in prompts.items():
        values = list(dataset.attributes[name])
        classes = np.stack([clip.encode_prompt_ensemble(templates, value) for value in values])
        predicted = (embeddings @ classes.T).argmax(axis=1)
        truth = np.array([values.index(a[name]) for a in attributes])
        accuracy[name] = float((predicted == truth).mean())
        matrix = np.zeros((len(values), len(values)), dtype=int)
        np.add.at(matrix, (truth, predicted), 1)
        confusion[name] = matrix.tolist()
    return ZeroShotResult(accuracy=accuracy, images=images, seed=seed,
                          prompts={k: list(v) for k, v in prompts.items()}, confusion=confusion)


def describe(result: ZeroShotResult) -> str:
    """One line per attribute, for the CLI."""
    return "\n".join(f"{name}: {acc * 100:.1f} % zero-shot accuracy on {result.images} held-out "
                     f"images (seed {result.seed})" for name, acc in result.accuracy.items())


def record_to_json(record: Mapping[str, Any]) -> str:
    return json.dumps(record, indent=2)
