"""Style export cost: `export_style` against the work it cannot avoid, side by side.

Baseline (bare): re-open the same procedural training images and compute their reference
hashes with `artengine.reference_hashes` plus the exported weights, nothing else. The
ratio shows what the package around it (registry rows, thumbnails, index, distribution,
model card, the load check) costs on top.

    .venv/bin/python benchmarks/bench_style_export.py [--images 400]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import print_table, side_by_side

from artengine import get_plugins, open_dataset, reference_hashes
from artengine.models import export_generator
from artengine.style_export import export_style
from artengine.testing import train_tiny_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-style-"))
    try:
        run = train_tiny_run(work / "run", steps=1, data_length=args.images)
        datasets = get_plugins().components("datasets")
        counter = iter(range(10**6))

        def engine() -> None:
            export_style(run, name="bench", out=work / f"pkg{next(counter)}")

        def bare() -> None:
            export_generator(run, work / "bare.safetensors")
            images = open_dataset("shapes", image_size=32, seed=0, datasets=datasets, length=args.images)
            for i in range(len(images)):
                reference_hashes(images[i].image)

        engine_s, bare_s = side_by_side(engine, bare, repeat=args.repeat)
        print_table("style export", [{
            "images": args.images,
            "export_style_s": round(engine_s, 3),
            "bare_hash_and_weights_s": round(bare_s, 3),
            "ms_per_image": round(1000 * engine_s / args.images, 2),
            "ratio": round(engine_s / bare_s, 2),
        }])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
