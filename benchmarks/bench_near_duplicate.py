"""Near-duplicate detection accuracy: recall per transform and false-positive rate.

A registry is built (through ``ReferenceRegistry.add``, the production path) from real
photographs (random crops of the scikit-image samples and Debian wallpapers, see
photos.py) and built-in ``shapes`` images. Every reference is then transformed (JPEG,
resize, crop, mirror, rotation, blur, brightness/contrast, colour shift, text overlay) and
searched for with the audit's own decision (``classify``) at the policy's default
thresholds: recall counts "fail" findings naming the right reference; images too flat for
a reliable hash are "unknown" (blocked, but not counted as found); ``blocked_total`` is
the share of copies that could not be published either way. Distractors are
photographs from *other* source pictures than the references, and shapes from another
seed; any match for them is a false positive.

Side by side: imagededup's method (one pHash per image, full image only, Hamming distance
<= 10), on the same images.

Targets (issue #4): recall >= 0.98 on photometric transforms and resizes, >= 0.9 on crops
<= 10 % and mirror images; false-positive rate <= 1e-3 per query.

    .venv/bin/python benchmarks/bench_near_duplicate.py [--quick] [--sweep]
"""
from __future__ import annotations

import argparse
import colorsys
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from photos import photo_patches  # noqa: E402

from artengine import ReferenceRegistry, query_hashes  # noqa: E402
from artengine.hashing import hamming, hash_value  # noqa: E402
from artengine import MIN_RELIABLE_QUALITY  # noqa: E402
from artengine_plugins.near_duplicate import DEFAULT_MAX_DHASH, DEFAULT_MAX_PHASH, classify  # noqa: E402
from artengine_plugins.shapes import ShapesSet  # noqa: E402

IMAGEDEDUP_PHASH_THRESHOLD = 10  # imagededup's default max_distance_threshold


# ----------------------------------------------------------------------------- transforms


def jpeg(quality: int) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    def apply(im: Image.Image, rng: np.random.Generator) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return apply


def resize(factor: float):
    def apply(im, rng):
        return im.resize((max(8, round(im.width * factor)), max(8, round(im.height * factor))),
                         Image.Resampling.BILINEAR)
    return apply


def crop(fraction: float):
    """Remove ``fraction`` of the width and of the height, at a random position."""
    def apply(im, rng):
        w, h = im.size
        cw, ch = round(w * (1 - fraction)), round(h * (1 - fraction))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return im.crop((left, top, left + cw, top + ch))
    return apply


def rotate(degrees: float):
    def apply(im, rng):
        sign = 1 if rng.random() < 0.5 else -1
        return im.rotate(sign * degrees, Image.Resampling.BILINEAR)
    return apply


def mirror(im, rng):
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def blur(im, rng):
    return im.filter(ImageFilter.GaussianBlur(radius=max(1.0, im.width / 256)))


def brightness_contrast(im, rng):
    b = rng.choice([0.7, 1.3])
    c = rng.choice([0.7, 1.3])
    return ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(b)).enhance(c)


def colour_shift(im, rng):
    """Shift each channel by up to +-20 levels (albumentations' RGBShift defaults)."""
    shift = rng.integers(-20, 21, size=3)
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + shift, 0, 255).astype(np.uint8))


def hue_saturation(im, rng):
    """Rotate hues by up to +-40 degrees, scale saturation by up to +-30 % (albumentations'
    HueSaturationValue defaults, in Pillow's 0-255 hue scale)."""
    hsv = np.asarray(im.convert("HSV")).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-28, 29))) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.7, 1.3), 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")


def text_overlay(im, rng):
    out = im.copy()
    draw = ImageDraw.Draw(out)
    size = max(10, im.height // 12)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        font = ImageFont.load_default()
    y = int(rng.integers(0, max(1, im.height - 2 * size)))
    draw.text((im.width // 20, y), "© studio 2026 — sample", fill=(255, 255, 255), font=font,
              stroke_width=max(1, size // 10), stroke_fill=(0, 0, 0))
    return out


TRANSFORMS: dict[str, tuple[str, Callable]] = {
    "exact copy": ("photometric", lambda im, rng: im),
    "jpeg q95": ("photometric", jpeg(95)),
    "jpeg q75": ("photometric", jpeg(75)),
    "jpeg q50": ("photometric", jpeg(50)),
    "blur": ("photometric", blur),
    "brightness/contrast": ("photometric", brightness_contrast),
    "colour shift": ("photometric", colour_shift),
    "text overlay": ("photometric", text_overlay),
    "resize 0.9": ("resize", resize(0.9)),
    "resize 0.7": ("resize", resize(0.7)),
    "resize 0.5": ("resize", resize(0.5)),
    "mirror": ("mirror", mirror),
    "crop 5%": ("crop <= 10%", crop(0.05)),
    "crop 10%": ("crop <= 10%", crop(0.10)),
    "crop 15%": ("reported", crop(0.15)),
    "crop 20%": ("reported", crop(0.20)),
    "rotate 2°": ("reported", rotate(2)),
    "rotate 5°": ("reported", rotate(5)),
    "hue/saturation": ("reported", hue_saturation),
}
TARGETS = {"photometric": 0.98, "resize": 0.98, "mirror": 0.9, "crop <= 10%": 0.9, "reported": None}


# ----------------------------------------------------------------------------- corpus


def corpus(n_photos: int, n_shapes: int, seed: int):
    """(references, distractors): lists of (group, image). Distractor photographs come from
    source pictures no reference was cut from."""
    patches = photo_patches(384, 2 * n_photos + 200, seed=seed)
    sources = sorted({name for name, _ in patches})
    ref_sources = set(sources[::2])
    refs = [("photo", im) for name, im in patches if name in ref_sources][:n_photos]
    distract = [("photo", im) for name, im in patches if name not in ref_sources][:n_photos]
    shapes_a = ShapesSet(image_size=128, seed=seed)
    shapes_b = ShapesSet(image_size=128, seed=seed + 1000)
    refs += [("shapes", shapes_a[i].image) for i in range(n_shapes)]
    distract += [("shapes", shapes_b[i].image) for i in range(n_shapes)]
    return refs, distract


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller corpus (about a minute)")
    parser.add_argument("--sweep", action="store_true", help="also print a threshold sweep")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    n_photos, n_shapes = (120, 40) if args.quick else (400, 150)
    refs, distractors = corpus(n_photos, n_shapes, args.seed)
    thresholds = {"phash": DEFAULT_MAX_PHASH, "dhash": DEFAULT_MAX_DHASH}
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "refs"
        folder.mkdir()
        files = []
        for i, (_, im) in enumerate(refs):
            files.append(folder / f"ref{i:05d}.png")
            im.save(files[-1])
        start = time.perf_counter()
        registry = ReferenceRegistry(Path(tmp) / "refs.db", create=True)
        registry.add(files, licence="test", source="bench")
        add_s = time.perf_counter() - start
        index = registry.index()
        ref_id_of = {registry.reference(int(r)).source_path: int(r) for r in np.unique(index.ref_ids)}
        true_ids = [ref_id_of[str(f.resolve())] for f in files]
        # imagededup's method: one pHash of each full image.
        dedup_refs = np.array([hash_value(imagehash.phash(im)) for _, im in refs], dtype=np.uint64)

        rows, per_group = [], {}
        sweep_data = []  # (transform, true ref row mask per query) for --sweep
        for name, (group, fn) in TRANSFORMS.items():
            hits = dedup_hits = unknown = 0
            by_corpus = {"photo": [0, 0], "shapes": [0, 0]}
            for (kind, im), true_id in zip(refs, true_ids):
                copy = fn(im, rng)
                hashes = query_hashes(copy)
                outcome, matches = classify(hashes, [registry], thresholds, MIN_RELIABLE_QUALITY)
                found = outcome == "fail" and any(m.reference.id == true_id for m in matches)
                hits += found
                by_corpus[kind][0] += found
                by_corpus[kind][1] += 1
                unknown += outcome == "unknown"
                q = hash_value(imagehash.phash(copy))
                dedup_hits += int(hamming(dedup_refs[true_ids.index(true_id)], q)) <= IMAGEDEDUP_PHASH_THRESHOLD
                if args.sweep:
                    sweep_data.append((group, true_id, hashes))
            n = len(refs)
            recall = hits / n
            per_group.setdefault(group, []).append(recall)
            rows.append({"transform": name, "class": group, "recall": recall,
                         "photos": by_corpus["photo"][0] / max(1, by_corpus["photo"][1]),
                         "shapes": by_corpus["shapes"][0] / max(1, by_corpus["shapes"][1]),
                         "blocked_unknown": unknown / n,
                         "blocked_total": (hits + unknown) / n,
                         "imagededup_phash10": dedup_hits / n,
                         "target": TARGETS[group] if TARGETS[group] is not None else "report"})

        false_pos = dedup_fp = unknown_d = pair_fp = photo_pair_fp = 0
        n_photo_refs = sum(kind == "photo" for kind, _ in refs)
        fp_by = {"photo": [0, 0], "shapes": [0, 0]}
        distractor_hashes = []
        for kind, im in distractors:
            hashes = query_hashes(im)
            distractor_hashes.append(hashes)
            outcome, matches = classify(hashes, [registry], thresholds, MIN_RELIABLE_QUALITY)
            false_pos += outcome == "fail"
            pair_fp += len(matches) if outcome == "fail" else 0
            fp_by[kind][0] += outcome == "fail"
            if kind == "photo" and outcome == "fail":
                photo_pair_fp += sum(refs[true_ids.index(m.reference.id)][0] == "photo" for m in matches)
            fp_by[kind][1] += 1
            unknown_d += outcome == "unknown"
            q = hash_value(imagehash.phash(im))
            dedup_fp += bool((hamming(dedup_refs, q) <= IMAGEDEDUP_PHASH_THRESHOLD).any())
        nd = len(distractors)
        print_table(f"near-duplicate recall per transform (registry: {len(refs)} references, "
                    f"thresholds pHash <= {thresholds['phash']} and dHash <= {thresholds['dhash']})", rows)
        summary = [{
            "distractors": nd,
            "references": len(refs),
            "fp_rate_per_query": false_pos / nd,
            "fp_photos": fp_by["photo"][0] / max(1, fp_by["photo"][1]),
            "fp_shapes": fp_by["shapes"][0] / max(1, fp_by["shapes"][1]),
            "fp_rate_per_pair": pair_fp / (nd * len(refs)),
            "fp_per_pair_photos": photo_pair_fp / (fp_by["photo"][1] * n_photo_refs),
            "imagededup_fp_per_query": dedup_fp / nd,
            "distractors_blocked_unknown": unknown_d / nd,
            "target": "fp per query <= 1e-3",
            "registry_add_img_per_s": len(refs) / add_s,
        }]
        print_table("false positives on distractors (images not in the registry)", summary)
        groups = [{"class": g, "min_recall": min(v), "mean_recall": float(np.mean(v)),
                   "target": TARGETS[g] if TARGETS[g] is not None else "report"} for g, v in per_group.items()]
        print_table("recall by class of transform", groups)
        if args.sweep:
            _sweep(index, sweep_data, distractor_hashes)
        registry.close()


def _sweep(index, sweep_data, distractor_hashes) -> None:
    """Recall by class and per-query false-positive rate for other threshold pairs."""
    P, D = index.columns["phash"], index.columns["dhash"]

    def best(hashes):
        p = np.bitwise_count(P[None, :] ^ hashes["phash"][:, None]).astype(np.int16)
        d = np.bitwise_count(D[None, :] ^ hashes["dhash"][:, None]).astype(np.int16)
        return p, d

    rows = []
    pairs = [(tp, td) for tp in (8, 10, 12, 14, 16) for td in (10, 12, 14, 16, 18)]
    stats = {pair: {"fp": 0, "rec": {}} for pair in pairs}
    for hashes in distractor_hashes:
        p, d = best(hashes)
        for tp, td in pairs:
            stats[(tp, td)]["fp"] += bool(((p <= tp) & (d <= td)).any())
    for group, true_id, hashes in sweep_data:
        p, d = best(hashes)
        mine = index.ref_ids == true_id
        for tp, td in pairs:
            hit = bool(((p[:, mine] <= tp) & (d[:, mine] <= td)).any())
            stats[(tp, td)]["rec"].setdefault(group, []).append(hit)
    for (tp, td), s in stats.items():
        row = {"phash": tp, "dhash": td, "fp_per_query": s["fp"] / len(distractor_hashes)}
        for group, hits in s["rec"].items():
            row[group] = float(np.mean(hits))
        rows.append(row)
    print_table("threshold sweep (recall averaged over the transforms of each class)", rows)


if __name__ == "__main__":
    main()
