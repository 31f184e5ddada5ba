"""Generation pipeline throughput against its stages measured alone (issue 7).

Run: python benchmarks/bench_generation.py [--count 64] [--run RUN]

It trains a small class-conditional model when --run is not given, makes keys in a
temporary folder, then measures in one process:
- each stage alone on the same images: bare generator inference, upsample + watermark,
  per-image audits (the publication policy with a registry), manifest + PNG encode,
  write + post-write check;
- the whole pipeline (``artengine.generation.generate``, one worker).
Figures: pipeline images/s divided by the slowest stage's images/s (target >= 0.8), and
the generator's share (generator time inside the pipeline vs bare inference, target
>= 0.95 of bare throughput, measured as bare seconds / in-pipeline generator seconds).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--run", type=Path)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from artengine import generation
    from artengine.plugins import get_plugins
    from artengine.provenance import MANIFEST_KEY, canonical_json, check_written, init_keys
    from artengine.io import atomic_write_bytes
    from artengine.training import TrainOptions, train

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    os.environ["ARTENGINE_KEYS"] = str(tmp / "keys")
    os.environ["ARTENGINE_LEDGER"] = str(tmp / "ledger.sqlite")
    os.environ["SOURCE_DATE_EPOCH"] = "1790000000"
    init_keys(tmp / "keys")
    run = args.run
    if run is None:
        run = tmp / "run"
        train(TrainOptions(out=run, arch="cgan", data="shapes", steps=2, batch_size=16, data_length=64,
                           label_attribute="colour", progress=False, checkpoint_every=2, sample_every=2))
    # A registry of a few references, so the near-duplicate audit really searches.
    from artengine.registry import add_to_registry
    refs = tmp / "refs"
    refs.mkdir()
    for i in range(16):
        Image.new("RGB", (64, 64), (i * 15, 255 - i * 15, 80)).save(refs / f"r{i}.png")
    add_to_registry(tmp / "refs.db", [refs], licence="bench", source="bench")

    plugins = get_plugins()
    options = generation.GenerateOptions(model=str(run), count=args.count, out=tmp / "job", policy="publication",
                                         registries=[str(tmp / "refs.db")], progress=False, chunk=8)
    spec = generation.build_spec(options, plugins)
    spec["job_id"] = generation.job_id(spec)
    producer = generation.Producer(spec, plugins)
    indices = list(range(args.count))
    chunks = [indices[s:s + 8] for s in range(0, len(indices), 8)]

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    # Stage: bare generator inference.
    producer.pixels(indices[:8])  # warm
    t_gen = timed(lambda: [producer.pixels(c) for c in chunks])
    raw = [px for c in chunks for px in producer.pixels(c)]

    # Stage: upsample + watermark.
    size = spec["size"]
    from artengine.provenance import derive_payload

    def mark_all():
        out = []
        for i, px in zip(indices, raw):
            img = Image.fromarray(px).resize((size, size), Image.Resampling.LANCZOS)
            out.append(producer.scheme.embed(img, derive_payload(producer.secret, i)).convert("RGB"))
        return out
    marked: list = []
    t_mark = timed(lambda: marked.extend(mark_all()))

    # Stage: per-image audits.
    from artengine.audit import AuditItem
    from artengine.io import LoadedImage

    def audit_all():
        for s in range(0, len(marked), 8):
            items = [AuditItem(key=f"{s + j}", image=LoadedImage(path="", rgb=m, alpha=None, format="PNG",
                                                                  mode="RGB", text={}))
                     for j, m in enumerate(marked[s:s + 8])]
            producer.runner.check_images(items)
    t_audit = timed(audit_all)

    # Stage: manifest + PNG encode, then write + post-write check (the writer).
    produced = producer.produce(indices[:8])
    manifest = produced[0].manifest
    from artengine.io import encode_image

    t_encode = timed(lambda: [encode_image(m, text={MANIFEST_KEY: canonical_json(manifest).decode()},
                                           compress_level=generation.COMPRESS_LEVEL) for m in marked])
    write_dir = tmp / "writes"
    write_dir.mkdir()
    png = produced[0].png

    def write_all():
        for i in indices:
            path = write_dir / f"{i}.png"
            atomic_write_bytes(path, png)
            check_written(path, manifest, scheme=producer.scheme)
    t_write = timed(write_all)

    # The whole pipeline.
    gen_seconds = {"t": 0.0}
    original = generation.Producer.pixels

    def counting(self, idx):
        start = time.perf_counter()
        try:
            return original(self, idx)
        finally:
            gen_seconds["t"] += time.perf_counter() - start
    generation.Producer.pixels = counting
    t_pipe = timed(lambda: generation.generate(options, plugins))
    generation.Producer.pixels = original

    n = args.count
    stages = {"generator (bare)": t_gen, "upsample + watermark": t_mark, "audits": t_audit,
              "manifest + PNG encode": t_encode, "write + post-write check": t_write}
    slowest = max(stages, key=stages.get)
    rows = [{"stage": k, "images/s": n / v} for k, v in stages.items()]
    rows.append({"stage": "full pipeline", "images/s": n / t_pipe})
    print_table(f"generation stages, {n} images at {size} px, 1 worker", rows)
    print_table("generation ratios", [
        {"figure": f"pipeline / slowest stage ({slowest})", "ratio": (n / t_pipe) / (n / stages[slowest]),
         "target": ">= 0.8"},
        {"figure": "generator in pipeline / bare", "ratio": t_gen / max(gen_seconds["t"], 1e-9),
         "target": ">= 0.95"},
    ])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
