"""Loading models (rows 8-11) and reproducible generation."""
from __future__ import annotations

import logging
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

import artengine
from artengine import ModelLoadError
from artengine.checkpoints import check_torch_version, list_checkpoints
from artengine.errors import ArtengineError, InputError
from artengine.models import GENERATION_CHUNK, export_generator, load_model
from artengine.training import TrainOptions, train

from test_training import TINY

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny trained run per built-in architecture."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for arch in ("dcgan", "cgan", "stylegan"):
        out[arch] = base / arch
        train(TrainOptions(out=out[arch], arch=arch, data="shapes", steps=2, batch_size=8, data_length=32,
                           settings=TINY[arch], progress=False))
    return out


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("arch", ["dcgan", "cgan", "stylegan"])
def test_image_bytes_do_not_depend_on_batching_or_threads(runs, arch):
    """Image i is the same bytes whether generated alone, in any batch, at any offset, or
    with another torch thread count in the caller."""
    model = load_model(runs[arch])
    count = 2 * GENERATION_CHUNK + 7
    labels = [i % 4 for i in range(count)] if arch != "dcgan" else None

    def make(indices, threads=None):
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            subset = None if labels is None else [labels[i] for i in indices]
            return model.generate(model.latents(5, indices), labels=subset)
        finally:
            torch.set_num_threads(previous)

    whole = make(range(count))
    assert whole.shape == (count, 32, 32, 3) and whole.dtype == np.uint8
    pieces = np.concatenate([make(range(0, 1)), make(range(1, 4)), make(range(4, 40)), make(range(40, count))])
    assert np.array_equal(whole, pieces)
    shifted = make(range(13, 13 + GENERATION_CHUNK))
    assert np.array_equal(whole[13:13 + GENERATION_CHUNK], shifted)
    for threads in (1, 2, 3):
        assert np.array_equal(whole[:9], make(range(9), threads=threads))
    assert len({whole[i].tobytes() for i in range(count)}) == count


def test_latent_of_an_index_depends_only_on_seed_and_index(runs):
    model = load_model(runs["dcgan"])
    a = model.latents(3, [0, 1, 2, 7])
    assert torch.equal(a[3], model.latents(3, [7])[0])
    assert not torch.equal(a[0], model.latents(4, [0])[0])
    assert a.shape == (4, model.info.z_dim) and a.dtype == torch.float32


def test_model_info(runs):
    model = load_model(runs["cgan"])
    info = model.info
    assert info.architecture == "cgan" and info.conditioning == "label" and info.image_size == 32
    assert info.class_names == ["circle", "square", "triangle", "star"] and info.style_names == []
    newest = list_checkpoints(runs["cgan"])[-1][1]
    import hashlib
    assert info.weights_sha256 == hashlib.sha256(newest.read_bytes()).hexdigest()
    assert info.source == "run" and info.step == 2 and not info.pickle_opt_in
    assert info.training_data["spec"] == "shapes"


def test_labels_by_name_or_index_and_bad_conditioning(runs):
    model = load_model(runs["cgan"])
    z = model.latents(0, range(3))
    assert np.array_equal(model.generate(z, labels="star"), model.generate(z, labels=[3, 3, 3]))
    with pytest.raises(InputError, match="'hexagon'"):
        model.generate(z, labels="hexagon")
    with pytest.raises(InputError, match="needs a class label") as refused:
        model.generate(z)
    assert f"model {str(runs['cgan'])!r}" in str(refused.value)  # named as it was loaded, not by its run's name
    shipped = load_model(Path(artengine.__file__).parent / "starting_points" / "shapes-cgan32.safetensors")
    with pytest.raises(InputError, match=r"^model '.*shapes-cgan32\.safetensors' \(cgan\) is not a style model$"):
        shipped.style_from_label("x")
    with pytest.raises(InputError, match="unconditional"):
        load_model(runs["dcgan"]).generate(load_model(runs["dcgan"]).latents(0, [0]), labels=[0])


def test_style_from_label_or_reference_image(runs):
    from artengine_plugins.shapes import open_shapes

    model = load_model(runs["stylegan"])
    assert model.info.style_names == ["circle", "square", "triangle", "star"]
    z = model.latents(1, range(4))
    by_name = model.style_from_label("triangle")
    assert by_name.shape == (model.info.style_dim,)
    assert np.array_equal(model.generate(z, styles=by_name), model.generate(z, labels="triangle"))
    reference = open_shapes(None, image_size=64, seed=9)[0].image  # any size: cropped and resized
    from_image = model.style_from_image(reference)
    assert torch.equal(from_image, model.style_from_image(reference))
    assert model.generate(z, styles=from_image).shape == (4, 32, 32, 3)
    with pytest.raises(InputError, match="not a style model"):
        load_model(runs["cgan"]).style_from_image(reference)


def test_exported_weights_generate_the_same_images(runs, tmp_path):
    exported = export_generator(runs["stylegan"], tmp_path / "style.safetensors")
    a, b = load_model(runs["stylegan"]), load_model(exported)
    assert b.info.source == "export" and b.info.style_names == a.info.style_names
    z = a.latents(2, range(5))
    assert np.array_equal(a.generate(z, labels="circle"), b.generate(z, labels="circle"))
    assert exported.stat().st_size < list_checkpoints(runs["stylegan"])[-1][1].stat().st_size


# --------------------------------------------------------------------------- rows 8-11


class WritesSentinel:
    """Unpickling this object creates a file: the code-execution attack of row 8."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    sentinel = tmp_path / "pwned"
    for name, writer in (("evil.pt", lambda p, o: torch.save(o, p)),
                         ("evil.pkl", lambda p, o: p.write_bytes(pickle.dumps(o, protocol=4)))):
        path = tmp_path / name
        writer(path, {"run": {}, "G_ema": WritesSentinel(sentinel)})
        with pytest.raises(ModelLoadError, match="pickle") as info:
            load_model(path)
        assert str(path) in str(info.value) and "--allow-pickle" in str(info.value)
        renamed = tmp_path / (name + ".safetensors")
        renamed.write_bytes(path.read_bytes())
        with pytest.raises(ModelLoadError, match="pickle"):
            load_model(renamed)
    assert not sentinel.exists()


def test_foreign_pickle_exits_2_by_default_and_loads_only_with_the_logged_opt_in(runs, tmp_path, caplog):
    model = load_model(runs["dcgan"])
    legacy = tmp_path / "legacy.pt"
    torch.save({"run": model.run_config, "G_ema": model.generator.state_dict(), "step": 2}, legacy)
    cli = [sys.executable, "-m", "artengine", "export", str(legacy), str(tmp_path / "out.safetensors")]
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "legacy.pt" in refused.stderr
    assert not (tmp_path / "out.safetensors").exists()
    with caplog.at_level(logging.WARNING, logger="artengine"):
        opted = load_model(legacy, allow_pickle=True)
    assert opted.info.pickle_opt_in and opted.info.source == "pickle"
    assert any("explicit opt-in" in r.message for r in caplog.records)
    z = model.latents(0, range(3))
    assert np.array_equal(opted.generate(z), model.generate(z))
    converted = subprocess.run(cli + ["--allow-pickle"], capture_output=True, text=True, timeout=120)
    assert converted.returncode == 0, converted.stderr
    assert load_model(tmp_path / "out.safetensors").info.source == "export"


def test_an_opted_in_pickle_that_does_not_fit_names_the_first_misfit(runs, tmp_path):
    model = load_model(runs["dcgan"])
    state = dict(model.generator.state_dict())
    name, tensor = next(iter(state.items()))
    cases = {
        "misshapen.pt": ({**state, name: tensor[:1]},
                         f"G_ema tensor {name} is {tuple(tensor[:1].shape)} in the file, {tuple(tensor.shape)} now"),
        "not-a-tensor.pt": ({**state, name: [1.0]}, f"G_ema tensor {name} is a list in the file, not a tensor"),
        "not-a-dict.pt": (list(state.values()), "expected a dict with 'run' and 'G_ema'"),
    }
    for file, (weights, reason) in cases.items():
        torch.save({"run": model.run_config, "G_ema": weights}, tmp_path / file)
        with pytest.raises(ModelLoadError) as info:
            load_model(tmp_path / file, allow_pickle=True)
        assert file in str(info.value) and reason in str(info.value)


def test_torch_older_than_2_6_is_refused_with_the_reason():
    with pytest.raises(ArtengineError, match="CVE-2025-32434"):
        check_torch_version("2.5.1+cpu")
    check_torch_version("2.6.0")
    check_torch_version(torch.__version__)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in pyproject


def _header(length: int, body: bytes) -> bytes:
    return struct.pack("<Q", length) + body


@pytest.mark.parametrize("case, reason", [
    ("header_longer_than_file", "invalid header length"),
    ("header_over_100MB", "header too large"),
    ("mismatched_offsets", "invalid offset"),
    ("truncated", "not fully covered"),
    ("empty", "header too small"),
    ("digest_mismatch", "does not match its recorded digest"),
])
def test_malformed_safetensors_fail_fast_naming_the_file(runs, tmp_path, case, reason):
    good = export_generator(runs["dcgan"], tmp_path / "good.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", good[:8])
    header = good[8:8 + length]
    data = {
        "header_longer_than_file": lambda: _header(len(good) * 4, good[8:]),
        "header_over_100MB": lambda: _header(150_000_000, good[8:]),
        "mismatched_offsets": lambda: good[:8] + header.replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1)
        + good[8 + length:],
        "truncated": lambda: good[: len(good) - 100],
        "empty": lambda: b"",
        "digest_mismatch": lambda: good[:-4] + bytes(4 * [0x3F]),
    }[case]()
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(info.value) and reason in str(info.value)


def test_safetensors_without_an_artengine_record_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(save_safetensors({"w": torch.zeros(3)}))
    with pytest.raises(ModelLoadError, match="not written by artengine"):
        load_model(path)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    out = tmp_path / "run"
    train(TrainOptions(out=out, arch="dcgan", data="shapes", steps=4, batch_size=8, data_length=16,
                       settings=TINY["dcgan"], checkpoint_every=2, progress=False))
    newest = list_checkpoints(out)[-1][1]
    raw = bytearray(newest.read_bytes())
    raw[-50] ^= 0xFF  # one flipped bit deep in the tensor data, not a truncation
    newest.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="artengine"):
        model = load_model(out)
    assert model.info.step == 2
    assert any("damaged" in r.message for r in caplog.records)
    newest.write_bytes(bytes(raw[: len(raw) // 2]))  # a write cut short: truncated newest checkpoint
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="artengine"):
        model = load_model(out)
    assert model.info.step == 2
    assert any("damaged" in r.message and newest.name in r.message for r in caplog.records)
    for _, path in list_checkpoints(out):
        path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no usable checkpoint"):
        load_model(out)
