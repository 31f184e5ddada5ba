"""Safe image loading and atomic writing vs bare Pillow.

artengine reads every image through a format allowlist, a pixel limit, EXIF transposition
and one RGB normalisation path, and writes through temp file + fsync + os.replace. This
measures what that safety costs against ``Image.open(p).convert("RGB")`` and a plain
``image.save(p)``. Target: loading <= 1.10x bare; atomic PNG write <= 1.10x bare. It also
measures the load of a job's own PNGs, which open_image reads with its own reader
(``io.decode_png_up``), against Pillow's decode of the same files.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, side_by_side  # noqa: E402

from artengine import atomic_save_image, open_image  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    # Smooth content compresses like real art, unlike white noise.
    base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((512, 512), Image.Resampling.BICUBIC)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
            path = folder / f"img{suffix}"
            image.save(path, format=fmt)
            engine_s, bare_s = side_by_side(
                lambda: open_image(path), lambda: Image.open(path).convert("RGB"), repeat=15, number=10)
            rows.append({"stage": f"load 512x512 {fmt}", "engine_ms": engine_s * 1e3,
                         "bare_ms": bare_s * 1e3, "ratio": engine_s / bare_s, "target": "<= 1.10"})
        # A job's own PNGs (docs/generation.md, step 6): marked images, ISA-L at level 1, every
        # row filtered Up, a manifest-sized iTXt chunk. open_image reads these with
        # decode_png_up; the bare baseline is Pillow's decode of the same file.
        from artengine.io import encode_image
        from artengine_plugins.watermark import SpreadTransformWatermark

        scheme = SpreadTransformWatermark(bytes(range(32)))
        for side in (256, 512):
            smooth = Image.fromarray(base).resize((side, side), Image.Resampling.LANCZOS)
            marked = scheme.embed(smooth, bytes(6))
            path = folder / f"job-{side}.png"
            path.write_bytes(encode_image(marked, text={"artengine.manifest": "{" + "x" * 2000 + "}"},
                                          compress_level=1, strategy="isal", png_filter="up"))
            engine_s, bare_s = side_by_side(
                lambda: open_image(path), lambda: Image.open(path).convert("RGB"), repeat=15, number=20)
            rows.append({"stage": f"load a job's {side}x{side} PNG", "engine_ms": engine_s * 1e3,
                         "bare_ms": bare_s * 1e3, "ratio": engine_s / bare_s, "target": "-"})
        out_engine, out_bare = folder / "a.png", folder / "b.png"
        engine_s, bare_s = side_by_side(
            lambda: atomic_save_image(out_engine, image), lambda: image.save(out_bare), repeat=9, number=3)
        rows.append({"stage": "write 512x512 PNG", "engine_ms": engine_s * 1e3,
                     "bare_ms": bare_s * 1e3, "ratio": engine_s / bare_s, "target": "<= 1.10"})
    print_table("safe image I/O vs bare Pillow", rows)


if __name__ == "__main__":
    main()
