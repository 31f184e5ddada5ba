"""Quality metrics of a trained run: Fréchet distance, KID and label accuracy.

One feature pass per image set, shared by the metrics (as StyleGAN2-ADA's ``metrics/``):

* Fréchet distance (FD) between Gaussian fits of generated and real features, printed
  beside its *floor*, FD between two disjoint real halves of the same size: a generator can
  not be expected to beat the sampling noise of the metric itself.
* KID (Bińkowski et al., 2018): unbiased MMD² with the cubic polynomial kernel, averaged
  over random subsets; it has no bias from the sample size, so small sets compare fairly.
* Label accuracy of conditional and style models: a small classifier trained on real
  images of the run's data labels generated images; the share that matches the requested
  label. For style models also with styles taken from held-out real reference images.
  The classifier (the judge) is trained a fixed number of steps and its accuracy on
  held-out real images is stored with the results; below :data:`JUDGE_MIN_ACCURACY` the
  label accuracy is withheld (``None``, with the reason) rather than reported from a
  judge that cannot tell real images apart.

Feature extractors are pluggable (:func:`feature_encoder`): ``clip`` (the project's CLIP
image encoder, offline by default), ``classifier`` (the label classifier's penultimate
layer, the domain-specific choice for labelled data, like LeNet features for MNIST), or
the name of any registered :class:`artengine.FeatureExtractor`.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .audit import AuditContext, AuditItem
from .checkpoints import checkpoint_path, list_checkpoints, load_weights, save_weights
from .data import factor_sizes, joint_log_probs, label_factors
from .errors import InputError, ModelLoadError, check_seed
from .io import LoadedImage, atomic_write_json, sha256_file
from .models import fixed_threads, load_model
from .plugins import Plugins, get_plugins
from .runs import EVALUATION, read_run_config
from .training import load_training_data

log = logging.getLogger("artengine.evaluation")

CLASSIFIER_FILE = "label_classifier.safetensors"
CLASSIFIER_FORMAT = "artengine-label-classifier/1"


# ----------------------------------------------------------------------------- statistics


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets ``(N, D)``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, computed with
    symmetric eigen-decompositions in float64 (no complex square roots to clean up).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(s_a)
    middle = root_a @ s_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(np.square(mu_a - mu_b).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, *, subsets: int = 50, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation over subsets of the unbiased MMD² with the kernel
    ``k(x, y) = (x.y / d + 1)^3``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise InputError("KID needs at least 2 images per set")
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        mmd = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))) / (m * (m - 1)) - 2 * k_xy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------- label classifier


def part_names(classes: Sequence[str], label_attribute: str | None) -> list[str]:
    """Names of the parts of joint labels: the attributes of ``shape+colour``, else
    ``part 1``, ``part 2``..."""
    parts = label_factors(classes) or []
    named = str(label_attribute or "").split("+")
    return named if len(named) == len(parts) else [f"part {k + 1}" for k in range(len(parts))]


def part_accuracy(predicted: np.ndarray, truth: np.ndarray, factors: Sequence[int]) -> list[float]:
    """For joint labels: the share of images whose each part is predicted right."""
    got, want = np.unravel_index(predicted, tuple(factors)), np.unravel_index(truth, tuple(factors))
    return [float((g == w).mean()) for g, w in zip(got, want)]


class LabelClassifier(nn.Module):
    """A small CNN that tells the run's labels apart (for label accuracy and features).

    For joint labels (``factors``: the number of values of each part) its head scores each
    part's values and a label gets the sum of its parts' log-probabilities, so each part learns
    from every image (a flat head over 96 shape/colour/background combinations sees about 19
    images of each in a 2,000-image set)."""

    def __init__(self, num_classes: int, width: int = 16, factors: Sequence[int] | None = None) -> None:
        super().__init__()
        if factors is not None and math.prod(factors) != num_classes:
            raise ValueError(f"label factors {list(factors)} do not make {num_classes} classes")
        self.factors = list(factors) if factors else None
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, sum(self.factors) if self.factors else num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (for joint labels: log-probabilities over every combination, in the
        row-major order of the class names)."""
        scores = self.head(self.embed(x))
        return joint_log_probs(scores, self.factors) if self.factors else scores


def classifier_input(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (numpy) or NCHW (torch) to float NCHW in [-1, 1]: what the label
    classifier (:func:`train_label_classifier`) takes."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    return pixels.float().div(127.5).sub(1.0)


#: Optimiser steps of the label classifier: a fixed count (not epochs), so the judge is trained
#: the same amount whatever the size of the run's data, and the result is deterministic.
CLASSIFIER_STEPS = 600
#: Held-out accuracy on real images the judge must reach before its label accuracy of
#: generated images is reported: a weaker judge would understate (or blur) the figure.
JUDGE_MIN_ACCURACY = 0.95


def train_label_classifier(pixels: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                           steps: int = CLASSIFIER_STEPS, width: int = 16, seed: int = 0,
                           batch_size: int = 128, factors: Sequence[int] | None = None) -> LabelClassifier:
    """Train the classifier for ``steps`` optimiser steps on uint8 NCHW images (random
    shifts and flips against overfitting; one-cycle learning rate). Deterministic for a
    given seed and thread count."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LabelClassifier(num_classes, width, factors)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    model.train()
    batch_size = min(batch_size, len(pixels))
    order, position = torch.randperm(len(pixels), generator=generator), 0
    for _ in range(steps):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(pixels), generator=generator), 0
        idx = order[position:position + batch_size]
        position += batch_size
        x = classifier_input(pixels[idx])
        if torch.rand(1, generator=generator).item() < 0.5:
            x = x.flip(3)
        shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
        x = torch.roll(x, shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def classify(model: LabelClassifier, pixels: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Predicted label indices."""
    out = [model(classifier_input(pixels[i:i + batch_size])).argmax(1) for i in range(0, len(pixels), batch_size)]
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- features


#: A feature encoder maps uint8 images (N, H, W, 3) to float32 features (N, D).
Encoder = Callable[[np.ndarray], np.ndarray]


def feature_encoder(name: str, *, plugins: Plugins, classifier: LabelClassifier | None = None,
                    clip_model: str | None = None, clip_pretrained: str | None = None) -> tuple[Encoder, str]:
    """The encoder named ``name`` and a description of it for the results."""
    if name == "classifier":
        if classifier is None:
            raise InputError("--features classifier needs labelled data")

        @torch.no_grad()
        def encode_classifier(pixels: np.ndarray) -> np.ndarray:
            return np.concatenate([classifier.embed(classifier_input(pixels[i:i + 256])).numpy()
                                   for i in range(0, len(pixels), 256)])

        return encode_classifier, "classifier: label classifier trained on the run's real images (penultimate layer)"
    if name == "clip":
        try:
            from . import clip as clip_layer  # the project's CLIP layer
        except ImportError:
            raise InputError("--features clip: the CLIP layer (artengine.clip) is not available in "
                             "this installation; use --features classifier") from None
        model = clip_layer.load_clip(clip_model, clip_pretrained)

        def encode_clip(pixels: np.ndarray) -> np.ndarray:
            return np.asarray(model.encode_images(pixels), dtype=np.float32)

        described = getattr(model, "name", None) or clip_model or "shipped tiny CLIP"
        return encode_clip, f"clip: {described}"
    extractors = plugins.components("feature_extractors")
    if name in extractors:
        extractor = extractors[name]({}, AuditContext(clip_model=clip_model, clip_pretrained=clip_pretrained))

        def encode_plugin(pixels: np.ndarray) -> np.ndarray:
            from PIL import Image

            items = [AuditItem(key=str(i), image=LoadedImage(path=f"<image {i}>", rgb=Image.fromarray(p), alpha=None,
                                                             format="raw", mode="RGB", text={}))
                     for i, p in enumerate(pixels)]
            return np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in extractor.compute(items)])

        return encode_plugin, f"{name}: feature extractor plugin"
    known = ", ".join(["clip", "classifier", *sorted(extractors)])
    raise InputError(f"--features {name}: unknown feature extractor (known: {known})")


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvaluationOptions:
    """What ``artengine evaluate`` measures."""

    run: Path
    count: int = 5000  # generated images, and real images per half
    features: str = "clip"
    seed: int = 12345  # latent seed of the generated images
    classifier_steps: int = CLASSIFIER_STEPS
    clip_model: str | None = None
    clip_pretrained: str | None = None
    write: bool = True
    #: A kept checkpoint's step to judge instead of the newest one; its results go to
    #: ``evaluation-step-<step>.json`` so ``evaluation.json`` stays the newest checkpoint's.
    checkpoint: int | None = None


def _real_halves(pixels: torch.Tensor, labels: torch.Tensor, count: int, seed: int) -> tuple[np.ndarray, ...]:
    n = len(pixels)
    half = min(count, n // 2)
    if half < 10:
        raise InputError(f"the run's data holds {n} images; evaluation needs at least 20")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    a, b = order[:half], order[half:2 * half]
    to_nhwc = lambda idx: pixels[idx].permute(0, 2, 3, 1).numpy()  # noqa: E731
    return to_nhwc(a), labels[a].numpy(), to_nhwc(b), labels[b].numpy()


def _classifier_for(run_dir: Path, data, num_classes: int, steps: int) -> tuple[LabelClassifier, dict[str, Any]]:
    """Train the label classifier once per run (on the run's real data) and keep it."""
    path = run_dir / CLASSIFIER_FILE
    factors = factor_sizes(data.classes)
    key = {"data": data.record["spec"], "seed": data.record["seed"], "length": data.record["length"],
           "classes": data.classes, "steps": steps, "image_size": int(data.pixels.shape[-1])}
    if factors:
        key["factors"] = factors
    if path.is_file():
        try:
            tensors, record = load_weights(path)
            if record.get("format") == CLASSIFIER_FORMAT and record.get("key") == key:
                model = LabelClassifier(num_classes, factors=factors)
                model.load_state_dict({k: v for k, v in tensors.items()})
                return model.eval(), record["quality"]
        except (ModelLoadError, RuntimeError):
            log.warning("retraining the label classifier: %s is unusable", path)
    n = len(data.pixels)
    order = torch.from_numpy(np.random.default_rng(7).permutation(n))
    held = order[: max(1, n // 10)]
    train_idx = order[max(1, n // 10):]
    with fixed_threads(1):  # one thread: the same judge on any machine (and fastest on a busy one)
        model = train_label_classifier(data.pixels[train_idx], data.labels[train_idx], num_classes, steps=steps,
                                       factors=factors)
    predicted, truth = classify(model, data.pixels[held]), data.labels[held].numpy()
    quality = {"held_out_accuracy": float((predicted == truth).mean()), "held_out": len(held),
               "trained_on": len(train_idx), "steps": steps, "required_accuracy": JUDGE_MIN_ACCURACY}
    if factors:
        names = part_names(data.classes, data.record.get("label_attribute"))
        quality["held_out_accuracy_per_part"] = dict(zip(names, part_accuracy(predicted, truth, factors)))
    save_weights(path, model.state_dict(), {"format": CLASSIFIER_FORMAT, "key": key, "quality": quality})
    return model, quality


@dataclass
class _RealSide:
    """What a run's evaluation measures every checkpoint against: the real halves, their
    features, the floors and the judge. Built once per ``evaluate`` call."""

    classes: list[str]
    parts: list[str]  # names of the parts of joint labels, in the labels' order; [] for plain labels
    classifier: LabelClassifier | None
    classifier_quality: dict[str, Any] | None
    real_a: np.ndarray
    real_b: np.ndarray
    labels_b: np.ndarray
    encode: Callable[[np.ndarray], np.ndarray]
    described: str
    feats_a: np.ndarray
    fd_floor: float
    kid_floor: tuple[float, float]

    @property
    def judge_ok(self) -> bool:
        return (self.classifier_quality is not None
                and self.classifier_quality["held_out_accuracy"] >= JUDGE_MIN_ACCURACY)


def _real_side(options: EvaluationOptions, run_dir: Path, config: dict[str, Any], plugins: Plugins) -> _RealSide:
    spec = config["data"]
    data = load_training_data(spec["spec"], image_size=config["image_size"], seed=spec["seed"], plugins=plugins,
                              length=config.get("options", {}).get("data_length"),
                              label_attribute=config.get("options", {}).get("label_attribute"), progress=False)
    classifier, classifier_quality = (None, None)
    if data.classes:
        classifier, classifier_quality = _classifier_for(run_dir, data, len(data.classes), options.classifier_steps)
    real_a, _, real_b, labels_b = _real_halves(data.pixels, data.labels, options.count, seed=options.seed)
    encode, described = feature_encoder(options.features, plugins=plugins, classifier=classifier,
                                        clip_model=options.clip_model, clip_pretrained=options.clip_pretrained)
    feats_a, feats_b = encode(real_a), encode(real_b)
    return _RealSide(classes=list(data.classes), parts=part_names(data.classes, data.record.get("label_attribute")),
                     classifier=classifier, classifier_quality=classifier_quality,
                     real_a=real_a, real_b=real_b, labels_b=labels_b, encode=encode, described=described,
                     feats_a=feats_a, fd_floor=frechet_distance(feats_b, feats_a),
                     kid_floor=kernel_inception_distance(feats_b, feats_a, seed=options.seed))


def _measure(model, real: _RealSide, options: EvaluationOptions, run_dir: Path) -> dict[str, Any]:
    """The metrics of one generator against the real side."""
    conditional = model.info.conditioning != "none"
    classes = real.classes
    count = len(real.real_a)
    indices = range(count)
    latents = model.latents(options.seed, indices)
    requested = np.array([i % len(classes) for i in indices]) if conditional else None
    generated = model.generate(latents, labels=requested.tolist()) if conditional else model.generate(latents)
    feats_gen = real.encode(generated)
    fd = frechet_distance(feats_gen, real.feats_a)
    kid, kid_std = kernel_inception_distance(feats_gen, real.feats_a, seed=options.seed)
    results: dict[str, Any] = {
        "run": str(run_dir),
        "architecture": model.info.architecture,
        "step": model.info.step,
        "weights_sha256": model.info.weights_sha256,
        "features": real.described,
        "count": count,
        "fd": fd,
        "fd_floor": real.fd_floor,
        "fd_ratio": fd / real.fd_floor if real.fd_floor > 0 else math.inf,
        "kid": kid,
        "kid_std": kid_std,
        "kid_floor": real.kid_floor[0],
        "kid_floor_std": real.kid_floor[1],
        "seed": options.seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    quality = real.classifier_quality
    if real.classifier is not None:
        results["classifier"] = quality
    if conditional and real.classifier is not None and not real.judge_ok:
        reason = (f"the label classifier reaches {quality['held_out_accuracy']:.1%} on "
                  f"{quality['held_out']} held-out real images, below the "
                  f"{JUDGE_MIN_ACCURACY:.0%} needed to judge generated images")
        results["label_accuracy"] = None
        results["label_accuracy_unavailable"] = reason
        if model.info.conditioning == "style":
            results["reference_label_accuracy"] = None
    by_part = (quality or {}).get("held_out_accuracy_per_part")
    judged = conditional and real.classifier is not None and (real.judge_ok or bool(by_part))
    predicted = classify(real.classifier, generated) if judged else None
    if conditional and real.judge_ok:
        results["label_accuracy"] = float((predicted == requested).mean())
        results["label_accuracy_per_label"] = {
            name: float((predicted[requested == i] == i).mean()) for i, name in enumerate(classes)}
    if judged and by_part:
        # Each part the judge tells apart on real images is judged on its own, so a model
        # whose judge misses one part (a subtle background) is still measured on the rest.
        # Parts go by name: a stored judge's record comes back with its keys sorted.
        accuracies = dict(zip(real.parts, part_accuracy(predicted, requested, factor_sizes(classes))))
        results["label_accuracy_per_part"] = {
            name: (accuracies[name] if by_part[name] >= JUDGE_MIN_ACCURACY else None) for name in real.parts}
    if model.info.conditioning == "style" and real.judge_ok:
        with fixed_threads(model.threads):
            styles = torch.stack([model.style_from_image(img) for img in real.real_b])
        from_refs = model.generate(model.latents(options.seed + 1, indices), styles=styles)
        results["reference_label_accuracy"] = float((classify(real.classifier, from_refs) == real.labels_b).mean())
    return results


def evaluate_run(options: EvaluationOptions, plugins: Plugins | None = None) -> dict[str, Any]:
    """Measure a run's EMA generator against the run's own training data; write
    ``evaluation.json`` into the run (unless ``write`` is False) and return the results."""
    check_seed(options.seed)
    plugins = plugins or get_plugins()
    run_dir = Path(options.run)
    config = read_run_config(run_dir)
    model = load_model(_checkpoint_file(run_dir, options.checkpoint), plugins=plugins)
    results = _measure(model, _real_side(options, run_dir, config, plugins), options, run_dir)
    if options.checkpoint is not None:
        results["checkpoint"] = options.checkpoint
    if options.write:
        atomic_write_json(evaluation_path(run_dir, options.checkpoint), results)
    return results


#: Label accuracy a checkpoint must reach to be chosen on image quality (FD) among others.
LABEL_TARGET = 0.95


def label_score(row: dict[str, Any]) -> float | None:
    """A checkpoint's label figure: its label accuracy, or for joint labels whose full label
    the judge cannot tell, the lowest accuracy among the parts it can (None: neither)."""
    if row.get("label_accuracy") is not None:
        return float(row["label_accuracy"])
    parts = [v for v in (row.get("label_accuracy_per_part") or {}).values() if v is not None]
    return float(min(parts)) if parts else None


def best_checkpoint(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row to keep among per-checkpoint results. Where the judge gives label figures
    (:func:`label_score`): the lowest FD ratio among rows reaching :data:`LABEL_TARGET`, or,
    if none does, the highest label figure (a lower FD ratio breaking ties). Models without
    labels (or rows without a label figure): the lowest FD ratio."""
    if not rows:
        return None
    scored = [(r, label_score(r)) for r in rows]
    scored = [(r, score) for r, score in scored if score is not None]
    meeting = [r for r, score in scored if score >= LABEL_TARGET]
    if meeting:
        return min(meeting, key=lambda r: (r["fd_ratio"], -r["step"]))
    if scored:
        return max(scored, key=lambda rs: (rs[1], -rs[0]["fd_ratio"], rs[0]["step"]))[0]
    return min(rows, key=lambda r: (r["fd_ratio"], -r["step"]))


def best_rule(best: dict[str, Any]) -> str:
    """How :func:`best_checkpoint` chose ``best``, in words."""
    score = label_score(best)
    if score is None:
        return "lowest FD ratio"
    if best.get("label_accuracy") is not None:
        reached, highest = "label accuracy", "label accuracy"
    else:
        parts = ", ".join(k for k, v in best["label_accuracy_per_part"].items() if v is not None)
        reached = f"every judged part of the label ({parts})"
        highest = f"accuracy of the weakest judged part of the label ({parts})"
    if score >= LABEL_TARGET:
        return f"lowest FD ratio with {reached} >= {LABEL_TARGET:.0%}"
    return f"highest {highest}, then lowest FD ratio (no checkpoint reached {LABEL_TARGET:.0%})"


def evaluate_checkpoints(options: EvaluationOptions, plugins: Plugins | None = None,
                         on_result: Callable[[dict[str, Any], bool], None] | None = None,
                         on_start: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Measure every kept checkpoint of a run with one real side (data, judge, real
    features and floors are computed once). Each checkpoint's results go to
    ``evaluation-step-<step>.json``; one already there with the same weights, count, seed,
    features and judge is reused. The summary, with the best checkpoint
    (:func:`best_checkpoint`), goes to ``evaluation-checkpoints.json``. ``on_result(row,
    reused)`` is called as each checkpoint is done; ``on_start(kept)`` once the run and the
    options are checked and the real side is ready, before the first checkpoint."""
    check_seed(options.seed)
    plugins = plugins or get_plugins()
    run_dir = Path(options.run)
    config = read_run_config(run_dir)
    kept = list_checkpoints(run_dir)
    if not kept:
        raise InputError(f"{run_dir}: the run has no kept checkpoint to evaluate")
    real = _real_side(options, run_dir, config, plugins)
    if on_start:
        on_start(len(kept))
    rows = []
    for step, path in kept:
        if not path.is_file():  # pruned by the run's trainer since the listing
            continue
        target = evaluation_path(run_dir, step)
        previous = _reusable(target, path, real, options)
        if previous is not None:
            rows.append(previous)
            if on_result:
                on_result(previous, True)
            continue
        results = _measure(load_model(path, plugins=plugins), real, options, run_dir)
        results["checkpoint"] = step
        if options.write:
            atomic_write_json(target, results)
        rows.append(results)
        if on_result:
            on_result(results, False)
    best = best_checkpoint(rows)
    if best is None:
        raise InputError(f"{run_dir}: every kept checkpoint was pruned by the training run while being "
                         "evaluated; run the command again")
    summary = {
        "run": str(run_dir),
        "features": real.described,
        "count": len(real.real_a),
        "seed": options.seed,
        "rule": best_rule(best),
        "best": {"step": best["step"], "checkpoint": str(checkpoint_path(run_dir, best["step"]))},
        "checkpoints": [{k: r.get(k) for k in _SUMMARY_KEYS if k in r} for r in rows],
    }
    if options.write:
        atomic_write_json(run_dir / EVALUATION_CHECKPOINTS, summary)
    return summary


EVALUATION_CHECKPOINTS = "evaluation-checkpoints.json"
_SUMMARY_KEYS = ("step", "weights_sha256", "fd", "fd_ratio", "kid", "label_accuracy", "label_accuracy_per_label",
                 "label_accuracy_per_part", "reference_label_accuracy", "label_accuracy_unavailable")


def _reusable(target: Path, checkpoint: Path, real: _RealSide, options: EvaluationOptions) -> dict[str, Any] | None:
    """Results stored for a checkpoint by an earlier call that measured it the same way."""
    if not target.is_file():
        return None
    try:
        doc = json.loads(target.read_text())
    except (OSError, ValueError):
        return None
    same = (doc.get("weights_sha256") == sha256_file(checkpoint) and doc.get("count") == len(real.real_a)
            and doc.get("seed") == options.seed and doc.get("features") == real.described
            and doc.get("classifier") == real.classifier_quality)
    return doc if same else None


def evaluation_path(run_dir: Path, checkpoint: int | None = None) -> Path:
    """Where ``evaluate`` stores its results: ``evaluation.json`` for the newest checkpoint,
    ``evaluation-step-<step>.json`` for one chosen with ``--checkpoint``."""
    return run_dir / (EVALUATION if checkpoint is None else f"evaluation-step-{checkpoint:09d}.json")


def _checkpoint_file(run_dir: Path, step: int | None) -> Path:
    """The run itself (its newest good checkpoint), or the checkpoint of ``step``."""
    if step is None:
        return run_dir
    path = checkpoint_path(run_dir, step)
    if not path.is_file():
        kept = ", ".join(str(s) for s, _ in list_checkpoints(run_dir)) or "none"
        raise InputError(f"{run_dir}: --checkpoint {step}: no checkpoint of that step (kept: {kept})")
    return path
