"""The head start of a job's first generator passes (issue 7): whole `artengine generate`
runs from the command line, alternating with and without it, in one run.

Run: python benchmarks/bench_head_start.py [--arch stylegan] [--count 1024] [--pairs 6]

Where workers are forked (Linux), a job's process loads the model and forks a head-start
process that runs the first chunks' generator passes while the job's process goes on
loading CLIP, the audits and the registries (about 2 s on one core from the command line;
the other cores would be idle). The workers then only finish those chunks. This times
whole command-line jobs (start-up, report and exit included: what a studio waits for),
the default against ``ARTENGINE_HEAD_START=0``, in alternating order, and checks that
both make the same bytes. The model is trained now for two steps (the speed of a pass
does not depend on its weights): ``--arch stylegan`` (style-conditioned, about 1.8 ms
a pass-image at 32 px here) or ``cgan`` (about 0.8 ms); ``--image-size 64`` for a
heavier pass. What the head start can save is bounded by its start-up window and by the
generator's share of the job: at most half the passes' CPU time on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import generation_setup, print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="stylegan", help="architecture of the model trained for the run")
    parser.add_argument("--image-size", type=int, default=32, choices=(32, 64))
    parser.add_argument("--count", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=6, help="alternating pairs of jobs")
    args = parser.parse_args()

    tmp, run, registry = generation_setup("bench-head-start-", None, arch=args.arch, image_size=args.image_size)

    def job(name: str, head_start: bool) -> tuple[float, str]:
        out = tmp / name
        env = {**os.environ, "ARTENGINE_HEAD_START": "1" if head_start else "0"}
        begin = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "artengine", "generate", "--model", str(run), "--count",
                               str(args.count), "--out", str(out), "--policy", "publication", "--registry",
                               str(registry)], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - begin
        if done.returncode not in (0, 1):
            raise SystemExit(f"generate failed ({done.returncode}): {done.stderr.strip()[-400:]}")
        digest = hashlib.sha256()
        for path in sorted(out.glob("*/*.png")):
            digest.update(path.name.encode() + path.read_bytes())
        return seconds, digest.hexdigest()

    args_count, args.count = args.count, 8
    job("warm-up", True)  # the run's bias reference is measured once, by its first job
    args.count = args_count
    times: dict[bool, list[float]] = {True: [], False: []}
    gains: list[float] = []
    digests = set()
    for k in range(args.pairs):
        order = (True, False) if k % 2 == 0 else (False, True)
        pair = {}
        for head_start in order:
            seconds, digest = job(f"job-{k}-{int(head_start)}", head_start)
            pair[head_start] = seconds
            times[head_start].append(seconds)
            digests.add(digest)
            print(f"pair {k}: head start {'on ' if head_start else 'off'} {seconds:.2f} s", flush=True)
        gains.append(pair[False] - pair[True])
    if len(digests) != 1:
        raise SystemExit("the jobs made different bytes")
    rows = [{"figure": f"whole job, {args.count} images, head start ({args.arch} {args.image_size} px)",
             "s": statistics.median(times[True]), "range": f"{min(times[True]):.2f}-{max(times[True]):.2f}"},
            {"figure": "same, ARTENGINE_HEAD_START=0", "s": statistics.median(times[False]),
             "range": f"{min(times[False]):.2f}-{max(times[False]):.2f}"},
            {"figure": f"seconds saved per pair (median; head start ahead in {sum(g > 0 for g in gains)} "
                       f"of {len(gains)})", "s": statistics.median(gains),
             "range": f"{min(gains):.2f}-{max(gains):.2f}"},
            {"figure": "time with / without (medians)", "s": statistics.median(times[True]) /
             statistics.median(times[False]), "range": "-"}]
    print_table(f"head start, {args.pairs} alternating pairs of command-line jobs (same bytes)", rows)


if __name__ == "__main__":
    main()
