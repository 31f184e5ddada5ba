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

``--audit-again K``: instead, the job's registry grows by K of its own images before each
run (from the same saved job, journal and registry each time), so that the run audits every
image again (docs/generation.md, "Determinism and resume"):

- the engine: the images' pixels read back from their files;
- bare: the same with the files' hashes taken out of the journal, so that every image is
  generated and marked again (what auditing again cost before reading back).

Prints the seconds of both, their ratio, how many images each run quarantined and whether
both left the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import generation_setup, print_table  # noqa: E402


def strip(journal: Path, key: str) -> None:
    """Take ``key`` out of every journal record (``features``: the batch audits' features;
    ``sha256``: the files' hashes, without which nothing is read back)."""
    lines = journal.read_bytes().split(b"\n")[:-1]
    out = []
    for line in lines:
        record = json.loads(line)
        record.pop(key, None)
        out.append(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
    journal.write_bytes(b"".join(line + b"\n" for line in out))


def files_of(job: Path) -> dict[str, str]:
    return {p.relative_to(job).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("approved", "quarantine", "pending") for p in sorted((job / folder).glob("*"))}


def audit_again(args: argparse.Namespace, generation, plugins, job: Path, options, registry: Path,
                made: float) -> None:
    from artengine.registry import add_to_registry

    saved_job, saved_registry = job.with_name("job-saved"), registry.with_name("registry-saved.sqlite")
    shutil.copytree(job, saved_job)
    shutil.copy2(registry, saved_registry)
    added = sorted((saved_job / "approved").glob("*.png"))[:args.audit_again] or \
        sorted((saved_job / "quarantine").glob("*.png"))[:args.audit_again]
    times: dict[str, list[float]] = {"engine": [], "bare": []}
    results: dict[str, list[tuple[int, dict[str, str]]]] = {"engine": [], "bare": []}
    for r in range(args.rounds):
        for side in ("engine", "bare") if r % 2 == 0 else ("bare", "engine"):
            shutil.rmtree(job)
            shutil.copytree(saved_job, job)
            shutil.copy2(saved_registry, registry)
            add_to_registry(registry, added, progress=False)
            if side == "bare":
                strip(job / "journal.jsonl", "sha256")
            begin = time.perf_counter()
            result = generation.generate(options, plugins)
            times[side].append(time.perf_counter() - begin)
            results[side].append((result.quarantined, files_of(job)))
    engine, bare = statistics.median(times["engine"]), statistics.median(times["bare"])
    outcomes = [outcome for side in results.values() for outcome in side]
    print_table(f"the same {args.count}-image job audited again, {len(added)} of its images added to its "
                f"registry (made in {made:.1f} s)", [{
                    "engine s": engine, "bare s": bare, "ratio (time)": engine / bare,
                    "rounds": " ".join(f"{e / b:.2f}" for e, b in zip(times["engine"], times["bare"])),
                    "quarantined": outcomes[0][0],
                    "same bytes": all(outcome == outcomes[0] for outcome in outcomes)}])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--registry", type=Path, help="The job's registry (default: a few references made now).")
    parser.add_argument("--audit-again", type=int, default=0, metavar="K",
                        help="Measure auditing again after K of the job's images joined its registry.")
    args = parser.parse_args()

    from artengine import generation
    from artengine.plugins import get_plugins

    tmp, run, registry = generation_setup("bench-resume-", args.run)
    if args.registry is not None:  # a copy: the benchmark adds references to it
        registry = tmp / "registry.sqlite"
        shutil.copy2(args.registry, registry)
    plugins = get_plugins()
    job = tmp / "job"
    options = generation.GenerateOptions(model=str(run), count=args.count, out=job, policy="publication",
                                         registries=[str(registry)], progress=False)
    begin = time.perf_counter()
    generation.generate(options, plugins)
    made = time.perf_counter() - begin
    if args.audit_again:
        audit_again(args, generation, plugins, job, options, registry, made)
        return
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
                strip(journal, "features")
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
