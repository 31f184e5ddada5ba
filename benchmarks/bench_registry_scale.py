"""A large reference registry: adding to it, and searching it, at 100,000 references.

Run: python benchmarks/bench_registry_scale.py [--references 100000] [--queries 96] [--rounds 3]

The registry: 2,000 shapes (32 px, as the demo registers its training images) added the
usual way, then copies of them (thumbnails and all, new ids) with random hashes up to
``--references``: references a query's hashes almost never come near, as most of a large
registry is to any one image. Queries: 256 px shapes of another seed, each searched with
the publication policy's near-duplicate bounds, on one thread (as a job's worker runs
them), after the index is loaded. Side by side, in alternation:

- search, engine: a reader whose index carries every reference's thumbnail measures
  (what a search compares: detail, the colour of the coloured parts, quality);
  bare: the same index without them, as an index was before stop 46: the reader decodes
  the thumbnail of each reference the first time a query comes near it (every query is a
  new reader, so each measures what it meets, as each of a job's workers does);
- a reference added: engine, a reader opening the registry after one more reference
  extends its stored index by that reference's rows (and measures); bare, it makes the
  index from every row, as each reader did after any change before stop 46 (here with
  the measures, as after an edit or a delete now).

Prints milliseconds per query and seconds per index, the ratios (engine / bare; lower is
faster), and whether both searches found the same matches.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402


def make_registry(folder: Path, references: int) -> Path:
    from artengine.registry import add_to_registry
    from artengine_plugins.shapes import ShapesSet

    images = folder / "shapes"
    images.mkdir()
    shapes = ShapesSet(image_size=32, seed=0)
    for i in range(2000):
        shapes[i].image.save(images / f"{i:05d}.png")
    path = folder / "registry.sqlite"
    add_to_registry(path, [images], progress=False)
    conn = sqlite3.connect(path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(hashes)")]
    hashes = [c for c in columns if c not in ("ref_id", "variant")]
    ref_columns = [r[1] for r in conn.execute("PRAGMA table_info(refs)") if r[1] != "id"]
    rows = conn.execute(f"SELECT {', '.join(columns)} FROM hashes ORDER BY ref_id, variant").fetchall()
    top = conn.execute("SELECT MAX(id) FROM refs").fetchone()[0]
    rng = random.Random(1)
    copy, next_id = 1, top + 1
    with conn:
        while next_id <= references:
            take = min(top, references - next_id + 1)
            offset = next_id - 1
            picked = ", ".join("sha256 || '-copy%d'" % copy if c == "sha256" else c for c in ref_columns)
            conn.execute(f"INSERT INTO refs (id, {', '.join(ref_columns)}) SELECT id + {offset}, {picked} "
                         f"FROM refs WHERE id <= {take}")
            new = []
            for row in rows:
                if row[0] > take:
                    break
                values = dict(zip(columns, row))
                values["ref_id"] += offset
                for name in hashes:
                    width = len(values[name])
                    values[name] = format(int(values[name], 16) ^ rng.getrandbits(4 * width), f"0{width}x")
                new.append(tuple(values[c] for c in columns))
            conn.executemany(f"INSERT INTO hashes ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                             new)
            copy, next_id = copy + 1, next_id + take
    conn.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--references", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    from artengine import get_plugins, query_hashes
    from artengine.audit import AuditContext
    from artengine.policy import load_policy
    from artengine.registry import ReferenceRegistry
    from artengine_plugins.shapes import ShapesSet

    tmp = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    begin = time.perf_counter()
    path = make_registry(tmp, args.references)
    with ReferenceRegistry(path, create=True) as reg:
        begin_index = time.perf_counter()
        reg.index()  # made and stored, with the measures
        made = time.perf_counter() - begin_index
        count = reg.count()
    print(f"registry of {count} references in {time.perf_counter() - begin:.0f} s (its index {made:.1f} s)")

    plugins = get_plugins()
    policy = load_policy("publication", audits=plugins.components("audits"),
                         features=plugins.components("feature_extractors"))
    audit = plugins.components("audits")["near_duplicate"](
        policy.audits["near_duplicate"].settings, AuditContext(policy_path=policy.path, registries=[str(path)]))
    thresholds = {k: v for k, v in audit.thresholds.items() if not k.startswith("flat_")}
    shapes = ShapesSet(image_size=256, seed=7)
    queries = [query_hashes(shapes[i].image.convert("RGB")) for i in range(args.queries)]
    extra = ShapesSet(image_size=64, seed=9)

    def search(measured: bool) -> tuple[float, list]:
        with ReferenceRegistry(path) as reader:
            index = reader.index()
            if not measured:  # an index as made before stop 46, its reader measuring as it meets
                reader._index = dataclasses.replace(index, measured_ids=None, details=None, saturated=None,
                                                    qualities=None)
                reader._forget_measures()
            with threadpool_limits(limits=1, user_api="blas"):
                start = time.perf_counter()
                found = [[m.reference.id for m in reader.search(q, thresholds)] for q in queries]
                return (time.perf_counter() - start) / len(queries), found

    def added(extend: bool) -> float:
        copy = tmp / "grown.sqlite"
        shutil.copy2(path, copy)
        shutil.copy2(Path(f"{path}.index"), Path(f"{copy}.index"))
        with ReferenceRegistry(copy, create=True) as writer:
            writer.add_image(extra[len(times["add engine"]) + len(times["add bare"])].image,
                             source_path="bench:new")
        with ReferenceRegistry(copy) as reader:
            start = time.perf_counter()
            if extend:
                reader.index()
            else:
                reader._build_index()
            return time.perf_counter() - start

    times: dict[str, list[float]] = {"search engine": [], "search bare": [], "add engine": [], "add bare": []}
    agree, reference = True, None
    for r in range(args.rounds):
        for measured in (True, False) if r % 2 == 0 else (False, True):
            seconds, found = search(measured)
            times["search engine" if measured else "search bare"].append(seconds)
            reference = reference if reference is not None else found
            agree = agree and found == reference
        for extend in (True, False) if r % 2 == 0 else (False, True):
            times["add engine" if extend else "add bare"].append(added(extend))
    med = {k: statistics.median(v) for k, v in times.items()}
    print_table(f"a registry of {count} references: {args.queries} queries, one thread; one reference added", [
        {"what": "search per query (ms)", "engine": med["search engine"] * 1000, "bare": med["search bare"] * 1000,
         "ratio": med["search engine"] / med["search bare"],
         "rounds": " ".join(f"{e / b:.2f}" for e, b in zip(times["search engine"], times["search bare"])),
         "same matches": agree},
        {"what": "index after one added (s)", "engine": med["add engine"], "bare": med["add bare"],
         "ratio": med["add engine"] / med["add bare"],
         "rounds": " ".join(f"{e / b:.3f}" for e, b in zip(times["add engine"], times["add bare"])),
         "same matches": ""},
    ])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
