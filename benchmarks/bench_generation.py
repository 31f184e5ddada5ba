"""Generation pipeline throughput against its stages measured alone (issue 7).

Run: python benchmarks/bench_generation.py [--count 1024] [--margin 8] [--rounds 5] [--run RUN]
     [--registry DB] [--size PX] [--clip-model ViT-B-32 --clip-pretrained FILE|random]

It trains a tiny class-conditional model when --run is not given (the benchmark is about
the pipeline, not image quality), makes keys in a temporary folder, registers a few
references so the near-duplicate audit really searches, and runs one warm-up job so the
bias audit's training reference is measured and cached (a one-off cost per run folder,
shown as the warm-up job's time). Then, in one process, one thread for torch and the BLAS:

- each stage alone, sequentially, on the same images: bare generator inference; upsample
  + watermark; the per-image audits of the publication policy (perceptual hashes +
  registry search, CLIP features for the bias audit); manifest + signature + PNG encode +
  the check of the encoded bytes (decode, pixel hash, mark read-back); the writer's group
  commit (atomic writes with fsync, read-back hash, sidecar, ledger, journal);
- the whole pipeline as a job runs it by default (``artengine.generation.generate``
  without ``workers``: for a job this long on Linux, one forked producer process per core,
  see ``generation.default_workers``; the targets are on this one), and, for context, the
  one-worker pipeline (the generator in a process of its own, then in a thread; finisher
  threads; the writer). Each one's throughput is taken over the middle of the job (steady
  state): from the end of chunk ``--margin`` to the end of chunk (chunks - ``--margin``).
  The ends are left out
  because they are not a steady state: when the first chunk is written, up to 7 more are
  already generated or being finished (the generator's look-ahead, the chunks handed to
  the finishers), work done before the window opened; and the last chunks are finished
  with no generator beside them. Counted from the first written chunk, a 256-image job
  (8 chunks) read above what the cores can do at all. Start-up and the end-of-batch
  audits/report are printed separately.

Both are measured in each of ``--rounds`` rounds, back to back, so a round's ratios compare
figures taken within seconds of each other (this machine's speed swings by 30 % over
minutes). Figures: pipeline images/s over the slowest stage's images/s (target >= 0.8),
and the generator's in-pipeline speed (bare seconds / seconds spent in the generator inside
the pipeline as the job reports it, target >= 0.95); each the median of the rounds' own
ratios, with their range. For context, what 2 cores allow at best: cores / (sum of the
stages' times per image), from wall times and from CPU times (the write mostly waits on
fsync, which takes no core), and how that bound compares with the slowest stage; and, in
the pipeline's steady state, its CPU time per image (this process and its child processes:
generator, finishing, workers) against the stages' CPU times summed, and the share of the cores it keeps busy.
A pipeline that keeps the cores busy but spends more CPU per image than its stages alone
loses to running side by side, not to waiting.

``--clip-model``/``--clip-pretrained`` put another CLIP under the bias audit, as a studio
online would (``ViT-B-32``); ``--clip-pretrained random`` writes freshly initialised weights
to a temporary file, which cost what trained ones do (no weights can be downloaded here).
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import generation_setup, print_table  # noqa: E402


def random_clip_weights(name: str | None, folder: Path) -> Path:
    """Freshly initialised weights of the open_clip architecture ``name`` as a safetensors
    file: a model the audits load through ``--clip-pretrained FILE`` like trained weights,
    at the same cost per image (the features mean nothing; only time is measured)."""
    import logging

    import open_clip
    from safetensors.torch import save_file

    if not name:
        raise SystemExit("--clip-pretrained random needs --clip-model")
    logging.disable(logging.WARNING)  # open_clip warns that the weights are random: they are meant to be
    try:
        model = open_clip.create_model(name, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    path = folder / f"{name}-random.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), every thread; NaN when
    the process has gone (its time can no longer be read, so the figure is not made up)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1024)
    parser.add_argument("--margin", type=int, default=8,
                        help="chunks left out of the steady state at each end of a job (default 8: more than "
                             "the pipeline holds in flight)")
    parser.add_argument("--chunk", type=int, default=0, help="images per chunk (default: the job default)")
    parser.add_argument("--run", type=Path)
    parser.add_argument("--registry", type=Path,
                        help="search this reference registry instead of 16 flat colours (e.g. the demo's, of "
                             "the training images --run's model resembles: what a studio's job searches)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of stages-alone + pipeline, interleaved")
    parser.add_argument("--size", type=int, help="output side in pixels (default: the job default)")
    parser.add_argument("--clip-model", help="open_clip architecture for the audits' CLIP features "
                                             "(default: the shipped tiny CLIP)")
    parser.add_argument("--clip-pretrained", help="its weights: a .safetensors file, or 'random' for freshly "
                                                  "initialised weights written to a temporary file (the same "
                                                  "compute as trained ones: for timing only, as no hub is reachable)")
    args = parser.parse_args()

    from artengine import generation
    from artengine.audit import AuditItem
    from artengine.io import LoadedImage
    from artengine.plugins import get_plugins

    n = args.count
    chunk = args.chunk or generation.GenerateOptions(model="", count=0, out=Path()).chunk
    # The steady state: images first..last (1-based, both chunk ends), the margins left out.
    first, last = args.margin * chunk, n - args.margin * chunk
    if last - first < 4 * chunk:
        raise SystemExit(f"--count {n}: too few images for a steady state with --margin {args.margin} "
                         f"(chunks of {chunk}): use at least {(2 * args.margin + 4) * chunk}")

    # The stages alone run as a job's workers run them: one thread for torch and one for
    # the BLAS under numpy (idle OpenBLAS threads spin, and would count as the stage's CPU).
    generation._one_thread_each()
    tmp, run, registry = generation_setup("bench-gen-", args.run, registry=args.registry)
    clip_pretrained = args.clip_pretrained
    if clip_pretrained == "random":
        clip_pretrained = str(random_clip_weights(args.clip_model, tmp))

    plugins = get_plugins()

    def options(out: str, count: int, workers: int = 1) -> generation.GenerateOptions:
        return generation.GenerateOptions(model=str(run), count=count, out=tmp / out, policy="publication",
                                          registries=[str(registry)], progress=False, chunk=chunk,
                                          workers=workers, size=args.size, clip_model=args.clip_model,
                                          clip_pretrained=clip_pretrained)

    start = time.perf_counter()
    generation.generate(options("warm", 8), plugins)
    t_first_job = time.perf_counter() - start

    spec = generation.build_spec(options("stages", n), plugins)
    spec["job_id"] = generation.job_id(spec)
    producer = generation.Producer(spec, plugins)
    indices = list(range(n))
    chunks = [indices[s:s + chunk] for s in range(0, n, chunk)]
    size = spec["size"]
    producer.pixels(chunks[0])  # warm

    def timed(fn) -> tuple[float, float]:
        """Seconds and CPU seconds (every thread of this process) of ``fn()``."""
        begin, begin_cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - begin, time.process_time() - begin_cpu

    def stages_alone(k: int) -> tuple[dict[str, float], dict[str, float]]:
        """Seconds, and CPU seconds, for n images of each stage alone, one after the other,
        on the same images."""
        raw = [px for c in chunks for px in producer.pixels(c)]
        t_gen, c_gen = timed(lambda: [producer.pixels(c) for c in chunks])  # bare generator inference

        def mark_all() -> list:  # upsample + watermark, as a job's finishing makes them
            return [producer.mark(i, px)[0] for i, px in zip(indices, raw)]
        marked: list = []
        t_mark, c_mark = timed(lambda: marked.extend(mark_all()))

        findings: dict = {}
        features: dict = {}

        def audit_all() -> None:  # the per-image audits
            for s in range(0, len(marked), chunk):
                items = [AuditItem(key=generation.image_name(s + j), meta=producer.meta(s + j),
                                   image=LoadedImage(path="", rgb=m, alpha=None, format="PNG", mode="RGB", text={}))
                         for j, m in enumerate(marked[s:s + chunk])]
                findings.update(producer.runner.check_images(items))
                features.update((item.key, item.features) for item in items)
        t_audit, c_audit = timed(audit_all)

        # Manifest + signature + PNG encode + check of the encoded bytes: the whole
        # finishing step on the same chunks, with the audits' findings above handed back
        # instead of auditing again, minus the upsample + watermark stage. (Subtracting the
        # audits instead loses this stage in their noise when they are slow, as with ViT-B-32.)
        produced: list = []

        def audited(items: list) -> dict:
            for item in items:
                item.features.update(features[item.key])
            return {item.key: findings[item.key] for item in items}
        producer.runner.check_images = audited
        try:
            t_finish, c_finish = timed(lambda: produced.extend(
                p for c in chunks for p in producer.finish(c, raw[c[0]:c[-1] + 1])))
        finally:
            del producer.runner.check_images  # the method again
        t_encode = max(t_finish - t_mark, 1e-9)
        c_encode = max(c_finish - c_mark, 1e-9)

        # The writer (group commit per chunk).
        writes = tmp / f"writes-{k}"
        for folder in generation.FOLDERS:
            (writes / folder).mkdir(parents=True)
        writer = generation.Writer(writes, {**spec, "ledger": str(tmp / f"ledger-writes-{k}.sqlite")}, plugins,
                                   producer.policy, staged=True)
        t_write, c_write = timed(lambda: [writer.commit(produced[s:s + chunk]) for s in range(0, n, chunk)])
        writer.close()
        names = ("generator (bare)", "upsample + watermark", "audits", "manifest + PNG encode + check",
                 "write (group commit)")
        return (dict(zip(names, (t_gen, t_mark, t_audit, t_encode, t_write))),
                dict(zip(names, (c_gen, c_mark, c_audit, c_encode, c_write))))

    def pipeline(out: str, workers: int, generator_process: str = "",
                 side: str = "") -> tuple[float, float, float, float, dict, float]:
        """The whole job (``workers`` 0: as a job runs by default); images/s over its steady
        state (images first..last), start-up and end seconds, stage seconds, CPU per image."""
        os.environ["ARTENGINE_GENERATOR_PROCESS"] = generator_process
        os.environ["ARTENGINE_FINISHING_PROCESS"] = side
        stamps: list[float] = []
        cpu: list[float] = []  # CPU seconds of this process and its children, at each image

        def on_image(_record: object) -> None:
            stamps.append(time.perf_counter())
            if len(stamps) in (first, last):  # the steady state's ends: read the CPU clocks
                cpu.append(time.process_time() + sum(process_cpu_seconds(p.pid)
                                                     for p in multiprocessing.active_children()))

        begin = time.perf_counter()
        result = generation.generate(options(out, n, workers), plugins, on_image=on_image)
        end = time.perf_counter()
        stream = (last - first) / (stamps[last - 1] - stamps[first - 1])
        cpu_per_image = (cpu[-1] - cpu[0]) / (last - first)
        return stream, stamps[0] - begin, end - stamps[-1], end - begin, result.stage_seconds, cpu_per_image

    cores = os.cpu_count() or 1
    default_workers = generation.default_workers(n, "local", chunk)  # what a job of n images runs
    rounds = []
    for k in range(args.rounds):  # stages alone and the pipeline back to back, round after round
        # The stages alone with this process's loaded objects frozen out of the collector,
        # as a job freezes its own (generation._FrozenHeap): a full collection walking them
        # takes about 0.2 s, which landed in one stage's time or another.
        gc.freeze()
        try:
            stages, cpu_seconds = stages_alone(k)
        finally:
            gc.unfreeze()
        stream1, startup1, finish1, total1, seconds1, cpu1 = pipeline(f"job-{k}", 1, "1")
        stream_t, _, _, _, seconds_t, _ = pipeline(f"job-thread-{k}", 1, "0")
        # No finishing process: the finisher threads finish every chunk.
        stream_ns, _, _, _, seconds_ns, cpu_ns = pipeline(f"job-no-side-{k}", 1, "1", side="0")
        if default_workers > 1:  # the default job (else it is the one-worker pipeline above)
            stream_d, startup_d, _, total_d, seconds_d, cpu_d = pipeline(f"job-default-{k}", 0)
        else:
            stream_d, startup_d, total_d, seconds_d, cpu_d = stream1, startup1, total1, seconds1, cpu1
        slowest = max(stages, key=stages.get)
        slowest_rate = n / stages[slowest]
        # What the cores can do at best: every stage's time, summed, spread over every core
        # (the pipeline can beat neither that nor its slowest stage).
        bound = min(slowest_rate, cores * n / sum(stages.values()))
        # The same with CPU time instead of wall time: the write mostly waits for the disk
        # (fsync), which occupies no core, so this bound is the one the cores really set.
        bound_cpu = min(slowest_rate, cores * n / sum(cpu_seconds.values()))
        stages_cpu = sum(cpu_seconds.values()) / n  # the stages' CPU per image, summed

        def generator_share(seconds: dict) -> float:
            """Bare generator seconds / the seconds a job spent generating."""
            return stages["generator (bare)"] / max(seconds["generator"], 1e-9)
        rounds.append({"stages": stages, "cpu": cpu_seconds, "slowest": slowest, "bound": bound,
                       "bound_cpu": bound_cpu, "vs_bound_cpu": stream1 / bound_cpu,
                       "bound_cpu_vs_slowest": bound_cpu / slowest_rate, "pipeline": stream1,
                       "pipeline_thread": stream_t, "startup": startup1, "finish": finish1, "total": total1,
                       "vs_slowest": stream1 / slowest_rate, "vs_bound": stream1 / bound,
                       "generator": generator_share(seconds1),
                       "generator_thread": generator_share(seconds_t),
                       "thread_vs_slowest": stream_t / slowest_rate,
                       "pipeline_no_side": stream_ns,
                       "side_share": seconds1["finishing in a process"] / seconds1["finishing"],
                       "no_side_vs_slowest": stream_ns / slowest_rate,
                       "no_side_cores_busy": cpu_ns * stream_ns / cores,
                       "no_side_generator": generator_share(seconds_ns),
                       # CPU the pipeline spends per image against the stages' own CPU
                       # summed (what running side by side on the cores adds), and the
                       # share of the cores it keeps busy.
                       "cpu_inflation": cpu1 / stages_cpu,
                       "cores_busy": cpu1 * stream1 / cores,
                       "default": stream_d, "default_vs_slowest": stream_d / slowest_rate,
                       "default_vs_bound_cpu": stream_d / bound_cpu,
                       "default_cores_busy": cpu_d * stream_d / cores,
                       "default_cpu_inflation": cpu_d / stages_cpu,
                       "default_startup": startup_d, "default_total": total_d,
                       "default_generator": generator_share(seconds_d),
                       # Its speed while it has a core (bare CPU seconds / CPU seconds inside;
                       # the rest of the share above is time spent waiting for a core), and
                       # the seconds the job's writer sat out its passes.
                       "default_generator_cpu": cpu_seconds["generator (bare)"] / seconds_d["generator cpu"]
                       if seconds_d.get("generator cpu") else 0.0,
                       "default_writer_waiting": seconds_d.get("writer waiting", 0.0)})
        print(f"round {k + 1}/{args.rounds}: default job ({default_workers} worker(s)) {stream_d:.1f} img/s, "
              f"1 worker {stream1:.1f}; slowest stage ({slowest}) {slowest_rate:.1f}, bound {bound:.1f}; "
              f"generator / bare {rounds[-1]['default_generator']:.2f} (1 worker {rounds[-1]['generator']:.2f})",
              flush=True)

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    def spread(key: str) -> str:
        values = sorted(r[key] for r in rounds)
        return f"{values[0]:.2f}-{values[-1]:.2f}"

    default = f"default job ({default_workers} worker{'s' if default_workers > 1 else ''})"
    names = list(rounds[0]["stages"])
    rows = [{"stage": name, "images/s": float(statistics.median(n / r["stages"][name] for r in rounds)),
             "CPU ms per image": float(statistics.median(1000 * r["cpu"][name] / n for r in rounds))}
            for name in names]
    rows.append({"stage": f"full pipeline, {default} (steady state)", "images/s": median("default"),
                 "CPU ms per image": "-"})
    rows.append({"stage": "full pipeline, 1 worker, generator in a process (steady state)",
                 "images/s": median("pipeline"), "CPU ms per image": "-"})
    rows.append({"stage": "same, every chunk finished in the job's process (steady state)",
                 "images/s": median("pipeline_no_side"), "CPU ms per image": "-"})
    rows.append({"stage": "full pipeline, 1 worker, generator in a thread (steady state)",
                 "images/s": median("pipeline_thread"), "CPU ms per image": "-"})
    print_table(f"generation stages, {n} images at {size} px, chunks of {chunk} (torch threads: 1; "
                f"median of {len(rounds)} rounds; pipelines' steady state: images {first + 1}-{last})", rows)
    print_table("generation job phases (seconds, median of rounds)", [
        {"phase": f"{default}: start-up to first image", "s": median("default_startup")},
        {"phase": f"{default}: whole job", "s": median("default_total")},
        {"phase": "1 worker: start-up to first image", "s": median("startup")},
        {"phase": "1 worker: batch audits + report after the last image", "s": median("finish")},
        {"phase": "1 worker: whole job", "s": median("total")},
        {"phase": "warm-up job, 8 images (bias reference measured and cached)", "s": t_first_job},
    ])
    slowest_names = sorted({r["slowest"] for r in rounds})
    print_table(f"generation ratios (each round's own ratio: median and range over {len(rounds)} rounds)", [
        {"figure": f"{default}: pipeline / slowest stage ({', '.join(slowest_names)})",
         "ratio": median("default_vs_slowest"), "rounds": spread("default_vs_slowest"), "target": ">= 0.8"},
        {"figure": f"{default}: generator / bare (bare seconds / the seconds spent generating inside)",
         "ratio": median("default_generator"), "rounds": spread("default_generator"), "target": ">= 0.95"},
        {"figure": f"{default}: generator by CPU time / bare (its speed while it has a core)",
         "ratio": median("default_generator_cpu"), "rounds": spread("default_generator_cpu"), "target": "-"},
        {"figure": f"{default}: seconds the writer sat out generator passes, per job",
         "ratio": median("default_writer_waiting"), "rounds": spread("default_writer_waiting"), "target": "-"},
        {"figure": f"{default}: pipeline / what {cores} cores allow by CPU time",
         "ratio": median("default_vs_bound_cpu"), "rounds": spread("default_vs_bound_cpu"), "target": "-"},
        {"figure": f"{default}: share of the cores kept busy (steady state)", "ratio": median("default_cores_busy"),
         "rounds": spread("default_cores_busy"), "target": "-"},
        {"figure": f"{default}: CPU per image (steady state) / sum of the stages' CPU alone",
         "ratio": median("default_cpu_inflation"), "rounds": spread("default_cpu_inflation"), "target": "-"},
        {"figure": "1 worker: pipeline / slowest stage", "ratio": median("vs_slowest"),
         "rounds": spread("vs_slowest"), "target": "-"},
        {"figure": f"1 worker: pipeline / what {cores} cores allow (min of slowest stage, cores / sum of stage "
                   f"times; {median('bound'):.1f} img/s)", "ratio": median("vs_bound"), "rounds": spread("vs_bound"),
         "target": "-"},
        {"figure": f"1 worker: pipeline / what {cores} cores allow by CPU time (min of slowest stage, cores / sum "
                   f"of stage CPU times; {median('bound_cpu'):.1f} img/s)", "ratio": median("vs_bound_cpu"),
         "rounds": spread("vs_bound_cpu"), "target": "-"},
        {"figure": "that CPU bound / slowest stage (the best pipeline / slowest the cores permit)",
         "ratio": median("bound_cpu_vs_slowest"), "rounds": spread("bound_cpu_vs_slowest"), "target": "-"},
        {"figure": "1 worker: CPU per image (steady state) / sum of the stages' CPU alone",
         "ratio": median("cpu_inflation"), "rounds": spread("cpu_inflation"), "target": "-"},
        {"figure": "1 worker: share of the cores kept busy (steady state)", "ratio": median("cores_busy"),
         "rounds": spread("cores_busy"), "target": "-"},
        {"figure": "1 worker: share of the finishing time spent in the finishing process",
         "ratio": median("side_share"), "rounds": spread("side_share"), "target": "-"},
        {"figure": "1 worker: generator in pipeline / bare", "ratio": median("generator"),
         "rounds": spread("generator"), "target": "-"},
        {"figure": "1 worker, every chunk finished in the job's process: pipeline / slowest stage",
         "ratio": median("no_side_vs_slowest"), "rounds": spread("no_side_vs_slowest"), "target": "-"},
        {"figure": "1 worker, every chunk finished in the job's process: share of the cores kept busy",
         "ratio": median("no_side_cores_busy"), "rounds": spread("no_side_cores_busy"), "target": "-"},
        {"figure": "1 worker, every chunk finished in the job's process: generator in pipeline / bare",
         "ratio": median("no_side_generator"), "rounds": spread("no_side_generator"), "target": "-"},
        {"figure": "1 worker, generator in a thread: pipeline / slowest stage", "ratio": median("thread_vs_slowest"),
         "rounds": spread("thread_vs_slowest"), "target": "-"},
        {"figure": "1 worker, generator in a thread: generator / bare", "ratio": median("generator_thread"),
         "rounds": spread("generator_thread"), "target": "-"},
    ])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
