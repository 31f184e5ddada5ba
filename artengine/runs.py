"""The training run directory: what a run leaves on disk and how to read it back.

::

    RUN/
      config.json          architecture, full config, image size, z dim, class and style
                           names, dataset spec, seed, engine and plugin versions
      training_data.json   exactly what was trained on: dataset spec, seed, length, label
                           attribute, class and attribute counts, and for folders every
                           file (path, sha256, label)
      checkpoints/step-000001000.safetensors   last K checkpoints (see artengine.checkpoints)
      metrics.jsonl        one JSON line per logging interval (losses, it/s, images seen)
      samples/step-000001000.png   fixed-noise sample grids
      loss_curve.svg       losses against steps, redrawn at every checkpoint
      evaluation.json      written by ``artengine evaluate``
      evaluation-step-000001000.json   ``artengine evaluate --checkpoint 1000``

Every file is written atomically except ``metrics.jsonl``, which is appended one whole line
per ``write`` and cut back to the resumed checkpoint's step on resume, so the curve never
holds steps that the weights did not see.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError
from .io import atomic_write_bytes, atomic_write_text

RUN_CONFIG = "config.json"
TRAINING_DATA = "training_data.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples"
LOSS_CURVE = "loss_curve.svg"
EVALUATION = "evaluation.json"
RUN_FORMAT = "artengine-run/1"


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``config.json``; a missing or broken one is an input error naming it."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise InputError(f"{run_dir}: not a training run (no {RUN_CONFIG})")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable run config ({exc})") from None
    if config.get("format") != RUN_FORMAT:
        raise InputError(f"{path}: not an artengine run config (format {config.get('format')!r})")
    return config


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a run config."""
    return (Path(path) / RUN_CONFIG).is_file()


# ----------------------------------------------------------------------------- metrics


class MetricsLog:
    """Appends metric records to ``metrics.jsonl``, one whole line per write."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / METRICS
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: Mapping[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        os.write(self._fd, line)  # one write on O_APPEND: a kill leaves whole lines or a torn tail

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete record of ``metrics.jsonl`` (a torn last line is ignored)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    records = []
    for raw in path.read_bytes().split(b"\n")[:-1]:
        try:
            records.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Keep only records up to ``step`` (used when a run resumes from that checkpoint)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    kept = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= step]
    atomic_write_bytes(path, b"".join((json.dumps(r, separators=(",", ":")) + "\n").encode() for r in kept))


# ----------------------------------------------------------------------------- loss curve

_COLOURS = ("#3b6fc4", "#d2452f", "#2f8f46", "#a26a00", "#7a3fb0")


def loss_curve_svg(records: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("loss_d", "loss_g"),
                   *, title: str = "training losses", width: int = 720, height: int = 300) -> str:
    """A standalone SVG line chart of ``keys`` against ``step``."""
    series = {k: [(float(r["step"]), float(r[k])) for r in records
                  if k in r and r[k] is not None and math.isfinite(float(r[k]))] for k in keys}
    series = {k: v for k, v in series.items() if v}
    pad_l, pad_r, pad_t, pad_b = 56, 16, 28, 36
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{pad_l}" y="18" font-size="13" font-weight="bold">{_esc(title)}</text>']
    points = [p for pts in series.values() for p in pts]
    if not points:
        out.append(f'<text x="{pad_l}" y="{height // 2}" font-size="12">no data yet</text></svg>')
        return "\n".join(out)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return pad_t + (1 - (y - y0) / (y1 - y0)) * plot_h

    out.append(f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>')
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<line x1="{pad_l}" x2="{pad_l + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{pad_l - 6}" y="{sy(y) + 4:.1f}" font-size="10" text-anchor="end">{y:.3g}</text>')
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{sx(x):.1f}" y="{height - 18}" font-size="10" text-anchor="middle">{x:.0f}</text>')
    out.append(f'<text x="{pad_l + plot_w / 2:.0f}" y="{height - 4}" font-size="11" text-anchor="middle">step</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        out.append(f'<text x="{pad_l + plot_w - 8}" y="{pad_t + 14 + 14 * i}" font-size="11" '
                   f'text-anchor="end" fill="{colour}">{_esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def write_loss_curve(run_dir: str | Path) -> Path:
    """Redraw ``loss_curve.svg`` from ``metrics.jsonl``."""
    return atomic_write_text(Path(run_dir) / LOSS_CURVE, loss_curve_svg(read_metrics(run_dir)))


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ----------------------------------------------------------------------------- summary


def latest_sample_grid(run_dir: str | Path) -> Path | None:
    """The newest sample grid PNG, if any."""
    folder = Path(run_dir) / SAMPLES
    grids = sorted(folder.glob("step-*.png")) if folder.is_dir() else []
    return grids[-1] if grids else None


def run_summary(run_dir: str | Path, keys: Iterable[str] = ("loss_d", "loss_g")) -> dict[str, Any]:
    """What a report shows about a run: path, architecture, step, loss curves as
    ``{name: [(step, value), ...]}``, the newest sample grid and the evaluation, if any."""
    config = read_run_config(run_dir)
    records = read_metrics(run_dir)
    curves = {k: [(r["step"], r[k]) for r in records if r.get(k) is not None] for k in keys}
    grid = latest_sample_grid(run_dir)
    evaluation_path = Path(run_dir) / EVALUATION
    evaluation = None
    if evaluation_path.is_file():
        try:
            evaluation = json.loads(evaluation_path.read_text())
        except (OSError, json.JSONDecodeError):
            evaluation = None
    return {
        "path": str(run_dir),
        "architecture": config.get("architecture"),
        "step": records[-1]["step"] if records else 0,
        "curves": {k: v for k, v in curves.items() if v},
        "sample_grid": str(grid) if grid else None,
        "evaluation": evaluation,
    }
