"""Shared helpers for benchmarks: time two things side by side, print the ratio.

Convention for every script in benchmarks/:
- It measures artengine's path and a bare baseline written in the script itself, in the
  same process and run, interleaved, so machine noise hits both alike.
- It prints a table of absolute figures (for context) and the ratio (the figure that
  matters), and, last, one JSON line starting with ``RESULT`` for tooling.
- It never fails on a slow machine; targets are printed beside the ratios, not asserted.
"""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def timeit(fn: Callable[[], Any], *, repeat: int = 7, number: int = 1, warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` rounds of ``number`` calls."""
    for _ in range(warmup):
        fn()
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return statistics.median(rounds)


def side_by_side(engine: Callable[[], Any], bare: Callable[[], Any], *, repeat: int = 7,
                 number: int = 1) -> tuple[float, float]:
    """Median seconds per call of ``engine`` and ``bare``, measured in alternation."""
    engine(), bare()  # warm both
    e_times, b_times = [], []
    for _ in range(repeat):
        for fn, sink in ((engine, e_times), (bare, b_times)):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            sink.append((time.perf_counter() - start) / number)
    return statistics.median(e_times), statistics.median(b_times)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print rows (dicts with the same keys) as an aligned table, then a RESULT line."""
    print(f"\n{title}")
    if rows:
        keys = list(rows[0])
        widths = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for r in rows:
            print("  ".join(_fmt(r[k]).ljust(widths[k]) for k in keys))
    print("RESULT " + json.dumps({"benchmark": title, "rows": rows}))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3g}"
    return str(value)


def generation_setup(prefix: str, run: Path | None, arch: str = "cgan",
                     image_size: int = 32, registry: Path | None = None) -> tuple[Path, Path, Path]:
    """A temporary folder for a generation benchmark: keys, ledger and a fixed job time in
    the environment; the model (``run``, or a tiny one of ``arch`` trained now: the
    benchmarks are about the pipeline, not image quality); and a registry of a few
    references, so the near-duplicate audit really searches (``registry``, when given,
    instead). Returns (folder, run, registry)."""
    import os
    import tempfile

    from PIL import Image

    from artengine.provenance import init_keys
    from artengine.registry import add_to_registry
    from artengine.training import TrainOptions, train

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["ARTENGINE_KEYS"] = str(tmp / "keys")
    os.environ["ARTENGINE_LEDGER"] = str(tmp / "ledger.sqlite")
    os.environ["SOURCE_DATE_EPOCH"] = "1790000000"
    init_keys(tmp / "keys")
    if run is None:
        run = tmp / "run"
        labels = {"label_attribute": "colour"} if arch == "cgan" else {}
        train(TrainOptions(out=run, arch=arch, data="shapes", steps=2, batch_size=16, data_length=64,
                           image_size=image_size, progress=False, checkpoint_every=2, sample_every=2, **labels))
    if registry is not None:
        return tmp, run, registry
    refs = tmp / "refs"
    refs.mkdir()
    for i in range(16):
        Image.new("RGB", (64, 64), (i * 15, 255 - i * 15, 80)).save(refs / f"r{i}.png")
    add_to_registry(tmp / "refs.db", [refs], licence="bench", source="bench")
    return tmp, run, tmp / "refs.db"
