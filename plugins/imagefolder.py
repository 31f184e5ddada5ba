"""The built-in ``imagefolder`` dataset: any folder of images (``--data PATH``).

Class labels come from the first level of subfolders (``cats/a.png`` has class ``cats``);
images directly in the root make the set unlabelled. Every file is read through
artengine's safe loader once, centre-cropped to a square and resized to the training size,
and kept in memory (a 64x64 set of 10,000 images is 123 MB). Unreadable files (corrupt,
truncated, foreign formats, decompression bombs) are skipped and counted, never a crash.

Files are read on one thread per core, and a JPEG larger than needed is decoded at a
reduced scale (no smaller than 3x the training size; see :data:`READ_GAP`), as Pillow's
``thumbnail`` does (figures: ``benchmarks/bench_imagefolder.py``, docs/training.md).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from artengine import Dataset, ImageLoadError, InputError, Sample, hookimpl, iter_image_files, open_image, usable_cores

ARTENGINE_HOOK_API = "1.0"

log = logging.getLogger("artengine.data")


@dataclass
class ImageFolderSet:
    """Images of a folder, square-cropped to ``image_size`` (an :class:`artengine.ImageSet`)."""

    root: Path
    image_size: int
    classes: Sequence[str]
    pixels: np.ndarray  # (N, size, size, 3) uint8
    labels: list[int | None]
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def attributes(self) -> Mapping[str, Sequence[str]]:
        return {"class": list(self.classes)} if self.classes else {}

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Sample:
        label = self.labels[index]
        name = self.classes[label] if label is not None else ""
        return Sample(
            image=Image.fromarray(self.pixels[index], mode="RGB"),
            label=label,
            caption=f"a picture of {name}" if name else "",
            attributes={"class": name} if name else {},
            source=self.sources[index],
        )


#: A file is read at no less than this many times the training size (a JPEG decoded at a
#: reduced scale down to it) and reduced the rest of the way with a Lanczos filter.
READ_GAP = 3


def square_resize(image: Image.Image, size: int, full_size: tuple[int, int] | None = None) -> Image.Image:
    """Centre-crop to a square, then resize to ``size`` with a Lanczos filter.

    ``full_size``: the image's size at full scale when it was decoded at a reduced one
    (:attr:`artengine.LoadedImage.full_size`): the square is the full-scale one, its edges
    scaled to fractional pixels (rounded to whole reduced pixels, they would shift it by up
    to half a reduced pixel: at 1/8 scale, 0.1 px of a 64 px image, which on fine texture
    cost 1.16 grey levels on average against 0.14 in place)."""
    width, height = full_size or image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if (width, height) == image.size:
        square = image.crop((left, top, left + side, top + side))
        return square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=float(READ_GAP))
    sx, sy = image.width / width, image.height / height
    box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
    return image.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=float(READ_GAP))


def open_folder(source: str | None, *, image_size: int = 64, seed: int = 0, **_: object) -> ImageFolderSet:
    """Scan ``source`` recursively and load every readable image."""
    if source is None:
        raise InputError("imagefolder: a folder path is required (--data PATH)")
    root = Path(source)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    files = list(iter_image_files([root]))
    class_names = sorted({f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1})
    index = {name: i for i, name in enumerate(class_names)}
    pixels, labels, sources, skipped = [], [], [], []

    def read(path: Path) -> np.ndarray | str:
        """The file's pixels at the training size, or why it cannot be read."""
        try:
            loaded = open_image(path, min_side=READ_GAP * image_size)
        except ImageLoadError as exc:
            return exc.reason
        return np.asarray(square_resize(loaded.rgb, image_size, loaded.full_size), dtype=np.uint8)

    # Decoding and resizing release the GIL: one thread per core, results in file order.
    # Stopped early (Ctrl-C), the files not yet begun are dropped, not read.
    pool = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="artengine-imagefolder")
    try:
        read_files = pool.map(read, files)
        for path, result in tqdm(zip(files, read_files), total=len(files), desc=f"reading {root.name}", unit="img",
                                 disable=None, leave=False):
            if isinstance(result, str):
                skipped.append((str(path), result))
                continue
            rel = path.relative_to(root).parts
            labels.append(index[rel[0]] if len(rel) > 1 else None)
            pixels.append(result)
            sources.append(str(path))
    finally:
        pool.shutdown(cancel_futures=True)
    if skipped:
        first_path, first_reason = skipped[0]
        log.warning("imagefolder %s: skipped %d unreadable file(s) of %d (first: %s: %s)",
                    root, len(skipped), len(files), first_path, first_reason)
    if not sources:
        raise InputError(f"{root}: no readable images found ({len(skipped)} unreadable)")
    if class_names and any(label is None for label in labels):
        # A mix of root-level and class-folder images: the root ones get no class.
        log.warning("imagefolder %s: %d image(s) outside class folders are unlabelled",
                    root, sum(label is None for label in labels))
    return ImageFolderSet(
        root=root,
        image_size=image_size,
        classes=class_names,
        pixels=np.stack(pixels),
        labels=labels,
        sources=sources,
        skipped=skipped,
    )


@hookimpl
def artengine_datasets() -> list[Dataset]:
    return [
        Dataset(
            name="imagefolder",
            description="any folder of images (--data PATH); class labels from subfolders; "
            "unreadable files skipped and counted",
            open=open_folder,
            handles_paths=True,
        )
    ]
