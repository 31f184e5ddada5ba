"""A job's memory per image: the parent process's peak RSS against the job's size.

Run: python benchmarks/bench_memory.py [--counts 2048 8192] [--size 256] [--run RUN]

A job's process keeps something of every image until its end (the batch audits and the
report need them all), so its peak memory grows with ``--count``. This runs the same
``artengine generate`` command line (policy ``publication``, default workers: forked
local processes for jobs this size, the job's process writing, journaling and finishing;
the tiny model of ``common.generation_setup`` unless ``--run`` is given) at each count in
a fresh process and folder, reads the process's peak RSS from ``wait4`` (its worker
processes stay smaller) and samples its RSS each second. Prints per
count the peak, the RSS at the end of generation (before the batch audits and the
report) and wall time; then the growth per image between the smallest and the largest
count, for the peak and for generation alone, and the peak a 100,000-image job would
reach at that rate.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import generation_setup, print_table  # noqa: E402


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None  # a zombie: no VmRSS any more


def _journaled(journal: Path) -> int:
    try:
        return journal.read_bytes().count(b'"type":"image"')
    except OSError:
        return 0


def one_job(run: Path, registry: Path, folder: Path, count: int, size: int) -> dict:
    cmd = [sys.executable, "-m", "artengine", "generate", "--model", str(run), "--count", str(count),
           "--out", str(folder), "--policy", "publication", "--registry", str(registry), "--seed", "3",
           "--size", str(size)]
    begin = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    generating = 0.0  # the RSS while images are still being made
    while (rss := _rss_mb(proc.pid)) is not None:
        if _journaled(folder / "journal.jsonl") < count:
            generating = rss
        time.sleep(1.0)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - begin
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"job of {count} failed (exit {code}): {proc.stderr.read().decode()[-400:]}")
    proc.stderr.close()
    return {"images": count, "peak RSS MB": usage.ru_maxrss / 1024, "RSS at end of generation MB": generating,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--run", type=Path, default=None)
    args = parser.parse_args()
    tmp, run, registry = generation_setup("artengine-bench-memory-", args.run)
    rows = [one_job(run, registry, tmp / f"job-{count}", count, args.size) for count in sorted(args.counts)]
    print_table(f"peak memory of a job's process ({args.size} px, policy publication, default workers)", rows)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        span = last["images"] - first["images"]
        peak = (last["peak RSS MB"] - first["peak RSS MB"]) / span * 1024
        during = (last["RSS at end of generation MB"] - first["RSS at end of generation MB"]) / span * 1024
        projected = last["peak RSS MB"] + peak * (100_000 - last["images"]) / 1024
        print_table("growth per image", [{"peak KB/img": peak, "during generation KB/img": during,
                                          "projected peak at 100,000 images MB": projected}])


if __name__ == "__main__":
    main()
