"""A corpus of real images for benchmarks, assembled from what this machine can install.

No dataset download is possible here, so accuracy benchmarks draw real photographs (and
some artwork) from two kept sources:

* scikit-image's bundled sample photographs (``pip install scikit-image``, in the
  ``bench`` extra): astronaut, cat, coffee, rocket, motorcycle, coins, moon, textures...
* Debian wallpaper packages (``benchmarks/setup.sh`` installs them): 24 high-resolution
  photographs and paintings under /usr/share/backgrounds.

:func:`photo_patches` cuts random square crops (random position and scale) out of them,
so a few dozen sources give thousands of distinct real-image test inputs. Crops of the
same source can share texture (sky, water): benchmarks that count false matches should
treat crops of one source as one group where that matters.
"""
from __future__ import annotations

import functools
from collections.abc import Collection
from pathlib import Path

import numpy as np
from PIL import Image

WALLPAPER_DIRS = (Path("/usr/share/backgrounds"),)
_SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "clock_motion.png",
)


def photo_sources() -> list[Path]:
    """Paths of the real images available on this machine, sorted."""
    found: list[Path] = []
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        found += [data / name for name in _SKIMAGE_PHOTOS if (data / name).exists()]
    except ImportError:
        pass
    for folder in WALLPAPER_DIRS:
        if folder.is_dir():
            found += sorted(p for p in folder.glob("*.jpg"))
    return found


@functools.lru_cache(maxsize=4)
def load_photos(max_side: int = 1536) -> tuple[tuple[str, Image.Image], ...]:
    """Every source, RGB, downscaled so its longer side is at most ``max_side``."""
    photos = []
    for path in photo_sources():
        with Image.open(path) as im:
            im.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced scale
            rgb = im.convert("RGB")
        scale = max_side / max(rgb.size)
        if scale < 1:
            rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS)
        photos.append((path.stem, rgb))
    if not photos:
        raise RuntimeError("no real images found: run benchmarks/setup.sh (scikit-image and "
                           "Debian wallpaper packages)")
    return tuple(photos)


def photo_patches(size: int, count: int, *, seed: int = 0, min_fraction: float = 0.25,
                  max_fraction: float = 0.9, sources: Collection[str] | None = None,
                  ) -> list[tuple[str, Image.Image]]:
    """``count`` random square crops resized to ``size``, as ``(source name, image)``.

    Each crop's side is a random fraction of its source's shorter side, so patches range
    from close-ups to whole-scene views. ``sources`` (names, i.e. file stems) limits the
    pictures cut from. Deterministic for a seed.
    """
    photos = load_photos()
    if sources is not None:
        photos = tuple(p for p in photos if p[0] in set(sources))
        if not photos:
            raise ValueError("none of the requested source pictures is available")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        name, photo = photos[int(rng.integers(len(photos)))]
        short = min(photo.size)
        side = max(size // 2, int(short * rng.uniform(min_fraction, max_fraction)))
        side = min(side, short)
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        patch = photo.crop((left, top, left + side, top + side))
        out.append((name, patch.resize((size, size), Image.Resampling.LANCZOS)))
    return out
