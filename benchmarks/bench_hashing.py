"""Perceptual hashing and Hamming search speed, side by side with the bare baselines.

* pHash of a 512x512 RGB image: ``artengine.hashing.phash`` (reduce, then imagehash)
  vs ``imagehash.phash`` on the same images, plus how many bits apart they are.
  Target: >= 1500 img/s, i.e. >= 2.45x imagehash's ~613 img/s, mean <= 2 bits apart.
* Every hash the audit computes per image (``query_hashes``: pHash, dHash and equalised
  pHash of the image, its mirror and its two bands, quality and colour) and per reference
  (``reference_hashes``: 21 variants); and the audit's way, a chunk of 32 images at a time
  (``query_hashes_many``), against ``query_hashes`` image by image on the same images.
* One query against 1e6 and 1e7 ``uint64`` hashes: ``hamming_within`` (chunked, shared
  buffers) vs a naive numpy expression. Targets: <= 2 ms at 1e6, <= 15 ms at 1e7.
* A search's first step against registries of 2,000, 20,000, 100,000 and (without
  ``--quick``) 500,000 references of 21 rows each: an image's 6 whole variants and 2 bands within pHash
  16 (the publication policy's bound), ``_Index.pairs_within`` (each band's queries scan only
  that band's rows) vs ``hamming_within`` over every row, the same pairs.

    .venv/bin/python benchmarks/bench_hashing.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imagehash
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, side_by_side, timeit  # noqa: E402
from photos import photo_patches  # noqa: E402

from artengine import query_hashes, query_hashes_many, reference_hashes  # noqa: E402
from artengine.hashing import (  # noqa: E402
    BAND_VARIANTS,
    COLUMNS,
    QUERY_VARIANTS,
    REFERENCE_VARIANTS,
    hamming_within,
    phash,
)
from artengine.registry import _Index  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1e7 search")
    args = parser.parse_args()

    images = [im for _, im in photo_patches(512, 64, seed=11)]
    apart = [imagehash.phash(im) - phash(im) for im in images]

    def each(fn):
        return lambda: [fn(im) for im in images]

    ours, bare = side_by_side(each(phash), each(imagehash.phash), repeat=7)
    n = len(images)
    rows = [{"stage": "pHash 512x512", "engine_img_s": n / ours, "imagehash_img_s": n / bare,
             "speedup": bare / ours, "bits_apart_mean": float(np.mean(apart)),
             "bits_apart_max": int(max(apart)), "target": ">= 1500 img/s, mean <= 2 bits"}]
    q = timeit(each(query_hashes), repeat=5)
    r = timeit(lambda: [reference_hashes(im) for im in images[:16]], repeat=3)
    rows.append({"stage": f"all query hashes ({len(QUERY_VARIANTS)} variants x {len(COLUMNS)}, quality, colour)",
                 "engine_img_s": n / q,
                 "imagehash_img_s": n / bare, "speedup": bare / q, "bits_apart_mean": "",
                 "bits_apart_max": "", "target": "report"})
    rows.append({"stage": f"all reference hashes ({len(REFERENCE_VARIANTS)} variants x {len(COLUMNS)})",
                 "engine_img_s": 16 / r,
                 "imagehash_img_s": n / bare, "speedup": (16 / r) / (n / bare), "bits_apart_mean": "",
                 "bits_apart_max": "", "target": "report"})
    chunked, single = side_by_side(lambda: [query_hashes_many(images[k:k + 32]) for k in range(0, n, 32)],
                                   each(query_hashes), repeat=7)
    rows.append({"stage": "all query hashes, chunks of 32 (query_hashes_many; bare: image by image)",
                 "engine_img_s": n / chunked, "imagehash_img_s": "", "speedup": single / chunked,
                 "bits_apart_mean": "", "bits_apart_max": "", "target": "report"})
    print_table("perceptual hashing, one core", rows)

    rng = np.random.default_rng(0)
    search_rows = []
    sizes = (1_000_000,) if args.quick else (1_000_000, 10_000_000)
    for size in sizes:
        table = rng.integers(0, 2**63, size=size, dtype=np.uint64) * 2 + 1
        query = np.uint64(table[size // 2] ^ np.uint64(0b1011))  # one planted neighbour at distance 3

        def engine():
            return hamming_within(table, [query], 10)

        def naive():
            return np.flatnonzero(np.bitwise_count(table ^ query) <= 10)

        assert size // 2 in engine()[1] and size // 2 in naive()
        e, b = side_by_side(engine, naive, repeat=9)
        e2, _ = side_by_side(lambda: hamming_within(table, [query, ~query], 10), naive, repeat=5)
        # One audited image: as many pHash queries as query variants (image, mirror, bands).
        four = [query ^ np.uint64(k) for k in range(len(QUERY_VARIANTS))]
        e4, _ = side_by_side(lambda: hamming_within(table, four, 10), naive, repeat=5)
        search_rows.append({"hashes": f"{size:.0e}", "engine_ms": e * 1e3, "naive_numpy_ms": b * 1e3,
                            "ratio": e / b, "engine_2_queries_ms": e2 * 1e3,
                            f"engine_{len(QUERY_VARIANTS)}_queries_ms": e4 * 1e3,
                            "target_ms": 2.0 if size == 1_000_000 else 15.0})
    print_table("Hamming search, one 64-bit query, radius 10", search_rows)

    registry_rows = []
    kinds = [None] * 6 + list(BAND_VARIANTS)  # the image, mirrored, flipped, turned 3 ways; its bands
    for refs in (2_000, 20_000, 100_000) if args.quick else (2_000, 20_000, 100_000, 500_000):
        n = refs * len(REFERENCE_VARIANTS)
        columns = {a: rng.integers(0, 2**63, size=n, dtype=np.uint64) for a in COLUMNS}
        variants = np.tile(np.arange(len(REFERENCE_VARIANTS), dtype=np.uint8), refs)
        index = _Index("bench", 1, columns, np.repeat(np.arange(refs), len(REFERENCE_VARIANTS)), variants,
                       REFERENCE_VARIANTS, np.zeros((n, 3), np.float32))
        queries = columns["phash"][rng.integers(0, n, len(kinds))] ^ np.uint64(0b1011)
        index.pairs_within(queries, kinds, True, 16)  # its band rows gathered once per open index
        e, b = side_by_side(lambda: index.pairs_within(queries, kinds, True, 16),
                            lambda: hamming_within(columns["phash"], queries, 16), repeat=9 if refs < 500_000 else 5,
                            number=20 if refs <= 2_000 else 1)
        registry_rows.append({"references": refs, "rows": n, "by_kind_ms": e * 1e3, "every_row_ms": b * 1e3,
                              "ratio": e / b})
    print_table("a search's first step, 6 whole variants and 2 bands, pHash <= 16", registry_rows)


if __name__ == "__main__":
    main()
