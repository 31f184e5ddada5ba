"""Generation pipeline throughput against its stages measured alone (issue 7).

Run: python benchmarks/bench_generation.py [--count 128] [--run RUN] [--workers-2]

It trains a tiny class-conditional model when --run is not given (the benchmark is about
the pipeline, not image quality), makes keys in a temporary folder, registers a few
references so the near-duplicate audit really searches, and runs one warm-up job so the
bias audit's training reference is measured and cached (a one-off cost per run folder,
shown as the warm-up job's time). Then, in one process, one thread for torch:

- each stage alone, sequentially, on the same images: bare generator inference; upsample
  + watermark; the per-image audits of the publication policy (perceptual hashes +
  registry search, CLIP features for the bias audit); manifest + signature + PNG encode +
  the check of the encoded bytes (decode, pixel hash, mark read-back); the writer's group
  commit (atomic writes with fsync, read-back hash, sidecar, ledger, journal);
- the whole pipeline (``artengine.generation.generate``, one worker: the generator in a
  process of its own as a long job runs it, then in a thread; finisher threads; the
  writer), its throughput taken from the first written chunk to the last image (steady
  state; start-up and the end-of-batch audits/report are printed separately).

Figures: pipeline images/s over the slowest stage's images/s (target >= 0.8), and the
generator's in-pipeline speed (bare seconds / seconds spent in the generator inside the
pipeline as the job reports it, target >= 0.95).
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
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=0, help="images per chunk (default: the job default)")
    parser.add_argument("--run", type=Path)
    parser.add_argument("--workers-2", action="store_true", help="also run the pipeline with --workers 2")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from artengine import generation
    from artengine.audit import AuditItem
    from artengine.io import LoadedImage
    from artengine.plugins import get_plugins
    from artengine.provenance import derive_payload, init_keys
    from artengine.registry import add_to_registry
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
    refs = tmp / "refs"
    refs.mkdir()
    for i in range(16):
        Image.new("RGB", (64, 64), (i * 15, 255 - i * 15, 80)).save(refs / f"r{i}.png")
    add_to_registry(tmp / "refs.db", [refs], licence="bench", source="bench")

    plugins = get_plugins()
    n = args.count
    chunk = args.chunk or generation.GenerateOptions(model="", count=0, out=Path()).chunk

    def options(out: str, count: int, workers: int = 1) -> generation.GenerateOptions:
        return generation.GenerateOptions(model=str(run), count=count, out=tmp / out, policy="publication",
                                          registries=[str(tmp / "refs.db")], progress=False, chunk=chunk,
                                          workers=workers)

    start = time.perf_counter()
    generation.generate(options("warm", 8), plugins)
    t_first_job = time.perf_counter() - start

    spec = generation.build_spec(options("stages", n), plugins)
    spec["job_id"] = generation.job_id(spec)
    producer = generation.Producer(spec, plugins)
    indices = list(range(n))
    chunks = [indices[s:s + chunk] for s in range(0, n, chunk)]

    def timed(fn) -> float:
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    # Stage: bare generator inference.
    producer.pixels(chunks[0])  # warm
    t_gen = timed(lambda: [producer.pixels(c) for c in chunks])
    raw = [px for c in chunks for px in producer.pixels(c)]

    # Stage: upsample + watermark.
    size = spec["size"]

    def mark_all() -> list:
        out = []
        for i, px in zip(indices, raw):
            img = Image.fromarray(px).resize((size, size), Image.Resampling.LANCZOS)
            out.append(producer.scheme.embed(img, derive_payload(producer.secret, i,
                                                                 size=producer.scheme.payload_bytes)).convert("RGB"))
        return out
    marked: list = []
    t_mark = timed(lambda: marked.extend(mark_all()))

    # Stage: per-image audits.
    def audit_all() -> None:
        for s in range(0, len(marked), chunk):
            items = [AuditItem(key=f"{s + j}", image=LoadedImage(path="", rgb=m, alpha=None, format="PNG",
                                                                  mode="RGB", text={}))
                     for j, m in enumerate(marked[s:s + chunk])]
            producer.runner.check_images(items)
    t_audit = timed(audit_all)

    # Stage: manifest + signature + PNG encode + check of the encoded bytes. Measured as the
    # whole finishing step minus the three stages above, on the same chunks.
    t_finish = timed(lambda: [producer.finish(c, producer_raw) for c, producer_raw in
                              zip(chunks, [raw[c[0]:c[-1] + 1] for c in chunks])])
    produced = [p for c in chunks for p in producer.finish(c, raw[c[0]:c[-1] + 1])]
    t_encode = max(t_finish - t_mark - t_audit, 1e-9)

    # Stage: the writer (group commit per chunk).
    (tmp / "writes").mkdir()
    for folder in generation.FOLDERS:
        (tmp / "writes" / folder).mkdir()
    writer = generation.Writer(tmp / "writes", {**spec, "ledger": str(tmp / "ledger-writes.sqlite")}, plugins,
                               producer.policy, staged=True)
    t_write = timed(lambda: [writer.commit(produced[s:s + chunk]) for s in range(0, n, chunk)])
    writer.close()

    # The whole pipeline, one worker (the generator in a process of its own, then in a thread).
    def pipeline(out: str, workers: int, generator_process: str = "") -> tuple[float, float, float, float, dict]:
        os.environ["ARTENGINE_GENERATOR_PROCESS"] = generator_process
        stamps: list[float] = []
        begin = time.perf_counter()
        result = generation.generate(options(out, n, workers), plugins,
                                     on_image=lambda r: stamps.append(time.perf_counter()))
        end = time.perf_counter()
        stream = (n - chunk) / (stamps[-1] - stamps[chunk - 1])  # from the first chunk written to the last image
        return stream, stamps[0] - begin, end - stamps[-1], end - begin, result.stage_seconds

    stream1, startup1, finish1, total1, seconds1 = pipeline("job1", 1, "1")
    stream_t, _, _, _, seconds_t = pipeline("job1t", 1, "0")
    rows_extra = [{"stage": "full pipeline, 1 worker, generator in a thread (steady state)", "images/s": stream_t}]
    if args.workers_2:
        stream2, *_ = pipeline("job2", 2)
        rows_extra.append({"stage": "full pipeline, --workers 2 (steady state)", "images/s": stream2})

    stages = {"generator (bare)": t_gen, "upsample + watermark": t_mark, "audits": t_audit,
              "manifest + PNG encode + check": t_encode, "write (group commit)": t_write}
    slowest = max(stages, key=stages.get)
    rows = [{"stage": k, "images/s": n / v} for k, v in stages.items()]
    rows.append({"stage": "full pipeline, 1 worker, generator in a process (steady state)", "images/s": stream1})
    rows.extend(rows_extra)
    print_table(f"generation stages, {n} images at {size} px, chunks of {chunk} (torch threads: 1)", rows)
    print_table("generation job phases, 1 worker (seconds)", [
        {"phase": "start-up to first image", "s": startup1},
        {"phase": "batch audits + report after the last image", "s": finish1},
        {"phase": "whole job", "s": total1},
        {"phase": "warm-up job, 8 images (bias reference measured and cached)", "s": t_first_job},
    ])
    # What the cores can do at best: every stage's CPU time, summed, spread over every core
    # (the pipeline cannot beat that, nor its slowest stage).
    cores = os.cpu_count() or 1
    bound = min(n / stages[slowest], cores * n / sum(stages.values()))
    print_table("generation ratios", [
        {"figure": f"pipeline / slowest stage ({slowest})", "ratio": stream1 / (n / stages[slowest]),
         "target": ">= 0.8"},
        {"figure": f"pipeline / what {cores} cores allow (min of slowest stage, cores / sum of stage times;"
                   f" {bound:.1f} img/s)", "ratio": stream1 / bound, "target": "-"},
        {"figure": "generator in pipeline / bare", "ratio": t_gen / max(seconds1["generator"], 1e-9),
         "target": ">= 0.95"},
        {"figure": "same, generator in a thread", "ratio": t_gen / max(seconds_t["generator"], 1e-9),
         "target": "-"},
        {"figure": "pipeline with the generator in a thread / slowest stage",
         "ratio": stream_t / (n / stages[slowest]), "target": "-"},
    ])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
