"""Built-in datasets: procedural shapes and image folders."""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from artengine import InputError, get_plugins, open_dataset


def _open(spec, **kw):
    return open_dataset(spec, datasets=get_plugins().components("datasets"), **kw)


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_are_deterministic_per_seed(size):
    a, b, c = _open("shapes", image_size=size, seed=7), _open("shapes", image_size=size, seed=7), \
        _open("shapes", image_size=size, seed=8)
    for i in (0, 5, 999):
        sa, sb = a[i], b[i]
        assert sa.image.size == (size, size) and sa.image.mode == "RGB"
        assert np.array_equal(np.asarray(sa.image), np.asarray(sb.image))
        assert sa.caption == sb.caption and sa.attributes == sb.attributes
    differs = sum(not np.array_equal(np.asarray(a[i].image), np.asarray(c[i].image)) for i in range(10))
    assert differs == 10


def test_shapes_samples_carry_caption_attributes_and_label():
    shapes = _open("shapes", image_size=32, seed=0)
    sample = shapes[3]
    assert set(sample.attributes) == {"shape", "colour", "background"}
    assert sample.attributes["colour"] in sample.caption
    assert sample.attributes["shape"] in sample.caption
    assert shapes.classes[sample.label] == sample.attributes["shape"]
    by_colour = _open("shapes", image_size=32, label_attribute="colour")
    assert list(by_colour.classes) == list(by_colour.attributes["colour"])


def test_shapes_joint_label_names_every_combination_and_matches_each_sample():
    joint = _open("shapes", image_size=32, seed=3, length=200, label_attribute="shape+colour")
    assert len(joint.classes) == 24 and joint.classes[:2] == ["circle/red", "circle/green"]
    assert joint.classes[-1] == "star/orange"
    for i in range(200):
        s = joint[i]
        assert joint.classes[s.label] == f"{s.attributes['shape']}/{s.attributes['colour']}"
    every = _open("shapes", image_size=32, length=10, label_attribute="colour+background+shape")
    assert len(every.classes) == 96 and every.classes[0] == "red/plain/circle"
    # the same images whatever the label: only the label changes
    plain = _open("shapes", image_size=32, seed=3, length=200)
    assert np.array_equal(np.asarray(plain[7].image), np.asarray(joint[7].image))


@pytest.mark.parametrize("attribute,message", [
    ("shape+hue", "label attribute 'hue' is not one of shape, colour, background"),
    ("shape+shape", "names an attribute twice"),
    ("", "label attribute '' is not one of"),
])
def test_shapes_bad_label_attribute_is_named(attribute, message):
    with pytest.raises(InputError, match=message):
        _open("shapes", image_size=32, label_attribute=attribute)


def test_shapes_attributes_are_roughly_uniform_and_weights_skew_them():
    uniform = _open("shapes", image_size=32, seed=1, length=1200)
    counts = Counter(uniform[i].attributes["colour"] for i in range(1200))
    assert len(counts) == 6 and min(counts.values()) > 140
    skewed = _open("shapes", image_size=32, seed=1, length=1000,
                   weights={"colour": {"red": 0.8, "blue": 0.2}})
    counts = Counter(skewed[i].attributes["colour"] for i in range(1000))
    assert set(counts) == {"red", "blue"} and 740 < counts["red"] < 860


def test_shapes_colour_is_visible_in_the_pixels():
    # The drawn shape really has the named colour: the most saturated pixels match it.
    shapes = _open("shapes", image_size=64, seed=2)
    refs = {"red": (220, 38, 38), "green": (34, 160, 60), "blue": (37, 90, 225),
            "yellow": (240, 205, 30), "purple": (140, 55, 185), "orange": (245, 125, 20)}
    for i in range(40):
        s = shapes[i]
        px = np.asarray(s.image).reshape(-1, 3).astype(float)
        sat = px.max(1) - px.min(1)
        shape_px = px[sat >= np.percentile(sat, 97)].mean(0)
        nearest = min(refs, key=lambda k: np.abs(np.array(refs[k]) - shape_px).sum())
        assert nearest == s.attributes["colour"], (i, s.attributes, shape_px)


def test_bad_dataset_arguments_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="neither a dataset name"):
        _open("no-such-thing", image_size=32)
    with pytest.raises(InputError, match="image-size"):
        _open("shapes", image_size=48)
    with pytest.raises(InputError, match="unknown colour"):
        _open("shapes", image_size=32, weights={"colour": {"teal": 1.0}})


def test_image_folder_labels_from_subfolders_and_skips_unreadable(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (tmp_path / "cats" / "empty.png").write_bytes(b"")
    (tmp_path / "cats" / "notes.txt").write_text("ignored: not an image suffix")
    with caplog.at_level(logging.WARNING, logger="artengine"):
        folder = _open(str(tmp_path), image_size=32)
    assert len(folder) == 6
    assert list(folder.classes) == ["cats", "dogs"]
    assert sorted(folder[i].label for i in range(6)) == [0, 0, 0, 1, 1, 1]
    assert folder[0].image.size == (32, 32)
    assert len(folder.skipped) == 2
    assert "skipped 2 unreadable file(s) of 8" in caplog.text


def test_image_folder_with_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="no readable images"):
        _open(str(tmp_path), image_size=32)


def test_joint_labels_split_into_parts_and_parts_combine_into_joint_scores():
    import torch

    from artengine.data import joint_log_probs, label_factors

    joint = _open("shapes", image_size=32, length=4, label_attribute="shape+colour")
    assert label_factors(joint.classes) == [list(joint.attributes["shape"]), list(joint.attributes["colour"])]
    assert label_factors(["circle", "square"]) is None and label_factors(["a/b", "c/d"]) is None
    scores = torch.randn(5, 4 + 6)
    out = joint_log_probs(scores, [4, 6])
    assert out.shape == (5, 24) and torch.allclose(out.exp().sum(1), torch.ones(5))
    best = scores[:, :4].argmax(1) * 6 + scores[:, 4:].argmax(1)  # the row-major index of both parts' best
    assert torch.equal(out.argmax(1), best)


def _background_as_blended(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The shapes background as a blend of its two tones by a float mix, every pixel
    computed: what ``_background`` must equal byte for byte (training data, stored bias
    references and the shipped starting point were made with it)."""
    import math

    base = rng.uniform(40, 215)
    other = base + rng.choice([-1, 1]) * rng.uniform(30, 55)
    tint = rng.uniform(-8, 8, size=3)
    tone_a, tone_b = np.clip(base + tint, 0, 255), np.clip(other + tint, 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if style == "plain":
        mix = np.zeros((size, size), np.float32)
    elif style == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        mix = np.clip((np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) + 0.5, 0, 1)
    elif style == "stripes":
        theta, period = rng.uniform(0, math.pi), rng.uniform(0.12, 0.2)
        mix = (np.floor((np.cos(theta) * xx + np.sin(theta) * yy) / period) % 2).astype(np.float32)
    else:
        period = rng.uniform(0.12, 0.18)
        fx, fy = (xx / period) % 1.0 - 0.5, (yy / period) % 1.0 - 0.5
        mix = ((fx * fx + fy * fy) < 0.09).astype(np.float32)
    return (tone_a[None, None, :] * (1 - mix[..., None]) + tone_b[None, None, :] * mix[..., None]).astype(np.uint8)


@pytest.mark.parametrize("style", ["plain", "gradient", "stripes", "dots"])
def test_shapes_backgrounds_are_the_blend_byte_for_byte(style):
    from artengine_plugins.shapes import _background

    for size in (32, 128, 256):
        for seed in range(25):
            fast = _background(style, size, np.random.default_rng([seed, size]))
            assert fast.dtype == np.uint8 and fast.shape == (size, size, 3) and fast.flags.writeable
            assert np.array_equal(fast, _background_as_blended(style, size, np.random.default_rng([seed, size])))
    # and the generator is left where the blend leaves it (the shape is drawn from it next)
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    _background(style, 64, a), _background_as_blended(style, 64, b)
    assert a.random() == b.random()


def test_image_folder_reads_large_jpegs_in_place_and_close_to_a_full_size_downscale(tmp_path):
    """Photographs are read at a reduced scale on several threads: the same files in the
    same order, and each square within a fraction of a grey level of a Lanczos downscale
    of the full-size centre square (whole reduced pixels would shift it: over 1 level)."""
    from artengine_plugins.imagefolder import READ_GAP

    rng = np.random.default_rng(1)
    sizes = [(3000, 2000), (2000, 3000), (2400, 1800), (1000, 800), (640, 480)]
    ideal = []
    for i, (width, height) in enumerate(sizes):
        coarse = Image.fromarray(rng.integers(0, 256, (height // 40, width // 40, 3), dtype=np.uint8))
        base = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        Image.fromarray(np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)).save(
            tmp_path / f"{i}.jpg", quality=92)
        full = Image.open(tmp_path / f"{i}.jpg").convert("RGB")
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        ideal.append(np.asarray(full.resize((64, 64), Image.Resampling.LANCZOS,
                                            box=(left, top, left + side, top + side)), dtype=np.int16))
    folder = _open(str(tmp_path), image_size=64)
    assert [s.rsplit("/", 1)[-1] for s in folder.sources] == [f"{i}.jpg" for i in range(len(sizes))]
    assert min(min(w, h) for w, h in sizes[:3]) > 8 * READ_GAP * 64  # these three are read at 1/8 scale
    for i, expected in enumerate(ideal):
        assert np.abs(folder.pixels[i].astype(np.int16) - expected).mean() < 0.5, sizes[i]
