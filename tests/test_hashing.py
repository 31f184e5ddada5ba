"""Perceptual hashing: compatible with imagehash, one shared downscale, correct search."""
from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from artengine import query_hashes, reference_hashes
from artengine.hashing import (
    BAND_GAP,
    COLUMNS,
    MIN_RELIABLE_QUALITY,
    QUERY_VARIANTS,
    REFERENCE_VARIANTS,
    dhash,
    hamming,
    hamming_within,
    hash_hex,
    hash_quality,
    hash_value,
    phash,
    reduce_for_hashing,
)


def artwork(seed: int, size: int = 512) -> Image.Image:
    """A detailed, unique test picture: a smooth colour field with random shapes."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(field).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 16, size // 3, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
    return im.filter(ImageFilter.GaussianBlur(1))


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    return [artwork(seed) for seed in range(24)]


def test_fast_phash_and_dhash_stay_within_two_bits_of_imagehash(pictures):
    p_apart = [imagehash.phash(im) - phash(im) for im in pictures]
    d_apart = [imagehash.dhash(im) - dhash(im) for im in pictures]
    assert np.mean(p_apart) <= 2.0, p_apart
    assert np.mean(d_apart) <= 2.0, d_apart


def test_hashes_are_imagehash_values_and_hex(pictures):
    h = imagehash.phash(pictures[0])
    value = hash_value(h)
    assert hash_hex(value) == str(h)
    assert imagehash.hex_to_hash(hash_hex(value)) == h


def _lanczos_cases(count: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Greyscale pixels and a size to resize them to: noise, two-level and smooth images,
    shrunk and enlarged, square, tall and wide (tall ones to a small height are resized
    columns first by Pillow 13, rows first otherwise)."""
    rng = np.random.default_rng(11)
    cases = [(rng.integers(0, 256, (128, 128), dtype=np.uint8), size) for size in ((32, 32), (9, 8), (64, 64))]
    cases += [(rng.integers(0, 256, (300, 100), dtype=np.uint8), (32, 32)),
              (rng.integers(0, 256, (100, 300), dtype=np.uint8), (9, 8)),
              (rng.integers(0, 256, (56, 128), dtype=np.uint8), (32, 32))]
    for i in range(count):
        height, width = (int(v) for v in rng.integers(1, 260, 2))
        size = tuple(int(v) for v in rng.integers(1, 180, 2))
        kind = i % 3
        if kind == 0:
            pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
        elif kind == 1:
            pixels = np.where(rng.random((height, width)) < 0.5, 0, 255).astype(np.uint8)
        else:
            pixels = np.clip(np.add.outer(np.arange(height), np.arange(width)) * rng.random() * 3, 0, 255).astype(np.uint8)
        cases.append((pixels, size))
    return cases


def test_the_hashes_lanczos_resize_gives_pillows_pixels():
    """The hashes' inputs are resized by matrix products with Pillow's own coefficients:
    the pixels must be Pillow's, whatever the sizes, so that every hash stays imagehash's,
    and from the matrix products, not from the fallback to Pillow (which is slower)."""
    from artengine.hashing import _lanczos_order, _passes, lanczos

    for pixels, size in _lanczos_cases(300):
        want = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
        order = _lanczos_order(*pixels.shape, size)
        assert order is not None, (pixels.shape, size)
        got = _passes(pixels, size, order)
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert np.array_equal(got, want), (pixels.shape, size, int(np.abs(got.astype(int) - want).max()))
        for _ in range(3):  # Pillow's first resizes of a pair of sizes, then the matrix products'
            assert np.array_equal(lanczos(pixels, size), want)
    turned = np.rot90(_lanczos_cases(0)[0][0])  # a view, as the quarter turns pass it
    assert np.array_equal(lanczos(turned, (9, 8)),
                          np.asarray(Image.fromarray(np.ascontiguousarray(turned)).resize((9, 8), Image.Resampling.LANCZOS)))


def test_the_lanczos_resize_leaves_sizes_it_cannot_match_to_pillow(monkeypatch):
    """Should Pillow's filter ever differ from the one computed here (another version), a
    size whose passes do not give Pillow's pixels on a probe image is resized by Pillow."""
    from artengine import hashing

    hashing._lanczos_order.cache_clear()
    hashing._lanczos_coefficients.cache_clear()
    monkeypatch.setattr(hashing, "_lanczos_weight", lambda x: 1.0 if -0.5 < x <= 0.5 else 0.0)  # a box filter
    try:
        for pixels, size in _lanczos_cases(20):
            if pixels.shape != size[::-1]:
                assert hashing._lanczos_order(*pixels.shape, size) is None, (pixels.shape, size)
            assert np.array_equal(hashing.lanczos(pixels, size),
                                  np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS)))
    finally:
        hashing._lanczos_order.cache_clear()
        hashing._lanczos_coefficients.cache_clear()


def test_reduce_keeps_small_images_and_shrinks_large_ones():
    small = Image.new("RGB", (100, 60))
    assert reduce_for_hashing(small) is small
    assert reduce_for_hashing(Image.new("RGB", (1024, 700))).size == (128, 140)


def test_query_hashes_hold_the_image_turned_over(pictures):
    """The mirror, flip, rotate180, rotate90 and rotate270 rows are exactly the rows of the
    image turned over (the flips computed from the image's own resized inputs)."""
    from artengine.hashing import TURNED_VARIANTS, hashing_gray

    assert QUERY_VARIANTS == ("full", "mirror", "flip", "rotate180", "rotate90", "rotate270", "band-top", "band-bottom")
    for im in pictures:
        q = query_hashes(im)
        assert q.values.shape == (8, len(COLUMNS)) and q.values.dtype == np.uint64
        for row, (name, method) in enumerate(TURNED_VARIANTS.items(), start=1):
            assert q.variants[row] == name
            turned = query_hashes(im.transpose(method))
            for column in COLUMNS:
                assert int(hamming(q[column][row], turned[column][0])) == 0, (name, column)
        gray = hashing_gray(im)  # and the full row is imagehash's on the shared intermediate
        assert q["phash"][0] == hash_value(imagehash.phash(gray))
        assert q["dhash"][0] == hash_value(imagehash.dhash(gray))


def _framed(im: Image.Image, fraction: float, colour, sides: str = "tblr") -> Image.Image:
    """``im`` with a flat border of ``fraction`` of its width (left, right) or height (top,
    bottom) on the ``sides`` named (t, b, l, r)."""
    w, h = im.size
    px, py = round(w * fraction), round(h * fraction)
    left, top = px * ("l" in sides), py * ("t" in sides)
    out = Image.new("RGB", (w + left + px * ("r" in sides), h + top + py * ("b" in sides)), colour)
    out.paste(im.convert("RGB"), (left, top))
    return out


def test_the_picture_inside_a_flat_border_is_hashed_as_its_own_variant(pictures):
    """A mount, a letterbox or a pillarbox is cut off (the box found to within a pixel or
    two of the intermediate), and the "trimmed" row is the hashes of the picture inside;
    a picture on a flat background, a picture with a dark edge of its own and a flat
    image have no "trimmed" variant."""
    import io

    from artengine.hashing import TRIMMED, border_box, hashing_gray, luma_thumbnail

    picture = pictures[0].resize((256, 256))
    for fraction, colour, sides in ((0.05, (0, 0, 0), "tblr"), (0.1, (255, 255, 255), "tb"),
                                    (0.12, (90, 120, 90), "lr"), (0.08, (0, 0, 0), "t")):
        framed = _framed(picture, fraction, colour, sides)
        buf = io.BytesIO()
        framed.save(buf, "JPEG", quality=80)  # the border's edge rings a little
        copy = Image.open(buf).convert("RGB")
        gray = hashing_gray(copy)
        box = border_box(gray)
        w, h = framed.size
        scale = gray.width / w
        px, py = round(256 * fraction), round(256 * fraction)
        expected = (px * ("l" in sides) * scale, py * ("t" in sides) * scale,
                    gray.width - px * ("r" in sides) * scale, gray.height - py * ("b" in sides) * scale)
        assert box is not None and np.allclose(box, expected, atol=2.5), (fraction, sides, box, expected)
        hashes = query_hashes(copy)
        assert hashes.variants[-1] == TRIMMED and hashes.variants[:-1] == QUERY_VARIANTS
        inner = gray.crop(box)
        assert hashes["phash"][-1] == hash_value(imagehash.phash(inner))
        assert hashes["dhash"][-1] == hash_value(imagehash.dhash(inner))
        assert np.array_equal(hashes.variant_luma[TRIMMED], luma_thumbnail(inner))
        # The picture inside hashes like the picture itself, unlike the framed whole.
        plain = query_hashes(picture)
        inside, whole = (int(hamming(hashes["phash"][k], plain["phash"][0])) for k in (-1, 0))
        assert inside <= 6 and whole > inside, (inside, whole)

    # A JPEG's ringing reaches a few pixels into the border around a flat picture: the edge
    # is still found where the picture starts.
    from artengine_plugins.shapes import ShapesSet

    for index in range(6):
        shape = ShapesSet(image_size=128, seed=7)[index].image.convert("RGB")
        buf = io.BytesIO()
        _framed(shape, 0.1, (0, 0, 0)).save(buf, "JPEG", quality=75)
        box = border_box(hashing_gray(Image.open(buf).convert("RGB")))
        assert box is not None and np.allclose(box, (13, 13, 141, 141), atol=2), (index, box)

    on_background = Image.new("RGB", (256, 256), (240, 240, 240))
    ImageDraw.Draw(on_background).ellipse((60, 50, 190, 200), fill=(200, 30, 30))
    dark_edge = picture.copy()
    ImageDraw.Draw(dark_edge).rectangle((0, 0, 255, 2), fill=(0, 0, 0))  # 3 rows: not a border
    for im in (picture, on_background, dark_edge, Image.new("RGB", (256, 256), (0, 0, 0))):
        assert border_box(hashing_gray(im)) is None
        assert query_hashes(im).variants == QUERY_VARIANTS and query_hashes(im).variant_luma == {}


def _reflected(im: Image.Image, fraction: float, mode: str = "reflect", sides: str = "tblr") -> Image.Image:
    """``im`` padded by reflection (numpy's ``"reflect"``, or ``"symmetric"``, which repeats
    the edge line) by ``fraction`` of its width or height on the ``sides`` named."""
    w, h = im.size
    px, py = round(w * fraction), round(h * fraction)
    widths = ((py * ("t" in sides), py * ("b" in sides)), (px * ("l" in sides), px * ("r" in sides)), (0, 0))
    return Image.fromarray(np.pad(np.asarray(im.convert("RGB")), widths, mode=mode))


def test_a_border_that_mirrors_the_picture_is_cut_at_its_axis():
    """Padding by reflection (a blind spot before: a copy's whole-image hashes move beyond
    the bounds) is found where the mirror axis lies, within a pixel or two of the
    intermediate, on every side padded, JPEG or not; the "trimmed" row hashes like the
    picture and its thumbnail correlates with the picture's. The photographs themselves,
    and a photograph beside its own mirror image (an axis at the middle), get no box."""
    import io

    from skimage import data as skimage_data  # the test extra installs scikit-image

    from artengine.hashing import TRIMMED, border_box, hashing_gray, thumbnail_correlation

    photos = [Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((320, 256))
              for name in ("astronaut", "coffee", "chelsea")]
    for photo in photos:
        plain = query_hashes(photo)
        for fraction, mode, sides, quality in ((0.1, "reflect", "tblr", None), (0.05, "symmetric", "tblr", 85),
                                               (0.12, "reflect", "tb", 80), (0.08, "symmetric", "lr", None)):
            padded = _reflected(photo, fraction, mode, sides)
            if quality:
                buf = io.BytesIO()
                padded.save(buf, "JPEG", quality=quality)
                padded = Image.open(buf).convert("RGB")
            gray = hashing_gray(padded)
            px = round(320 * fraction) * gray.width / padded.width
            py = round(256 * fraction) * gray.height / padded.height
            expected = (px * ("l" in sides), py * ("t" in sides),
                        gray.width - px * ("r" in sides), gray.height - py * ("b" in sides))
            box = border_box(gray)
            assert box is not None and np.allclose(box, expected, atol=2), (fraction, mode, sides, box, expected)
            hashes = query_hashes(padded)
            assert hashes.variants[-1] == TRIMMED
            assert hashes["phash"][-1] == hash_value(imagehash.phash(gray.crop(box)))
            inside, whole = (int(hamming(hashes["phash"][k], plain["phash"][0])) for k in (-1, 0))
            assert inside <= 6 and whole > inside, (fraction, mode, sides, inside, whole)
            assert thumbnail_correlation(hashes.variant_luma[TRIMMED], plain.luma) >= 0.96
        assert border_box(hashing_gray(photo)) is None
        beside = Image.new("RGB", (640, 256))
        beside.paste(photo)
        beside.paste(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (320, 0))
        assert border_box(hashing_gray(beside)) is None


def test_a_copy_turned_a_few_degrees_is_turned_back_by_the_angle_its_corners_show():
    """A copy turned in its own frame, the uncovered corners filled (black or white, JPEG or
    not, either way, 2.5° to 25°), is read for its angle within a degree from its corners;
    its "straightened" row hashes near the reference's centred 0.90 crop (where the image's
    own hash is far from every stored one), and the thumbnail of its middle that the turn
    left whole correlates with the reference's cut to the same box. The photographs
    themselves, one in a flat border and a shape on plain ground get no angle."""
    import io

    from skimage import data as skimage_data  # the test extra installs scikit-image

    from artengine.hashing import STRAIGHTENED, hashing_gray, luma_thumbnail, thumbnail_correlation, tilt

    photos = [Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((320, 256))
              for name in ("astronaut", "coffee", "chelsea")]
    for photo in photos:
        reference = reference_hashes(photo)
        centre = reference.variants.index("crop0.90@0.5,0.5")
        for angle, fill, quality in ((2.5, (0, 0, 0), None), (-4, (0, 0, 0), 85), (7, (255, 255, 255), None),
                                     (-12, (0, 0, 0), 80), (25, (255, 255, 255), None)):
            turned = photo.rotate(angle, Image.Resampling.BILINEAR, fillcolor=fill)
            if quality:
                buf = io.BytesIO()
                turned.save(buf, "JPEG", quality=quality)
                turned = Image.open(buf).convert("RGB")
            read = tilt(hashing_gray(turned))
            assert read is not None and abs(read - angle) <= 1, (angle, read)
            hashes = query_hashes(turned)
            assert hashes.variants[-1] == STRAIGHTENED and hashes.tilt == read
            straight = int(hamming(hashes["phash"][-1], reference["phash"][centre]))
            whole = int(hamming(hashes["phash"][0], reference["phash"]).min())
            if abs(angle) <= 12:
                assert straight <= 8 and whole > straight, (angle, straight, whole)
            left, top, right, bottom = hashes.variant_box[STRAIGHTENED]
            gray = hashing_gray(photo)
            cut = gray.crop((round(left * gray.width), round(top * gray.height),
                             round(right * gray.width), round(bottom * gray.height)))
            correlation = thumbnail_correlation(hashes.variant_luma[STRAIGHTENED], luma_thumbnail(cut))
            assert correlation >= 0.96, (angle, correlation)
        assert tilt(hashing_gray(photo)) is None
        assert tilt(hashing_gray(_framed(photo, 0.1, (0, 0, 0)))) is None
        assert STRAIGHTENED not in query_hashes(photo).variants
    plain = Image.new("RGB", (256, 256), (30, 90, 160))
    ImageDraw.Draw(plain).ellipse((60, 70, 200, 190), fill=(240, 200, 40))
    assert tilt(hashing_gray(plain)) is None
    # The intermediate is reduced by a whole factor per axis (1024 x 768 becomes 128 x 128,
    # 200 x 400 becomes 200 x 133): the angle is read, and the picture turned back, in the
    # image's own proportions.
    for size in ((1024, 768), (400, 200), (200, 400)):
        photo = Image.fromarray(skimage_data.coffee()).resize(size, Image.Resampling.LANCZOS)
        reference = reference_hashes(photo)
        centre = reference.variants.index("crop0.90@0.5,0.5")
        for angle in (-6, 12):
            hashes = query_hashes(photo.rotate(angle, Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)))
            assert hashes.variants[-1] == STRAIGHTENED and abs(hashes.tilt - angle) <= 1, (size, angle, hashes.tilt)
            assert int(hamming(hashes["phash"][-1], reference["phash"][centre])) <= 10, (size, angle)


def _hard_32px_pictures() -> list[np.ndarray]:
    """32x32 greyscale inputs where pHash bits hang on rounding: flat, one grey level off
    here and there, faint noise, faint gradients, a few specks; and plain noise and blocks."""
    rng = np.random.default_rng(11)
    y, x = np.mgrid[:32, :32]
    out = []
    for k in range(480):
        kind = k % 6
        if kind == 0:
            a = np.full((32, 32), rng.integers(0, 256))
        elif kind == 1:
            a = rng.integers(1, 255) + rng.integers(-1, 2, (32, 32))
        elif kind == 2:
            a = 128 + rng.normal(0, rng.uniform(0.1, 3), (32, 32))
        elif kind == 3:
            a = rng.uniform(0, 8) * x / 32 + rng.uniform(0, 8) * y / 32 + rng.integers(0, 240)
        elif kind == 4:
            a = rng.integers(0, 256) * (rng.random((32, 32)) < 0.02)
        else:
            a = rng.integers(0, 256, (32, 32)) if k % 12 == 5 else np.kron(rng.integers(0, 256, (4, 4)), np.ones((8, 8)))
        out.append(np.clip(a, 0, 255).astype(np.uint8))
    return out


def test_stacked_phash_and_equalisation_are_bitwise_imagehash_and_pillow():
    from artengine.hashing import _equalise, _phash_stack

    pictures = _hard_32px_pictures()
    for start in range(0, len(pictures), 8):  # stacks of 8, as a query hashes them
        stack = np.stack(pictures[start:start + 8])
        equalised = np.stack([_equalise(a) for a in stack])
        plain, after = _phash_stack(stack), _phash_stack(equalised)
        for j, pixels in enumerate(stack):
            image = Image.fromarray(pixels)
            pillow = ImageOps.equalize(image)
            assert np.array_equal(equalised[j], np.asarray(pillow))
            assert plain[j] == hash_value(imagehash.phash(image))
            assert after[j] == hash_value(imagehash.phash(pillow))


def test_stacked_dhash_is_bitwise_imagehash():
    from artengine.hashing import _dhash_stack

    # 9x8 inputs where neighbours tie (flat, blocks) or differ by one level, and noise.
    strips = [np.asarray(Image.fromarray(p).resize((9, 8), Image.Resampling.LANCZOS)) for p in _hard_32px_pictures()]
    values = _dhash_stack(np.stack(strips))
    for strip, value in zip(strips, values):
        assert value == hash_value(imagehash.dhash(Image.fromarray(strip)))


def test_hashing_a_chunk_gives_each_image_its_own_hashes(pictures):
    from PIL import ImageStat

    from artengine import query_hashes_many
    from artengine.hashing import COLOUR_DARK_OFFSET, colour_signature

    images = [*pictures[:3], _framed(pictures[3], 0.1, (0, 0, 0)), *pictures[4:6],
              Image.new("RGB", (300, 200), (10, 200, 30)), pictures[7].resize((64, 48))]
    chunk = query_hashes_many(images)
    assert query_hashes_many([]) == []
    assert [len(h.variants) for h in chunk] == [8, 8, 8, 9, 8, 8, 8, 8]  # the framed one has "trimmed"
    for image, hashes in zip(images, chunk):
        alone = query_hashes(image)
        assert hashes.variants == alone.variants
        assert np.array_equal(hashes.values, alone.values) and hashes.values.dtype == np.uint64
        assert hashes.quality == alone.quality and np.array_equal(hashes.luma, alone.luma)
        assert hashes.variant_luma.keys() == alone.variant_luma.keys()
        assert all(np.array_equal(hashes.variant_luma[k], alone.variant_luma[k]) for k in hashes.variant_luma)
        # The colour signature is ImageStat's mean of the reduced image, to the bit.
        factor = max(1, min(image.size) // 32)
        small = image.reduce(factor) if factor > 1 else image
        means = np.asarray(ImageStat.Stat(small).mean, dtype=np.float64) + COLOUR_DARK_OFFSET
        assert np.array_equal(colour_signature(image), (means / means.sum()).astype(np.float32))
        assert np.array_equal(hashes.colour, alone.colour)


def test_equalised_phash_is_imagehash_on_the_equalised_greyscale(pictures):
    im = pictures[3]
    q = query_hashes(im)
    small = im.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    reference = imagehash.phash(ImageOps.equalize(small))
    assert int(hamming(q["phash_eq"][0], hash_value(reference))) <= 6
    # Equalisation undoes a contrast change: the equalised hash stays put.
    faded = ImageEnhance.Contrast(im).enhance(0.6)
    assert int(hamming(q["phash_eq"][0], query_hashes(faded)["phash_eq"][0])) <= 4


def test_band_hashes_ignore_a_caption_across_the_other_band(pictures):
    im = pictures[4]
    captioned = im.copy()
    draw = ImageDraw.Draw(captioned)
    top = round(im.height * 0.6)  # a strip inside the gap-free part of the bottom band only
    draw.rectangle((0, top, im.width, top + round(im.height * BAND_GAP * 0.8)), fill=(255, 255, 255))
    a, b = query_hashes(im), query_hashes(captioned)
    top_band = QUERY_VARIANTS.index("band-top")
    assert int(hamming(a["phash"][top_band], b["phash"][top_band])) == 0
    assert int(hamming(a["phash"][0], b["phash"][0])) > int(hamming(a["phash"][top_band], b["phash"][top_band]))


def test_reference_hashes_cover_crops(pictures):
    im = pictures[2]
    ref = reference_hashes(im)
    assert ref.variants == REFERENCE_VARIANTS and ref.values.shape == (len(REFERENCE_VARIANTS), len(COLUMNS))
    # A 10 % crop from the top-left corner is far from the full image's hash but close
    # to the matching stored crop.
    cropped = im.crop((0, 0, round(im.width * 0.9), round(im.height * 0.9)))
    q = query_hashes(cropped)
    full = int(hamming(ref["phash"][0], q["phash"][0]))
    best = int(hamming(ref["phash"], q["phash"][0]).min())
    assert best <= 4 and best < full


def test_quality_separates_flat_from_detailed(pictures):
    assert hash_quality(Image.new("L", (64, 64), 128)) == 0
    faint = np.random.default_rng(0).integers(118, 123, (256, 256, 3), dtype=np.uint8)
    assert query_hashes(Image.fromarray(faint)).quality < MIN_RELIABLE_QUALITY
    assert all(query_hashes(im).reliable for im in pictures)


def test_hamming_within_equals_brute_force_across_chunks():
    rng = np.random.default_rng(3)
    table = rng.integers(0, 2**63, size=5000, dtype=np.uint64) * 2
    queries = [table[17] ^ np.uint64(0b111), table[4999], rng.integers(0, 2**63, dtype=np.uint64)]
    qi, rows, dist = hamming_within(table, queries, 12, chunk=256)
    got = sorted(zip(qi.tolist(), rows.tolist(), dist.tolist()))
    expected = []
    for i, q in enumerate(queries):
        d = np.bitwise_count(table ^ np.uint64(q))
        expected += [(i, int(r), int(d[r])) for r in np.flatnonzero(d <= 12)]
    assert got == sorted(expected)
    assert (0, 17, 3) in got and (1, 4999, 0) in got
    empty = hamming_within(table[:0], queries, 12)
    assert all(a.size == 0 for a in empty)


def test_colour_comparison_allows_for_a_contrast_change_but_not_another_hue():
    """A contrast change scales the mean colour's difference from grey: allowed for, a
    lowered-contrast copy's signature is at the same colour; a hue change stays far."""
    from PIL import ImageEnhance

    from artengine.hashing import colour_distance, colour_signature

    warm = np.asarray(artwork(5, 256), dtype=np.float32) * np.array([1.0, 0.55, 0.3])
    picture = Image.fromarray(warm.astype(np.uint8))
    original = colour_signature(picture)
    flatter = colour_signature(ImageEnhance.Contrast(picture).enhance(0.7))
    assert colour_distance(flatter, original) > 0.03
    assert colour_distance(flatter, original, 1.5) < 0.005
    # The same picture with its channels swapped (another hue): far either way.
    r, g, b = picture.split()
    swapped = colour_signature(Image.merge("RGB", (b, r, g)))
    assert colour_distance(swapped, original, 1.5) > 0.15
    # No allowance is the plain distance, and an allowance never makes two colours farther.
    assert colour_distance(flatter, original, 1.0) == colour_distance(flatter, original)
    # One pair at a time (as the search compares) gives what the array form gives.
    rng = np.random.default_rng(4)
    pairs = rng.dirichlet([4, 4, 4], size=(400, 2)).astype(np.float32)
    pairs[::4, 1] = pairs[::4, 0]  # the same colour
    pairs[1::4, 0, 1] = pairs[1::4, 0, 2]  # two channels alike
    for contrast in (1.0, 1.2, 1.5, 4.0):
        together = colour_distance(pairs[:, 0], pairs[:, 1], contrast)
        assert [colour_distance(a, b, contrast) for a, b in pairs] == together.tolist()
    assert colour_distance(swapped, original, 1.2) <= colour_distance(swapped, original)
    # Against no reference at all (an empty stack): no distance, not an error.
    assert colour_distance(original, np.zeros((0, 3), np.float32), 1.2).shape == (0,)


def _one_object(colour, ground=(150, 150, 150), size: int = 128, shift: int = 0) -> Image.Image:
    """A filled circle of ``colour`` on a plain ``ground`` with a lighter grid of squares
    (the built-in shapes' kind of picture), ``shift`` pixels right of the middle."""
    image = Image.new("RGB", (size, size), ground)
    draw = ImageDraw.Draw(image)
    light = tuple(min(255, c + 40) for c in ground)
    for y in range(4, size, 16):
        for x in range(4, size, 16):
            draw.rectangle((x, y, x + 6, y + 6), fill=light)
    r = size * 0.28
    c = size / 2 + shift
    draw.ellipse((c - r, size / 2 - r, c + r, size / 2 + r), fill=colour)
    return image


def test_the_colour_of_the_coloured_parts_tells_one_object_in_two_colours_apart():
    """On a plain ground that takes most of the picture, the mean colour barely moves when
    the object changes colour; the saturation-weighted colour does, and stays put for
    copies (JPEG, brightness and contrast, a colour shift, a crop, a mirror, a caption)."""
    from artengine.hashing import colour_distance, colour_signature, saturated_colour

    red, purple = _one_object((220, 40, 40)), _one_object((150, 60, 200))
    assert colour_distance(colour_signature(red), colour_signature(purple), 1.2) < 0.08
    assert colour_distance(saturated_colour(red), saturated_colour(purple), 1.2) > 0.2
    original = saturated_colour(red)
    buf = io.BytesIO()
    red.save(buf, format="JPEG", quality=60)
    copies = {
        "jpeg": Image.open(buf).convert("RGB"),
        "bright_contrast": ImageEnhance.Contrast(ImageEnhance.Brightness(red).enhance(1.3)).enhance(0.7),
        "shifted": Image.fromarray(np.clip(np.asarray(red, np.int16) + (20, -20, 12), 0, 255).astype(np.uint8)),
        "cropped": red.crop((10, 0, 128, 118)),
        "mirrored": ImageOps.mirror(red),
    }
    captioned = red.copy()
    ImageDraw.Draw(captioned).text((5, 100), "(c) studio 2026", fill=(255, 255, 255))
    copies["captioned"] = captioned
    for name, copy in copies.items():
        assert colour_distance(saturated_colour(copy), original, 1.2) < 0.12, name
    # Too little colour to say anything: grey pictures, and JPEG's chroma noise on them.
    grey = ImageOps.grayscale(artwork(3, 256)).convert("RGB")
    buf = io.BytesIO()
    grey.save(buf, format="JPEG", quality=50)
    assert saturated_colour(grey) is None and saturated_colour(Image.open(buf).convert("RGB")) is None
    # The query side carries it, and its JSON form shows it.
    hashes = query_hashes(red)
    assert np.array_equal(hashes.saturated, original)
    assert hashes.as_dict()["saturated_colour"] == [round(float(c), 4) for c in original]
    assert query_hashes(grey).saturated is None and "saturated_colour" not in query_hashes(grey).as_dict()


def test_thumbnail_correlation_ignores_brightness_contrast_and_gradients():
    """The luminance thumbnails of a copy correlate near 1 whatever brightness and contrast
    it was given; a shared gradient alone does not make two pictures correlate, and a
    picture that is a gradient only has nothing to correlate."""
    from artengine.hashing import LUMA_SIDE, luma_thumbnail, thumbnail_correlation

    y, x = np.mgrid[:256, :256] / 255.0

    def smooth(seed: int) -> np.ndarray:  # a faint soft pattern on a strong gradient
        field = Image.fromarray(np.random.default_rng(seed).normal(128, 60, (8, 8)).clip(0, 255).astype(np.uint8))
        soft = np.asarray(field.resize((256, 256), Image.Resampling.BICUBIC), dtype=np.float64) - 128
        return 60 + 120 * (0.7 * x + 0.3 * y) + 0.08 * soft

    picture = Image.fromarray(smooth(1).round().astype(np.uint8))
    thumb = luma_thumbnail(picture)
    assert thumb.shape == (LUMA_SIDE, LUMA_SIDE) and thumb.dtype == np.float32
    for b, c in ((0.7, 0.7), (1.3, 0.7), (0.7, 1.3)):
        copy = ImageEnhance.Contrast(ImageEnhance.Brightness(picture).enhance(b)).enhance(c)
        assert thumbnail_correlation(luma_thumbnail(copy), thumb) > 0.97, (b, c)
    other = Image.fromarray(smooth(2).round().astype(np.uint8))  # the same gradient, another pattern
    assert thumbnail_correlation(luma_thumbnail(other), thumb) < 0.8
    ramp = Image.fromarray((60 + 120 * (0.7 * x + 0.3 * y)).round().astype(np.uint8))
    assert abs(float(thumbnail_correlation(luma_thumbnail(ramp), thumb))) < 0.3
    assert thumbnail_correlation(luma_thumbnail(Image.new("L", (64, 64), 90)), thumb) == 0
    # Broadcasting: one thumbnail against a stack.
    stack = np.stack([thumb, luma_thumbnail(other)])
    assert thumbnail_correlation(thumb, stack).shape == (2,)
