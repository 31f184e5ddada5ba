"""The CLIP layer as a user meets it: the shipped offline model, other models, and errors."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artengine import ModelLoadError, get_plugins, load_clip, sha256_file
from artengine.clip import TINY_CLIP_NAME, clear_clip_cache, tiny_clip_path
from artengine.clip_train import EVAL_PROMPTS, zero_shot_accuracy
from artengine_plugins.shapes import COLOURS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    return load_clip()


def shapes(n: int, seed: int, size: int = 64):
    dataset = get_plugins().components("datasets")["shapes"].open(None, image_size=size, seed=seed, length=n)
    return [dataset[i] for i in range(n)]


def test_shipped_tiny_clip_is_small_safetensors_with_config():
    folder = tiny_clip_path()
    weights = folder / "open_clip_model.safetensors"
    assert weights.is_file() and (folder / "open_clip_config.json").is_file()
    assert weights.stat().st_size <= 20 * 1024 * 1024
    assert not [p for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    record = json.loads((folder / "training.json").read_text())
    assert record["zero_shot"]["accuracy"]["colour"] >= 0.95


def test_default_model_loads_offline_and_identifies_its_weights(tiny):
    assert tiny.name == TINY_CLIP_NAME
    assert tiny.weights_sha256 == sha256_file(tiny_clip_path() / "open_clip_model.safetensors")
    assert load_clip() is tiny  # one model per process, shared by every consumer


def test_default_model_needs_no_network(tmp_path):
    # A fresh process where any network access fails and the hub is forced offline.
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from artengine import load_clip\n"
        "m = load_clip()\n"
        "print(m.encode_texts(['a red circle']).shape)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "(1, " in out.stdout


def test_image_embeddings_are_unit_float32_and_the_same_for_every_input_form(tiny):
    samples = shapes(10, seed=5)
    pil = [s.image for s in samples]
    array = np.stack([np.asarray(im) for im in pil])
    a = tiny.encode_images(array)
    b = tiny.encode_images(pil)
    c = np.concatenate([tiny.encode_images(array[:3], batch_size=2), tiny.encode_images(array[3:], batch_size=4)])
    assert a.dtype == np.float32 and a.shape == (10, tiny.embed_dim)
    assert np.linalg.norm(a, axis=1) == pytest.approx(np.ones(10), abs=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_large_and_non_square_images_are_resized_and_centre_cropped(tiny):
    small = shapes(1, seed=6)[0].image
    big = small.resize((512, 512), Image.Resampling.BICUBIC)
    wide = Image.new("RGB", (1024, 512), (128, 128, 128))
    wide.paste(big, (256, 0))
    e_small, e_big, e_wide = tiny.encode_images([small, big, wide])
    assert float(e_small @ e_big) > 0.95
    assert float(e_big @ e_wide) > 0.95  # the centre crop of the wide image is the big one


def test_large_images_are_resized_a_few_at_a_time_with_the_same_embeddings(tiny, monkeypatch):
    """Images of one size are gathered for resizing in groups of at most _GROUP_BYTES of
    pixels (a chunk of camera-size photographs is not copied whole): the embeddings are
    the same bits however the images are grouped."""
    from artengine import clip as clip_module

    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)) for _ in range(5)]
    images.insert(2, Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    whole = tiny.encode_images(images)
    monkeypatch.setattr(clip_module, "_GROUP_BYTES", 2 * 300 * 400 * 3)  # two photographs per call
    assert np.array_equal(tiny.encode_images(images), whole)
    monkeypatch.setattr(clip_module, "_GROUP_BYTES", 1)  # one per call
    assert np.array_equal(tiny.encode_images(images), whole)


@pytest.mark.parametrize("interpolation,resize_mode", [("bicubic", "shortest"), ("bilinear", "squash")])
def test_batched_preprocess_agrees_with_open_clips_own(tiny, interpolation, resize_mode):
    # open_clip's preprocess resizes each PIL image on its own; ours resizes a batch at
    # once in torch. Stated tolerance: a grey level or two on average, embeddings with
    # cosine >= 0.9999, and the same zero-shot answers.
    from open_clip.transform import image_transform

    from artengine.clip import ClipModel

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    model = ClipModel(tiny.model, tiny.tokenizer, name="t", image_size=tiny.image_size, mean=mean, std=std,
                      interpolation=interpolation, resize_mode=resize_mode)
    theirs = image_transform(tiny.image_size, is_train=False, mean=mean, std=std,
                             interpolation=interpolation, resize_mode=resize_mode)
    rng = np.random.default_rng(0)
    samples = [s.image for s in shapes(24, seed=11)]
    images = (samples[:6]  # already the model's size
              + [im.resize((256, 256), Image.Resampling.BICUBIC) for im in samples[6:14]]
              + [im.resize((211, 129), Image.Resampling.BICUBIC) for im in samples[14:20]]
              + [im.resize((40, 40), Image.Resampling.BICUBIC) for im in samples[20:]]
              + [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in
                 ((200, 300, 3), (300, 97, 3), (97, 300, 3))])  # noise: the hardest case
    ours = model.preprocess(images)
    reference = torch.stack([theirs(im) for im in images])
    assert ours.shape == reference.shape == (len(images), 3, tiny.image_size, tiny.image_size)
    grey_levels = ((ours - reference) * torch.tensor(std).view(1, 3, 1, 1) * 255).abs()
    assert float(grey_levels.mean()) < 0.5 and float(grey_levels.max()) <= 8
    with torch.inference_mode():
        a = torch.nn.functional.normalize(model.model.encode_image(ours), dim=-1)
        b = torch.nn.functional.normalize(model.model.encode_image(reference), dim=-1)
    assert float((a * b).sum(-1).min()) >= 0.9999
    colours = np.stack([model.encode_prompt_ensemble(EVAL_PROMPTS["colour"], c) for c in COLOURS])
    np.testing.assert_array_equal((a.numpy() @ colours.T).argmax(1), (b.numpy() @ colours.T).argmax(1))
    # every input form gives the same batch
    np.testing.assert_array_equal(model.prepare(images[6:14]).numpy(),
                                  model.prepare(np.stack([np.asarray(im) for im in images[6:14]])).numpy())


def test_unsupported_preprocess_config_is_one_clear_error(tiny):
    from artengine.clip import ClipModel

    with pytest.raises(ModelLoadError, match="resize mode 'longest'"):
        ClipModel(tiny.model, tiny.tokenizer, name="t", image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3,
                  resize_mode="longest")


def test_text_embeddings_are_cached_per_distinct_text(tiny):
    before = len(tiny._text_cache)
    first = tiny.encode_texts(["a test prompt 1", "a test prompt 2", "a test prompt 1"])
    assert len(tiny._text_cache) == before + 2
    again = tiny.encode_texts(["a test prompt 2"])
    assert len(tiny._text_cache) == before + 2
    np.testing.assert_array_equal(first[1], again[0])
    np.testing.assert_array_equal(first[0], first[2])
    assert np.linalg.norm(first, axis=1) == pytest.approx(np.ones(3), abs=1e-5)


def test_zero_shot_on_held_out_shapes_with_prompts_unlike_the_captions(tiny):
    captions = {s.caption for s in shapes(200, seed=0)}
    for templates in EVAL_PROMPTS.values():
        for template in templates:
            assert not any(template.replace("{}", "").strip() in c for c in captions)
    result = zero_shot_accuracy(tiny, images=300, seed=4242)
    assert result.accuracy["colour"] >= 0.95
    assert result.accuracy["shape"] >= 0.80


# ----------------------------------------------------------------------------- other models


def test_local_checkpoint_folder_and_file_load(tmp_path, tiny):
    copy = tmp_path / "my_clip"
    shutil.copytree(tiny_clip_path(), copy)
    by_folder = load_clip(str(copy))
    by_file = load_clip(str(copy / "open_clip_model.safetensors"))
    image = np.asarray(shapes(1, seed=7)[0].image)[None]
    np.testing.assert_allclose(by_folder.encode_images(image), tiny.encode_images(image), atol=1e-6)
    assert by_file.weights_sha256 == tiny.weights_sha256


class _Sentinel:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_pickle_checkpoints_are_refused_without_being_read(tmp_path):
    sentinel = tmp_path / "sentinel"
    payload = pickle.dumps(_Sentinel(str(sentinel)))
    (tmp_path / "evil.pt").write_bytes(payload)
    folder = tmp_path / "evil_dir"
    folder.mkdir()
    shutil.copy(tiny_clip_path() / "open_clip_config.json", folder)
    (folder / "open_clip_pytorch_model.bin").write_bytes(payload)
    for model, pretrained in ((str(tmp_path / "evil.pt"), None), (str(folder), None),
                              ("RN50", str(tmp_path / "evil.pt"))):
        with pytest.raises(ModelLoadError) as info:
            load_clip(model, pretrained)
        assert "safetensors" in str(info.value)
    assert not sentinel.exists()


def test_corrupt_safetensors_is_one_clear_error_and_fast(tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_clip_path(), folder)
    weights = folder / "open_clip_model.safetensors"
    weights.write_bytes(struct.pack("<Q", 10**9) + b"{}")  # header longer than the file
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_clip(str(folder))
    assert time.perf_counter() - start < 5
    assert str(weights) in str(info.value)


@pytest.mark.parametrize("model, pretrained, words", [
    ("ViT-B-99", None, "not an open_clip model name"),
    ("ViT-B-32", None, "--clip-pretrained"),
    ("ViT-B-32", "no_such_tag", "unknown pretrained tag"),
    (None, "laion2b_s34b_b79k", "needs a CLIP model name"),
])
def test_bad_model_names_are_one_clear_error(model, pretrained, words):
    with pytest.raises(ModelLoadError) as info:
        load_clip(model, pretrained)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def _cli(args, env_extra, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **env_extra}
    env.pop("HF_HUB_OFFLINE", None) if "HF_HUB_OFFLINE" not in env_extra else None
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "artengine", *args], capture_output=True, text=True,
                         env=env, timeout=600)
    return out, time.perf_counter() - start


def test_named_model_missing_offline_is_one_line_exit_2(tmp_path):
    out, _ = _cli(["clip", "info", "--clip-model", "ViT-B-32", "--clip-pretrained", "laion2b_s34b_b79k"],
                  {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0] and "ViT-B-32" in lines[0]


def test_named_model_with_unreachable_hub_fails_fast_without_retrying(tmp_path):
    # Port 9 (discard) on localhost refuses connections: what a machine without internet sees.
    env = {"HF_ENDPOINT": "http://127.0.0.1:9"}
    out, seconds = _cli(["clip", "info", "--clip-model", "ViT-B-32", "--clip-pretrained", "laion2b_s34b_b79k"],
                        env, tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "cannot be reached" in out.stderr
    # The hub client alone retries for over 20 s here; the probe answers at once. The
    # rest is interpreter, torch and open_clip start-up on a shared machine.
    print(f"failed after {seconds:.1f} s")


def test_named_model_from_hub_cache_loads_without_network(tmp_path):
    """A hub-cache entry is used as is: HF_HUB_OFFLINE set, and no network touched."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = open_clip.get_pretrained_cfg("RN50", "openai")
    repo_id = cfg["hf_hub"].rstrip("/")
    cache = tmp_path / "hub"
    snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    model = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True)
    torch.manual_seed(0)
    save_file({k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()},
              str(snapshot / "open_clip_model.safetensors"))
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "from artengine import load_clip\n"
        "m = load_clip('RN50', 'openai')\n"
        "print(m.name, m.embed_dim, m.image_size)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["RN50/openai", "1024", "224"]
    clear_clip_cache()
