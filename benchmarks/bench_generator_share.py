"""What the other core's work costs the generator (issue 7), Linux, 2 cores or more.

Run: python benchmarks/bench_generator_share.py [--run RUN] [--rounds 4] [--seconds 2]

The generator (one torch thread, the job's own passes of 32 images) is pinned to core 0
and timed alone, then beside each of these pinned to core 1, in a process of its own:
the job's finishing (``Producer.finish`` on its chunks, 256 px, policy ``publication``,
in a loop), a pure-Python loop, and a numpy copy of 64 MB (memory traffic). The
conditions alternate within each round, so every ratio compares figures taken seconds
apart (this machine's speed swings by 30 % over minutes); each figure is the mean of the
rounds' own ratios, with their range.

Then the generator as a ``--workers N`` process runs it: each pass right after the
finishing of a chunk on the same core (only the generator's own seconds count), with core 1
idle and with the job's finishing on core 1.

Inside the pipeline the generator runs at 0.7-0.9 of its bare speed; if the other core's
work cost it no more than the few per cent measured here, the rest is the share of its own
core it gives to finishers running beside it, or, in a ``--workers N`` process, what the
finishing just before each pass leaves of its caches (docs/generation.md, "Why the
generator runs below its bare speed").
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import generation_setup, print_table  # noqa: E402


def _python_loop(stop) -> None:
    n = 0
    while not stop.is_set():
        for _ in range(100_000):
            n += 1


def _memory_loop(stop) -> None:
    import numpy as np

    a = np.ones(64 << 20, np.uint8)
    b = np.empty_like(a)
    while not stop.is_set():
        np.copyto(b, a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds the generator is timed per condition")
    args = parser.parse_args()
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench_generator_share.py needs Linux and 2 cores")

    from artengine import generation
    from artengine.plugins import get_plugins

    generation._one_thread_each()  # as a job's worker processes run
    tmp, run, registry = generation_setup("bench-share-", args.run)
    options = generation.GenerateOptions(model=str(run), count=256, out=tmp / "job", policy="publication",
                                         registries=[str(registry)], progress=False)
    spec = generation.build_spec(options, get_plugins())
    spec["job_id"] = generation.job_id(spec)
    producer = generation.Producer(spec, get_plugins())
    chunk = list(range(32))
    raw = producer.pixels(chunk)
    producer.finish(chunk, raw)  # one-off costs paid before any timing

    def finishing_loop(stop) -> None:
        while not stop.is_set():
            producer.finish(chunk, raw)

    def generator_rate() -> float:
        done, begin = 0, time.perf_counter()
        while time.perf_counter() - begin < args.seconds:
            producer.pixels(list(range(done, done + 32)))
            done += 32
        return done / (time.perf_counter() - begin)

    def interleaved_rate() -> float:
        """The generator's speed when each of its passes follows the finishing of a chunk on
        the same core, as in a ``--workers N`` process: only its own seconds count."""
        done, spent = 0, 0.0
        while spent < args.seconds:
            begin = time.perf_counter()
            out = producer.pixels(list(range(done, done + 32)))
            spent += time.perf_counter() - begin
            producer.finish(chunk, out)
            done += 32
        return done / spent

    os.sched_setaffinity(0, {0})
    generator_rate()  # warm
    context = multiprocessing.get_context("fork")
    beside = {"the job's finishing (Producer.finish, 256 px)": finishing_loop,
              "a pure-Python loop": _python_loop, "a numpy copy of 64 MB": _memory_loop}
    # Each pass after a chunk's finishing on the same core (a --workers N process), with
    # core 1 idle, then with the job's finishing on core 1 too (the other worker).
    interleaved = {"nothing; each pass follows a chunk's finishing on core 0 (as a --workers N process)": None,
                   "the job's finishing, and each pass follows a chunk's finishing on core 0 (as --workers 2)":
                       finishing_loop}
    rates: dict[str, list[float]] = {"alone": [], **{name: [] for name in beside},
                                     **{name: [] for name in interleaved}}
    for k in range(args.rounds):
        for name in rates:
            stop = context.Event()
            other = None
            target = beside.get(name) or interleaved.get(name)
            if target is not None:
                other = context.Process(target=_pinned, args=(target, stop))
                other.start()
                time.sleep(1.0)  # past its start-up
            rates[name].append(interleaved_rate() if name in interleaved else generator_rate())
            if other is not None:
                stop.set()
                other.join()
        print(f"round {k + 1}/{args.rounds}: alone {rates['alone'][-1]:.0f} img/s", flush=True)
    rows = []
    for name, values in rates.items():
        ratios = [v / a for v, a in zip(values, rates["alone"])]
        rows.append({"generator on core 0, beside on core 1": name,
                     "images/s": sum(values) / len(values),
                     "share of alone": sum(ratios) / len(ratios),
                     "rounds": f"{min(ratios):.2f}-{max(ratios):.2f}"})
    print_table(f"generator pinned, alone and beside other work ({args.rounds} rounds of {args.seconds:g} s)", rows)


def _pinned(target, stop) -> None:
    os.sched_setaffinity(0, {1})
    target(stop)


if __name__ == "__main__":
    main()
