"""Which colours and backgrounds a shapes model draws, beside its training images.

A mode-dropping check for runs trained on the built-in ``shapes`` data: the colour of an
image is the hue of its 20 % most saturated pixels (the shape's), named by the nearest of
the six colour centres (grey when unsaturated); its background counts as textured when
more than 6 % of the neighbour differences in the outer ring exceed 12 levels (stripes,
dots). On real images the colour agrees with the drawn colour for about 85 % of images
(neighbouring hues such as red and orange are sometimes confused) and the texture for
about 99 %, so the counts are for comparing sets, not for labelling single images.

Usage: python benchmarks/shape_modes.py RUN [RUN/checkpoints/step-N.safetensors ...] [--count 1000]
(without checkpoints: the run's newest one)
"""
from __future__ import annotations

import argparse
import colorsys
import json
from pathlib import Path

import numpy as np
import torch

from artengine.checkpoints import load_latest_checkpoint, load_weights, unpack_module
from artengine.plugins import get_plugins
from artengine.training import build_networks, load_training_data

CENTRES = {"red": 0, "orange": 25, "yellow": 50, "green": 134, "blue": 224, "purple": 282}


def colour_of(image: np.ndarray) -> str:
    x = image.reshape(-1, 3).astype(np.float32) / 255
    high, low = x.max(1), x.min(1)
    saturation = (high - low) / np.maximum(high, 1e-6)
    r, g, b = x[saturation > np.quantile(saturation, 0.8)].mean(0)
    if max(r, g, b) - min(r, g, b) < 0.12:
        return "grey"
    hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360
    return min(CENTRES, key=lambda k: min(abs(hue - CENTRES[k]), 360 - abs(hue - CENTRES[k])))


def background_of(image: np.ndarray) -> str:
    grey = image.astype(np.float32).mean(2)
    size, margin = grey.shape[0], grey.shape[0] // 5
    ring = np.ones_like(grey, bool)
    ring[margin:size - margin, margin:size - margin] = False
    steps = np.concatenate([np.abs(np.diff(grey, axis=1))[ring[:, 1:]], np.abs(np.diff(grey, axis=0))[ring[1:, :]]])
    return "textured" if (steps > 12).mean() > 0.06 else "smooth"


def shares(names) -> dict[str, float]:
    names = list(names)
    return {k: round(100 * names.count(k) / len(names), 1) for k in sorted(set(names))}


def generated(checkpoint: Path | None, run: Path, count: int) -> tuple[int, np.ndarray]:
    if checkpoint is None:
        checkpoint, tensors, record = load_latest_checkpoint(run)
    else:
        tensors, record = load_weights(checkpoint)
    arch = get_plugins().component("architectures", record["run"]["architecture"])
    G, _ = build_networks(arch, record["run"]["config"])
    unpack_module("G_ema", G, tensors, checkpoint)
    G.eval()
    torch.manual_seed(0)
    classes = max(1, int(record["run"]["config"].get("num_classes", 0)))
    out = []
    with torch.no_grad():
        for start in range(0, count, 32):
            n = min(32, count - start)
            x = G(torch.randn(n, G.z_dim), torch.arange(start, start + n) % classes)
            out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return int(record["step"]), np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("checkpoints", type=Path, nargs="*")
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = json.loads((args.run / "config.json").read_text())
    spec = config["data"]
    data = load_training_data(spec["spec"], image_size=config["image_size"], seed=spec["seed"], plugins=get_plugins(),
                              length=config.get("options", {}).get("data_length"), progress=False)
    real = data.pixels[:args.count].permute(0, 2, 3, 1).numpy()
    print("real", "colour %", shares(map(colour_of, real)), "background %", shares(map(background_of, real)))
    for checkpoint in args.checkpoints or [None]:
        step, images = generated(checkpoint, args.run, args.count)
        print(f"step {step}", "colour %", shares(map(colour_of, images)),
              "background %", shares(map(background_of, images)))


if __name__ == "__main__":
    main()
