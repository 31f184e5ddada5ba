"""The built-in watermark (RELIABILITY rows 15, 16, 18, 19): round trip, JPEG 75, resize 0.5,
crops, corrupted marks never read as another payload, clean images not detected, wrong key,
alpha, size limits. The full attack suite and the 2,000-image false-positive measurement
are in benchmarks/bench_watermark.py."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from artengine import InputError, Watermark, get_plugins
from artengine_plugins import watermark as stdm
from artengine_plugins.shapes import ShapesSet

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def textured(size: int, seed: int) -> Image.Image:
    """A photo-like image: noise octaves with a 1/f falloff plus a few hard edges."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((size, size, 3), np.float32)
    for octave in range(2, 8):
        n = 2 ** octave
        layer = Image.fromarray((rng.random((n, n, 3)) * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC)
        acc += np.asarray(layer, np.float32) * (0.5 ** (7 - octave) + 0.1)
    acc = (acc - acc.min()) / (acc.max() - acc.min()) * 200 + 25
    x0, y0 = rng.integers(0, size // 2, 2)
    acc[y0: y0 + size // 3, x0: x0 + size // 4] *= 0.6
    return Image.fromarray(acc.astype(np.uint8))


def shapes(size: int, index: int) -> Image.Image:
    return ShapesSet(image_size=size, seed=7)[index].image


IMAGES = [("shapes256", lambda: shapes(256, 0)), ("shapes256b", lambda: shapes(256, 3)),
          ("texture256", lambda: textured(256, 1)), ("shapes512", lambda: shapes(512, 5)),
          ("texture512", lambda: textured(512, 2))]


def payload_for(i: int) -> bytes:
    return bytes((17 * i + k * 29) % 256 for k in range(6))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return 10 * np.log10(255 ** 2 / np.mean((x - y) ** 2))


@pytest.fixture(scope="module")
def scheme() -> Watermark:
    return stdm.SpreadTransformWatermark(KEY)


@pytest.fixture(scope="module")
def marked(scheme):
    out = []
    for i, (name, make) in enumerate(IMAGES):
        original = make()
        out.append((name, original, scheme.embed(original, payload_for(i)), payload_for(i)))
    return out


def test_registered_through_the_entry_point():
    schemes = get_plugins().components("watermarks")
    assert schemes["stdm"] is stdm.SpreadTransformWatermark
    assert issubclass(schemes["stdm"], Watermark)


def test_round_trip_at_psnr_40(scheme, marked):
    for name, original, image, payload in marked:
        assert psnr(original, image) >= 40.0, name
        reading = scheme.detect(image, search=False)
        assert reading.detected and reading.payload == payload, name
        assert reading.confidence > 0.9, name


def test_embedding_is_deterministic(scheme):
    image = shapes(256, 1)
    a = scheme.embed(image, b"\x01\x02\x03\x04\x05\x06")
    b = scheme.embed(image, b"\x01\x02\x03\x04\x05\x06")
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("attack", ["jpeg75", "jpeg50", "resize0.5", "resize0.75", "resize1.5", "blur",
                                    "contrast0.8", "brightness0.8"])
def test_survives_ordinary_handling(scheme, marked, attack):
    from PIL import ImageEnhance, ImageFilter

    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        if attack.startswith("jpeg"):
            return jpeg(image, int(attack[4:]))
        if attack.startswith("resize"):
            f = float(attack[6:])
            return image.resize((round(w * f), round(h * f)), Image.Resampling.BICUBIC)
        if attack == "blur":
            return image.filter(ImageFilter.GaussianBlur(1.0))
        if attack.startswith("contrast"):
            return ImageEnhance.Contrast(image).enhance(float(attack[8:]))
        return ImageEnhance.Brightness(image).enhance(float(attack[10:]))

    for name, _, image, payload in marked:
        reading = scheme.detect(apply(image), search=False)
        assert reading.detected and reading.payload == payload, (attack, name, reading)


@pytest.mark.parametrize("box", [(0.05, 0.05, 0.95, 0.95), (0.0, 0.1, 0.92, 1.0), (0.1, 0.0, 1.0, 0.9)])
def test_crops_are_found_by_resynchronisation(scheme, box):
    image = shapes(512, 2)
    payload = b"crop!!"
    mark = scheme.embed(image, payload)
    w, h = mark.size
    cropped = mark.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    assert not scheme.detect(cropped, search=False).detected  # the blocks moved
    reading = scheme.detect(cropped)
    assert reading.detected and reading.payload == payload
    assert reading.details["path"] == "template"


def test_small_rotation_is_found(scheme):
    mark = scheme.embed(shapes(512, 4), b"rotate")
    reading = scheme.detect(mark.rotate(1.0, resample=Image.Resampling.BILINEAR))
    assert reading.detected and reading.payload == b"rotate"


def test_clean_images_are_not_detected(scheme):
    images = [shapes(256, i) for i in range(20, 36)] + [textured(256, s) for s in range(10, 26)]
    for image in images:
        assert not scheme.detect(image, search=False).detected
    for image in images[::4]:  # the resynchronising search too (slower)
        assert not scheme.detect(image).detected


def test_wrong_key_reads_nothing(marked):
    other = stdm.SpreadTransformWatermark(OTHER_KEY)
    for name, _, image, _ in marked:
        reading = other.detect(image)
        assert not reading.detected and reading.payload is None, name


def test_damaged_marks_are_never_read_as_another_payload(scheme, marked):
    """Heavy damage may lose the mark; it must never produce a different valid payload."""
    rng = np.random.default_rng(0)
    outcomes = {"exact": 0, "lost": 0}
    for name, _, image, payload in marked:
        base = np.asarray(image, np.float32)
        for sigma in (20, 35, 50, 70):
            noisy = np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)
            for attacked in (Image.fromarray(noisy), jpeg(Image.fromarray(noisy), 15)):
                reading = scheme.detect(attacked, search=False)
                assert not reading.detected or reading.payload == payload, (name, sigma)
                outcomes["exact" if reading.detected else "lost"] += 1
    assert outcomes["lost"] > 0 and outcomes["exact"] > 0  # the sweep covers both regimes


def test_decoder_rejects_corrupted_codewords():
    """Random soft bits, and real codewords with more byte errors than Reed-Solomon can
    correct, decode to nothing or to the original payload, never to another one."""
    layout = stdm._layout(KEY)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        assert stdm._decode(layout, rng.normal(size=layout.scramble.size)) is None
    payload = b"\xde\xad\xbe\xef\x00\x01"
    clean = 1.0 - 2.0 * stdm._codeword_bits(layout, payload)
    for errors in range(0, 9):
        for _ in range(60):
            soft = clean * rng.uniform(0.5, 1.5, clean.size)
            for byte in rng.choice(clean.size // 8, errors, replace=False):
                soft[byte * 8: byte * 8 + 8] *= np.where(rng.random(8) < 0.5, -1, 1)
            got = stdm._decode(layout, soft)
            assert got is None or got == payload
        if errors <= stdm.PARITY_BYTES // 2:
            assert stdm._decode(layout, clean) == payload


def test_a_valid_reed_solomon_word_with_a_wrong_tag_is_not_read():
    """A word Reed-Solomon takes as it stands (every syndrome zero) whose keyed tag is
    wrong (a mark made with another key, or forged) reads as nothing, not as its payload."""
    layout = stdm._layout(KEY)
    payload = b"\xde\xad\xbe\xef\x00\x01"
    right = stdm._tag(layout.tag_key, payload)
    for wrong in (bytes(b ^ 1 for b in right), stdm._tag(b"another key", payload)):
        word = bytes(stdm._RS.encode(payload + wrong))
        assert stdm._RS.check(word)[0]  # a codeword as far as Reed-Solomon can tell
        soft = 1.0 - 2.0 * (np.unpackbits(np.frombuffer(word, np.uint8)) ^ layout.scramble)
        assert stdm._decode(layout, soft) is None
    assert stdm._decode(layout, 1.0 - 2.0 * stdm._codeword_bits(layout, payload)) == payload


def test_alpha_is_set_aside_and_restored(scheme):
    rgba = shapes(256, 6).convert("RGBA")
    alpha = Image.linear_gradient("L").resize(rgba.size)
    rgba.putalpha(alpha)
    out = scheme.embed(rgba, b"alpha!")
    assert out.mode == "RGBA"
    assert out.getchannel("A").tobytes() == alpha.tobytes()
    assert scheme.detect(out, search=False).payload == b"alpha!"


def test_size_limits(scheme):
    with pytest.raises(InputError, match="at least 256 pixels"):
        scheme.embed(Image.new("RGB", (300, 200)), b"123456")
    with pytest.raises(InputError, match="6 bytes"):
        scheme.embed(Image.new("RGB", (256, 256)), b"12345")
    tiny = scheme.detect(Image.new("RGB", (40, 40)))
    assert not tiny.detected and "too small" in tiny.reason


def test_flat_image_can_be_marked(scheme):
    flat = Image.new("RGB", (256, 256), (128, 128, 128))
    out = scheme.embed(flat, b"flat!!")
    assert psnr(flat, out) >= 40.0
    assert scheme.detect(out, search=False).payload == b"flat!!"


def test_a_large_image_is_read_a_band_of_rows_at_a_time_with_the_same_values(scheme, monkeypatch):
    """Detection converts a large image to luminance a band of rows at a time (a
    48-megapixel scan would otherwise hold about 0.9 GB of floating-point copies): the
    values are the whole-image conversion's to the bit, bands of any height, so the
    reading is the same."""
    image = scheme.embed(textured(640, 9).resize((640, 480)), payload_for(9))
    pixels = np.asarray(image)
    whole = np.asarray(stdm._luma(pixels))
    readings = []
    for rows in (1, 7, 480):  # rows per band: one, 7 (the last band shorter), all of them
        monkeypatch.setattr(stdm, "_LUMA_ROWS", rows * 640)
        assert np.array_equal(np.asarray(stdm._luma_in_rows(pixels)), whole), rows
        readings.append(scheme.detect(image).as_dict())
    assert readings[0]["payload"] == payload_for(9).hex()
    assert all(r == readings[0] for r in readings)
