"""How recognisable a shapes model's samples are, whatever its label: a shape classifier
(the evaluation's judge, ``artengine.evaluation.train_label_classifier``, 600 steps) is
trained on 2,500 real 32 px shapes images and asked about 512 samples of each run given.
Printed per run: the share of samples it names a shape for with >= 0.9 (and >= 0.7)
confidence, and the shares of the shapes it names (the real data holds each at 25 %); for
a model with shape labels (asked for each label in turn), the share named as asked.
Real held-out images are printed first as the yardstick.

Usage: python benchmarks/shape_recognition.py RUN [RUN ...]   (the newest checkpoint of each)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from artengine.evaluation import classifier_input, train_label_classifier
from artengine.models import load_model
from artengine.plugins import get_plugins
from artengine.training import load_training_data


def main() -> None:
    torch.set_num_threads(1)
    plugins = get_plugins()
    data = load_training_data("shapes", image_size=32, seed=0, plugins=plugins, length=3000,
                              label_attribute="shape", progress=False)
    judge = train_label_classifier(data.pixels[:2500], data.labels[:2500], len(data.classes))

    @torch.no_grad()
    def report(name: str, pixels, asked: list[str] | None = None) -> None:
        probabilities = torch.softmax(judge(classifier_input(pixels)), 1)
        confidence, named = probabilities.max(1)
        shares = np.bincount(named.numpy(), minlength=len(data.classes)) / len(named)
        following = ""
        if asked is not None and set(asked) <= set(data.classes):  # a shape-labelled model
            wanted = torch.tensor([data.classes.index(a) for a in asked])
            following = f"; the asked shape named for {float((named == wanted).float().mean()):.3f}"
        print(f"{name}: confidence >= 0.9 {float((confidence >= 0.9).float().mean()):.3f}, "
              f">= 0.7 {float((confidence >= 0.7).float().mean()):.3f}; named "
              + ", ".join(f"{c} {s:.0%}" for c, s in zip(data.classes, shares)) + following)

    report("real held-out images", data.pixels[2500:])
    for run in sys.argv[1:]:
        model = load_model(Path(run), plugins=plugins)
        latents = model.latents(1, range(512))
        names = list(model.info.class_names or [])
        if names:
            asked = [names[i % len(names)] for i in range(512)]
            report(f"{run} (step {model.info.step})", model.generate(latents, labels=asked), asked)
        else:
            report(f"{run} (step {model.info.step})", model.generate(latents))


if __name__ == "__main__":
    main()
