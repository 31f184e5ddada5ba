"""Reading an image folder (the ``imagefolder`` dataset) vs a bare one-thread loop.

Run: python benchmarks/bench_imagefolder.py [--files 48] [--rounds 3] [--sizes 64 256]

A studio trains on, and the bias audit measures its training reference from, a folder of
camera-size photographs. This writes ``--files`` 12-megapixel JPEGs (quality 90, 4000x3000
and 3000x4000 alternating) made from the real photographs of ``photos.py``, upscaled with
a little sensor-like noise, then, in alternation, ``--rounds`` times per size:

- the engine: the ``imagefolder`` dataset opened at that training size (files read on one
  thread per core; a JPEG decoded at a reduced scale no smaller than 3x the size);
- bare: the same files in a loop on one thread, Pillow's full decode, RGB, the same
  centre crop and Lanczos resize (``imagefolder.square_resize``).

Prints milliseconds per file, the ratio (engine / bare time; lower is faster), how far
the engine's pixels are from the bare ones (mean and largest absolute difference, grey
levels), and how far each is from the ideal downscale (a Lanczos filter over the whole
full-size crop, with no reduction first): the bare loop's own crop + reduce + Lanczos is
an approximation of it too.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from photos import load_photos  # noqa: E402


def write_photos(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    photos = [image for _, image in load_photos()]
    paths = []
    for i in range(count):
        size = (4000, 3000) if i % 2 == 0 else (3000, 4000)
        big = photos[i % len(photos)].resize(size, Image.Resampling.BICUBIC)
        noisy = np.asarray(big, dtype=np.int16) + rng.integers(-3, 4, (size[1], size[0], 3), dtype=np.int16)
        path = folder / f"photo{i:03d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def ideal_resize(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()

    from artengine.plugins import get_plugins

    dataset = get_plugins().components("datasets")["imagefolder"]
    square_resize = sys.modules[dataset.open.__module__].square_resize
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-imagefolder-") as tmp:
        folder = Path(tmp)
        print(f"writing {args.files} 12-megapixel JPEGs ...", flush=True)
        paths = write_photos(folder, args.files)

        def bare(size: int) -> np.ndarray:
            return np.stack([np.asarray(square_resize(Image.open(p).convert("RGB"), size)) for p in paths])

        for size in args.sizes:
            engine_s, bare_s = [], []
            for _ in range(args.rounds):
                begin = time.perf_counter()
                opened = dataset.open(str(folder), image_size=size)
                engine_s.append(time.perf_counter() - begin)
                begin = time.perf_counter()
                reference = bare(size)
                bare_s.append(time.perf_counter() - begin)
            diff = np.abs(opened.pixels.astype(np.int16) - reference.astype(np.int16))
            ideal = np.stack([np.asarray(ideal_resize(Image.open(p).convert("RGB"), size)) for p in paths])
            engine_off = np.abs(opened.pixels.astype(np.int16) - ideal).mean()
            bare_off = np.abs(reference.astype(np.int16) - ideal).mean()
            e, b = statistics.median(engine_s), statistics.median(bare_s)
            rows.append({"training size": size, "engine ms/file": e / len(paths) * 1e3,
                         "bare ms/file": b / len(paths) * 1e3, "ratio (time)": e / b,
                         "rounds": " ".join(f"{x / y:.2f}" for x, y in zip(engine_s, bare_s)),
                         "mean |diff|": float(diff.mean()), "max |diff|": int(diff.max()),
                         "engine vs ideal": float(engine_off), "bare vs ideal": float(bare_off)})
    print_table(f"imagefolder: {args.files} 12-megapixel JPEGs", rows)


if __name__ == "__main__":
    main()
