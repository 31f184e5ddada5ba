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
