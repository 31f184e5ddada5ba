"""Safe image input and atomic output: rows 1-7 of the fault matrix."""
from __future__ import annotations

import io
import os

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageFile

from artengine import (
    ImageLoadError,
    atomic_save_image,
    atomic_write_json,
    open_image,
    remove_stray_temps,
    restore_alpha,
    safe_crop,
    to_rgb,
)
from artengine_plugins.shapes import ShapesSet
from crafted_files import png_chunk, png_chunks, png_claiming, png_of


def _encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def content() -> Image.Image:
    """A 256x200 RGB image with structure (four shapes), for hash comparisons."""
    shapes = ShapesSet(image_size=64, seed=3)
    canvas = Image.new("RGB", (256, 200))
    for i in range(4):
        canvas.paste(shapes[i].image.resize((128, 100)), ((i % 2) * 128, (i // 2) * 100))
    return canvas


# ---------------------------------------------------------------- rows 1-2: bombs


def test_header_claiming_20k_by_20k_is_refused_without_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(20_000, 20_000))
    with pytest.raises(ImageLoadError) as err:
        open_image(bomb)
    assert "bomb.png" in str(err.value)
    assert "bomb" in err.value.reason


def test_image_between_one_and_two_times_the_limit_is_an_error(tmp_path, monkeypatch, content):
    # Pillow itself only warns in this band; artengine refuses.
    path = tmp_path / "big.png"
    path.write_bytes(_encode(content))
    pixels = content.width * content.height
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(pixels / 1.5))
    with pytest.raises(ImageLoadError, match="big.png"):
        open_image(path)


def test_explicit_pixel_limit_is_enforced(tmp_path, content):
    path = tmp_path / "a.png"
    path.write_bytes(_encode(content))
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        open_image(path, max_pixels=1000)


# ---------------------------------------------------------------- row 3: crops


@pytest.mark.parametrize("box", [
    (0, 0, 257, 200),            # wider than the image
    (-10, -10, 20, 20),          # negative origin (Pillow pads; we refuse)
    (10, 10, 10, 20),            # zero width
    (20, 20, 10, 10),            # inverted
    (0, 0, 2**31 - 1, 2**31 - 1),  # a box that would allocate terabytes
])
def test_crop_box_outside_the_image_raises_without_allocating(content, box):
    with pytest.raises(ValueError, match="crop box"):
        safe_crop(content, box)


def test_crop_inside_the_image_works(content):
    assert safe_crop(content, (10, 20, 110, 70)).size == (100, 50)


# ---------------------------------------------------------------- row 4: broken files


def test_truncated_jpeg_empty_file_and_random_bytes_are_errors_naming_the_file(tmp_path, content):
    jpeg = _encode(content, "JPEG", quality=90)
    cases = {
        "truncated.jpg": jpeg[:-1],
        "half.jpg": jpeg[: len(jpeg) // 2],
        "empty.png": b"",
        "random.png": np.random.default_rng(0).bytes(4096),
        "truncated.png": _encode(content)[:-40],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    failures = 0
    for name in cases:
        with pytest.raises(ImageLoadError) as err:
            open_image(tmp_path / name)
        assert name in str(err.value)
        failures += 1
    assert failures == len(cases)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_file_and_folder_are_errors(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="directory"):
        open_image(tmp_path)


# ---------------------------------------------------------------- row 5: formats


def test_eps_is_rejected_before_decode_and_ghostscript_never_runs(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    spawned = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: spawned.append(a))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "/bin/false", raising=False)
    eps = tmp_path / "evil.eps"
    eps.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
        b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    )
    assert Image.open(eps).format == "EPS"  # Pillow alone would accept it
    with pytest.raises(ImageLoadError, match="allowed format"):
        open_image(eps)
    assert spawned == []


def test_fits_is_rejected(tmp_path):
    header = "".join(card.ljust(80) for card in [
        "SIMPLE  =                    T", "BITPIX  =                    8",
        "NAXIS   =                    2", "NAXIS1  =                    4",
        "NAXIS2  =                    4", "END"]).ljust(2880)
    fits = tmp_path / "sky.fits"
    fits.write_bytes(header.encode() + bytes(16).ljust(2880, b"\0"))
    with pytest.raises(ImageLoadError, match="allowed format"):
        open_image(fits)


# ---------------------------------------------------------------- row 6: modes


def _hash_after_load(im: Image.Image, fmt: str = "PNG") -> imagehash.ImageHash:
    return imagehash.phash(open_image(_encode(im, fmt)).rgb)


def test_every_mode_normalises_to_rgb_with_the_same_perceptual_hash(content):
    colour = imagehash.phash(content)
    grey = imagehash.phash(content.convert("L").convert("RGB"))
    grey16 = Image.fromarray(np.asarray(content.convert("L")).astype(np.uint16) * 257)
    assert grey16.mode == "I;16"
    cases = [
        (content.quantize(256), "PNG", colour),
        (content.convert("RGBA"), "PNG", colour),
        (content.convert("CMYK"), "JPEG", colour),
        (content.convert("LA"), "PNG", grey),
        (grey16, "PNG", grey),
        (content.convert("1"), "PNG", grey),
    ]
    for im, fmt, reference in cases:
        loaded = open_image(_encode(im, fmt))
        assert loaded.rgb.mode == "RGB"
        assert loaded.mode == im.mode
        assert loaded.rgb.size == content.size
        assert imagehash.phash(loaded.rgb) - reference <= 2, im.mode


def test_alpha_is_split_off_and_restored(content):
    rgba = content.convert("RGBA")
    alpha = Image.linear_gradient("L").resize(content.size)
    rgba.putalpha(alpha)
    rgb, kept = to_rgb(rgba)
    assert rgb.mode == "RGB" and kept is not None
    assert np.array_equal(np.asarray(rgb), np.asarray(content))
    back = restore_alpha(rgb, kept)
    assert np.array_equal(np.asarray(back), np.asarray(rgba))
    pa_rgb, pa_alpha = to_rgb(content.quantize(256).convert("PA"))
    assert pa_rgb.mode == "RGB" and pa_alpha is not None


def test_palette_with_transparency_keeps_its_alpha(content):
    im = content.quantize(256)
    im.info["transparency"] = 0
    loaded = open_image(_encode(im))
    assert loaded.alpha is not None
    assert imagehash.phash(loaded.rgb) - imagehash.phash(content) <= 2


# ---------------------------------------------------------------- row 7: EXIF


@pytest.mark.parametrize("orientation, transpose", [
    (6, Image.Transpose.ROTATE_270),
    (8, Image.Transpose.ROTATE_90),
])
def test_exif_orientation_is_applied_before_anything_sees_the_pixels(content, orientation, transpose):
    exif = Image.Exif()
    exif[0x0112] = orientation
    loaded = open_image(_encode(content, "PNG", exif=exif))
    rotated = content.transpose(transpose)
    assert loaded.size == rotated.size
    assert imagehash.phash(loaded.rgb) - imagehash.phash(rotated) == 0


# ---------------------------------------------------------------- atomic writes


def test_png_text_metadata_round_trips_as_itxt(tmp_path, content):
    path = atomic_save_image(tmp_path / "out.png", content, text={"artengine.manifest": '{"é": 1}'})
    loaded = open_image(path)
    assert loaded.text["artengine.manifest"] == '{"é": 1}'
    assert b"iTXt" in path.read_bytes()


def test_failed_write_keeps_the_old_file_and_leaves_no_temporaries(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_json(target, {"version": 1})

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError) as caught:
        atomic_write_json(target, {"version": 2})
    monkeypatch.undo()
    assert caught.value.errno == 28 and caught.value.filename == str(target)  # the error line names the file
    assert target.read_text().strip().startswith("{")
    assert '"version": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_unserialisable_json_never_touches_the_file(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, [1])
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text().strip() == "[\n  1\n]"


def test_stray_temporaries_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".a.png.0123.artengine-tmp").write_bytes(b"x")
    (tmp_path / "sub" / ".b.png.4567.artengine-tmp").write_bytes(b"x")
    (tmp_path / "keep.png").write_bytes(b"x")
    assert remove_stray_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.png", "sub"]


@pytest.mark.parametrize("strategy, png_filter", [(s, f) for s in ("default", "rle", "huffman")
                                                  for f in ("adaptive", "up")] + [("isal", "up")])
def test_png_strategies_are_lossless_and_keep_text(strategy, png_filter):
    from artengine.io import encode_image

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    data = encode_image(Image.fromarray(pixels), text={"k": "välue", "manifest": '{"a": "ü"}'}, compress_level=1,
                        strategy=strategy, png_filter=png_filter)
    back = Image.open(io.BytesIO(data))
    assert back.text == {"k": "välue", "manifest": '{"a": "ü"}'}
    assert np.array_equal(np.asarray(back.convert("RGB")), pixels)
    loaded = open_image(data, name="x.png")  # the safe loader reads it as any PNG
    assert np.array_equal(np.asarray(loaded.rgb), pixels) and loaded.text["k"] == "välue"


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA"])
def test_up_filtered_png_keeps_every_mode_exactly(mode):
    from artengine.io import encode_image

    rng = np.random.default_rng(4)
    image = Image.fromarray(rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)).convert(mode)
    back = Image.open(io.BytesIO(encode_image(image, compress_level=1, png_filter="up")))
    assert back.mode == mode and np.array_equal(np.asarray(back), np.asarray(image))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
@pytest.mark.parametrize("png_filter", ["up", "adaptive"])
def test_pixels_encode_as_their_pillow_image_does(mode, png_filter):
    """A job encodes the marked pixels it holds as an array: the same file as from the
    Pillow image of those pixels, in every mode the Up filter writes."""
    from artengine.io import encode_image

    rng = np.random.default_rng(6)
    image = Image.fromarray(rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)).convert(mode)
    for strategy in (("isal", "rle") if png_filter == "up" else ("default",)):
        options = dict(text={"k": "v"}, compress_level=1, strategy=strategy, png_filter=png_filter)
        assert encode_image(np.asarray(image), **options) == encode_image(image, **options)


def _generated_like_image() -> Image.Image:
    """A smooth 256 px shape with a faint mark's texture (uniform noise of +-2)."""
    from PIL import ImageDraw

    small = Image.new("RGB", (64, 64), (40, 60, 90))
    ImageDraw.Draw(small).ellipse((12, 10, 50, 52), fill=(220, 80, 30))
    smooth = np.asarray(small.resize((256, 256), Image.Resampling.LANCZOS)).astype(np.int16)
    mark = np.random.default_rng(5).integers(-2, 3, smooth.shape)  # a faint mark's texture
    return Image.fromarray(np.clip(smooth + mark, 0, 255).astype(np.uint8))


def test_up_filtered_png_is_about_as_small_as_pillows_on_generated_like_images():
    from artengine.io import encode_image

    image = _generated_like_image()
    ours = encode_image(image, compress_level=1, strategy="rle", png_filter="up")
    pillow = encode_image(image, compress_level=1, strategy="rle")
    assert len(ours) <= 1.1 * len(pillow)


def test_isal_deflate_is_a_plain_zlib_stream_near_zlibs_level_1_in_size():
    """ISA-L's deflate (a job's default) writes a zlib stream every reader inflates, the
    same bytes each time. On this synthetic texture (uniform noise, harder than a real
    mark) its file is 16 % larger than zlib's level 1 with the RLE strategy; on generated
    images it was 3-7 % smaller (docs/generation.md). Level 0 would be 42 % larger here."""
    import zlib

    from artengine.io import encode_image

    image = _generated_like_image()
    isal = encode_image(image, compress_level=1, strategy="isal", png_filter="up")
    rle = encode_image(image, compress_level=1, strategy="rle", png_filter="up")
    assert isal != rle and len(isal) <= 1.2 * len(rle)
    assert encode_image(image, compress_level=1, strategy="isal", png_filter="up") == isal  # deterministic

    def idat(data: bytes) -> bytes:
        return next(body for kind, body in png_chunks(data) if kind == b"IDAT")
    assert zlib.decompress(idat(isal)) == zlib.decompress(idat(rle))  # the same filtered rows
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(isal)).convert("RGB")), np.asarray(image))


def test_isal_takes_the_up_filter_and_levels_0_to_3_only():
    from artengine.io import encode_image

    with pytest.raises(ValueError, match="'isal' takes png_filter 'up'"):
        encode_image(Image.new("RGB", (8, 8)), strategy="isal", png_filter="adaptive")
    with pytest.raises(ValueError, match="compress_level 0-3"):
        encode_image(Image.new("RGB", (8, 8)), strategy="isal", png_filter="up", compress_level=6)


@pytest.mark.parametrize("height", [1, 2, 15, 16, 17, 63, 300])
def test_the_own_png_reader_reads_what_pillow_reads(height):
    """The check of every image a job encodes reads it with decode_png_up: for the files
    encode_image writes (RGB, Up filter; ISA-L at levels 0-3 or zlib), the same pixels and
    text as Pillow, at heights around its blocks of rows; also with the pixels split over
    several IDAT chunks."""
    from artengine.io import decode_png_up, encode_image

    pixels = np.random.default_rng(height).integers(0, 256, (height, 37, 3), dtype=np.uint8)
    pixels[height // 2:] //= 8  # a run of darker rows, for deflate's matches
    text = {"artengine.manifest": '{"a": "ü", "b": 1}', "k": "välue"}
    for strategy, level in [("isal", 0), ("isal", 1), ("isal", 3), ("rle", 1), ("default", 6)]:
        data = encode_image(Image.fromarray(pixels), text=text, compress_level=level, strategy=strategy,
                            png_filter="up")
        read = decode_png_up(data)
        assert read is not None, (strategy, level)
        back = Image.open(io.BytesIO(data))
        assert np.array_equal(read[0], pixels) and np.array_equal(np.asarray(back), pixels)
        assert read[1] == back.text == text
        assert read[0].flags.c_contiguous and read[0].shape == (height, 37, 3)
    chunks = png_chunks(data)
    at = [kind for kind, _ in chunks].index(b"IDAT")
    idat = chunks[at][1]
    split = chunks[:at] + [(b"IDAT", idat[:5]), (b"IDAT", idat[5:9]), (b"IDAT", idat[9:])] + chunks[at + 1:]
    read = decode_png_up(png_of(split))
    assert read is not None and np.array_equal(read[0], pixels) and read[1] == text


def test_the_own_png_reader_leaves_every_other_file_to_pillow():
    """decode_png_up reads only the layout it was written for; anything else (other
    writers, modes, filters, damaged or trailing bytes, compressed or repeated text, too
    many pixels) is None, and open_image, as before, gives its verdict."""
    import zlib

    from artengine.io import decode_png_up, encode_image

    pixels = np.random.default_rng(8).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    good = encode_image(image, text={"k": "v"}, compress_level=1, strategy="isal", png_filter="up")
    assert decode_png_up(good) is not None and decode_png_up(good, max_pixels=20 * 24) is not None
    chunks = png_chunks(good)
    kinds = [kind for kind, _ in chunks]
    idat = chunks[kinds.index(b"IDAT")][1]
    rows = bytearray(zlib.decompress(idat))
    rows[7 * (3 * 24 + 1)] = 0  # row 7 unfiltered: a valid PNG whose pixels differ
    refiltered = [(k, zlib.compress(bytes(rows)) if k == b"IDAT" else b) for k, b in chunks]
    itxt = next(b for k, b in chunks if k == b"iTXt")
    others = {
        "Pillow's own PNG (adaptive filter)": _encode(image, "PNG"),
        "RGBA": encode_image(image.convert("RGBA"), compress_level=1, png_filter="up"),
        "greyscale": encode_image(image.convert("L"), compress_level=1, png_filter="up"),
        "another row filter": png_of(refiltered),
        "compressed iTXt": png_of([c for c in chunks if c[0] != b"iTXt"][:1]
                                + [(b"iTXt", b"k\0\x01\x00\0\0" + zlib.compress(b"v"))]
                                + [c for c in chunks if c[0] != b"iTXt"][1:]),
        "repeated keyword": png_of(chunks[:2] + [(b"iTXt", itxt)] + chunks[2:]),
        "text after the pixels": png_of([c for c in chunks if c[0] != b"IEND"] + [(b"iTXt", itxt), (b"IEND", b"")]),
        "another chunk": png_of(chunks[:1] + [(b"gAMA", (45455).to_bytes(4, "big"))] + chunks[1:]),
        "interlaced header": png_of([(b"IHDR", chunks[0][1][:12] + b"\x01")] + chunks[1:]),
        "trailing bytes": good + b"\0",
        "truncated": good[:-5],
        "a flipped bit in the pixels": good[:60] + bytes([good[60] ^ 4]) + good[61:],
        "a bad CRC": good[:-1] + bytes([good[-1] ^ 1]),
        "extra data after the stream": png_of([(k, b + b"\0" if k == b"IDAT" else b) for k, b in chunks]),
    }
    assert good.index(b"IDAT") < 60 < len(good) - 12
    for what, data in others.items():
        assert decode_png_up(data) is None, what
    assert decode_png_up(good, max_pixels=20 * 24 - 1) is None
    # That file is valid: Pillow reads row 7 as stored (filter None), not as the pixels.
    row7 = np.frombuffer(bytes(rows), np.uint8).reshape(20, 3 * 24 + 1)[7, 1:].reshape(24, 3)
    assert np.array_equal(np.asarray(open_image(png_of(refiltered)).rgb)[7], row7)
    assert not np.array_equal(row7, pixels[7])


def test_whatever_the_own_png_reader_accepts_pillow_reads_the_same():
    """Damaged copies of a job's PNG, with the chunks' CRCs made right again or not (bytes
    changed in any chunk, cut short): the reader turns most away, and every one it accepts
    Pillow reads to the same pixels and text (a fuzz of 1,500 copies; 20,000 + 20,000 when
    it was written: 22 and 2,797 accepted, none read differently)."""
    from artengine.io import decode_png_up, encode_image

    rng = np.random.default_rng(12)
    pixels = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    pixels[12:] //= 8
    good = encode_image(Image.fromarray(pixels), text={"artengine.manifest": '{"a": "ü"}'}, compress_level=1,
                        strategy="isal", png_filter="up")
    accepted = 0
    for trial in range(1500):
        chunks = [(kind, bytearray(body)) for kind, body in png_chunks(good)]
        kind, body = chunks[rng.integers(0, len(chunks))]
        for _ in range(rng.integers(1, 4)):
            if body:
                body[rng.integers(0, len(body))] = rng.integers(0, 256)
        if trial % 2:  # the CRCs made right again
            data = png_of([(k, bytes(b)) for k, b in chunks])
        else:  # the CRCs as they were: the changed chunk's no longer holds (unless a byte kept its value)
            data = good[:8] + b"".join(png_chunk(k, bytes(b), crc_of=was)
                                       for (k, b), (_, was) in zip(chunks, png_chunks(good)))
        if trial % 7 == 0:
            data = data[: rng.integers(8, len(data))]
        read = decode_png_up(data)
        if read is None:
            continue
        accepted += 1
        back = Image.open(io.BytesIO(data))
        back.load()
        assert np.array_equal(np.asarray(back.convert("RGB")), read[0]) and dict(back.text) == read[1], trial
    assert 0 < accepted < 1500


def test_open_image_reads_a_jobs_pngs_with_the_own_reader(tmp_path, monkeypatch):
    """open_image reads a PNG as a job writes it (file or bytes) with decode_png_up,
    without Pillow's decoder, to the same LoadedImage; every other file, and every fault
    (a truncated copy, too many pixels, a missing file), still gets Pillow's path and its
    message."""
    import artengine.io as aio
    from artengine.io import encode_image

    pixels = np.random.default_rng(9).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    data = encode_image(Image.fromarray(pixels), text={"k": "välue"}, compress_level=1, strategy="isal",
                        png_filter="up")
    (tmp_path / "job.png").write_bytes(data)
    (tmp_path / "cut.png").write_bytes(data[:-30])
    (tmp_path / "header.png").write_bytes(data[:20])  # cut inside the header the reader looks at first
    (tmp_path / "pillow.png").write_bytes(_encode(Image.fromarray(pixels), "PNG"))
    by_pillow = {name: open_image(tmp_path / name) for name in ("job.png", "pillow.png")}

    def refused(*args, **kwargs):
        raise AssertionError("Pillow's decoder was called")
    monkeypatch.setattr(aio.Image, "open", refused)
    for source in (tmp_path / "job.png", str(tmp_path / "job.png"), data):
        loaded = open_image(source, name="job.png")
        assert np.array_equal(np.asarray(loaded.rgb), pixels) and loaded.rgb.mode == "RGB"
        assert (loaded.alpha, loaded.format, loaded.mode, loaded.full_size, loaded.size) == (None, "PNG", "RGB",
                                                                                             (30, 40), (30, 40))
        assert loaded.text == by_pillow["job.png"].text == {"k": "välue"}
    with pytest.raises(AssertionError, match="Pillow's decoder"):
        open_image(tmp_path / "pillow.png")
    monkeypatch.undo()
    assert np.array_equal(np.asarray(by_pillow["pillow.png"].rgb), pixels)
    with pytest.raises(ImageLoadError, match="cut.png: corrupt or truncated"):
        open_image(tmp_path / "cut.png")
    with pytest.raises(ImageLoadError, match="header.png: corrupt or truncated"):
        open_image(tmp_path / "header.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit of 1199 pixels"):
        open_image(tmp_path / "job.png", max_pixels=1199)
    assert open_image(tmp_path / "job.png", max_pixels=1200).size == (30, 40)
    with pytest.raises(ImageLoadError, match="file not found"):
        open_image(tmp_path / "gone.png")
    with pytest.raises(ImageLoadError, match="is a directory"):
        open_image(tmp_path)


def test_up_filter_refuses_what_it_cannot_write():
    from artengine.io import encode_image

    with pytest.raises(ValueError, match="mode P"):
        encode_image(Image.new("P", (8, 8)), png_filter="up")
    with pytest.raises(ValueError, match="filter 'paeth'"):
        encode_image(Image.new("RGB", (8, 8)), png_filter="paeth")
    with pytest.raises(ValueError, match="text key"):
        encode_image(Image.new("RGB", (8, 8)), text={"": "x"}, png_filter="up")
    for pixels in (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 5), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"uint8 pixels, not \("):
            encode_image(pixels, png_filter="up")


def test_unknown_png_strategy_is_refused():
    from artengine.io import encode_image

    with pytest.raises(ValueError, match="strategy 'zstd'"):
        encode_image(Image.new("RGB", (8, 8)), strategy="zstd")


# ---------------------------------------------------------------- reduced-scale reads


def _textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """Fine texture on coarse shapes: what a reduced-scale decode must keep in place."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 40, width // 40, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    return Image.fromarray(np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8))


def test_a_large_jpeg_read_for_a_small_use_is_decoded_at_a_reduced_scale(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned: 1800 wide, 2400 high
    source = _textured(2400, 1800)
    path = tmp_path / "photo.jpg"
    source.save(path, quality=92, exif=exif)

    whole = open_image(path)
    assert whole.size == whole.full_size == (1800, 2400)
    small = open_image(path, min_side=200)
    assert small.full_size == (1800, 2400)  # oriented as the pixels are
    assert small.size == (225, 300)  # 1/8 scale: both sides still >= 200
    reduced = np.asarray(whole.rgb.reduce(8), dtype=np.int16)
    assert np.abs(np.asarray(small.rgb, dtype=np.int16) - reduced).mean() < 1.0  # the same picture
    assert open_image(path, min_side=400).size == (450, 600)  # 1/4: at 1/8 a side would be under 400
    with pytest.raises(ImageLoadError, match="exceeds the limit"):  # the limit is on the full size
        open_image(path, min_side=200, max_pixels=2400 * 1800 - 1)
    png = tmp_path / "photo.png"
    source.save(png)
    assert open_image(png, min_side=200).size == (2400, 1800)  # other formats are decoded whole


def test_reads_on_several_threads_all_refuse_bombs_and_leave_the_warning_filters_alone(monkeypatch):
    """Readers run on threads (image folders, report thumbnails): a per-read swap of the
    process's warning filters left them changed and could drop a refusal mid-read."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    def png(width: int, height: int) -> bytes:
        return _encode(Image.new("RGB", (width, height), (9, 99, 199)))

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    between, fine = png(150, 100), png(90, 100)  # 1.5x Pillow's limit (it only warns); under it
    warnings.resetwarnings()  # whatever took the refusal away, the next read puts it back
    open_image(fine)
    filters = list(warnings.filters)

    def read(i: int) -> str:
        try:
            open_image(between if i % 2 else fine, max_pixels=100_000)  # artengine's own limit allows it
        except ImageLoadError as exc:
            return "bomb" if "bomb" in exc.reason else exc.reason
        return "read"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(read, range(4000)))
    assert outcomes == ["read", "bomb"] * 2000
    assert warnings.filters == filters
