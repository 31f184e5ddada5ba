"""The end of a resumed job: batch audits from journaled features vs measuring again.

Run: python benchmarks/bench_resume.py [--count 1024] [--rounds 3] [--run RUN]

A job's batch audits (bias) need every image's features. Each image's journal line keeps
them, so a run that resumes a job (after a crash, or the same command on a finished job)
reads them back; without them it decodes and measures every image an earlier run made.
This makes one job (the tiny model of ``common.generation_setup`` unless ``--run`` is
given, policy ``publication``), then, in alternation, ``--rounds`` times each:

- the engine: the same job run again, features read from the journal;
- bare: the same, with the features taken out of the journal first (what a journal
  without them costs: every image decoded and measured again).

Both redo the end of the job (batch audits, placement, report) in this process, after its
imports. Prints seconds per run, the ratio (engine / bare; lower is faster), the journal's
size per image and whether every run's report is the same.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import generation_setup, print_table  # noqa: E402


def strip_features(journal: Path) -> None:
    lines = journal.read_bytes().split(b"\n")[:-1]
    out = []
    for line in lines:
        record = json.loads(line)
        record.pop("features", None)
        out.append(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
    journal.write_bytes(b"".join(line + b"\n" for line in out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", type=Path)
    args = parser.parse_args()

    from artengine import generation
    from artengine.plugins import get_plugins

    tmp, run, registry = generation_setup("bench-resume-", args.run)
    plugins = get_plugins()
    job = tmp / "job"
    options = generation.GenerateOptions(model=str(run), count=args.count, out=job, policy="publication",
                                         registries=[str(registry)], progress=False)
    begin = time.perf_counter()
    generation.generate(options, plugins)
    made = time.perf_counter() - begin
    journal = job / "journal.jsonl"
    saved = journal.read_bytes()

    def report() -> dict:
        doc = json.loads((job / "report" / "report.json").read_text())
        doc.pop("created", None)
        return doc

    # The first run measured the bias reference and said so ("reused": false); every run
    # after it reads the stored one: its report is what the others must match.
    reference: dict | None = None
    times: dict[str, list[float]] = {"engine": [], "bare": []}
    agree = True
    for r in range(args.rounds):
        for side in ("engine", "bare") if r % 2 == 0 else ("bare", "engine"):
            journal.write_bytes(saved)
            if side == "bare":
                strip_features(journal)
            begin = time.perf_counter()
            generation.generate(options, plugins)
            times[side].append(time.perf_counter() - begin)
            doc = report()
            reference = reference or doc
            agree = agree and doc == reference
    engine, bare = statistics.median(times["engine"]), statistics.median(times["bare"])
    print_table(f"the same {args.count}-image job again (made in {made:.1f} s)", [{
        "engine s": engine, "bare s": bare, "ratio (time)": engine / bare,
        "rounds": " ".join(f"{e / b:.2f}" for e, b in zip(times["engine"], times["bare"])),
        "journal KB per image": len(saved) / args.count / 1024,
        "reports agree": agree}])


if __name__ == "__main__":
    main()
