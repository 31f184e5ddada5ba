"""The built-in ``imagefolder`` dataset: any folder of images (``--data PATH``).

Class labels come from the first level of subfolders (``cats/a.png`` has class ``cats``);
images directly in the root make the set unlabelled. Every file is read through
artengine's safe loader once, centre-cropped to a square and resized to the training size,
and kept in memory (a 64x64 set of 10,000 images is 123 MB). Unreadable files (corrupt,
truncated, foreign formats, decompression bombs) are skipped and counted, never a crash.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from artengine import Dataset, ImageLoadError, InputError, Sample, hookimpl, iter_image_files, open_image

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


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to ``size`` with a Lanczos filter."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


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
    for path in tqdm(files, desc=f"reading {root.name}", unit="img", disable=None, leave=False):
        try:
            loaded = open_image(path)
        except ImageLoadError as exc:
            skipped.append((str(path), exc.reason))
            continue
        rel = path.relative_to(root).parts
        labels.append(index[rel[0]] if len(rel) > 1 else None)
        pixels.append(np.asarray(square_resize(loaded.rgb, image_size), dtype=np.uint8))
        sources.append(str(path))
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
