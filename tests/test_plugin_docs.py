"""docs/plugins.md: the hook reference is in sync with artengine/hookspecs.py, and its
worked examples (docs/examples) really work as plugins."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

from artengine import HOOK_API_VERSION, Plugins, hookspecs
from artengine.models import load_model
from artengine.testing import ArtengineRunner

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_doc_is_generated_from_the_current_hookspecs_and_examples():
    generator = _load(DOCS / "generate_plugin_docs.py")
    text = (DOCS / "plugins.md").read_text()
    assert generator.render(text) == text, "run: python docs/generate_plugin_docs.py"
    for name, function in vars(hookspecs).items():
        if name.startswith("artengine_") and callable(function):
            assert f"#### `{name}`" in text
            assert generator._markdown(function.__doc__.strip().splitlines()[0]) in text
    assert f"Hook API version **{HOOK_API_VERSION}**" in text


def test_minimal_audit_example_blocks_small_images(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(folder / "large.png")
    Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(folder / "small.png")
    (tmp_path / "p.toml").write_text('[policy]\nname = "delivery"\nversion = 1\n\n'
                                     '[audits.min_resolution]\nmin_side = 512\n')
    runner = ArtengineRunner(plugins=[_load(DOCS / "examples" / "minimal_audit.py")])
    result = runner.invoke("audit", str(folder), "--policy", str(tmp_path / "p.toml"),
                           "--report", str(tmp_path / "report"), "--json")
    assert result.exit_code == 1
    images = {i["key"]: i for i in json.loads(result.stdout)["images"]}
    assert images["large.png"]["verdict"] == "pass" and images["small.png"]["verdict"] == "block"


def test_minimal_architecture_example_trains_and_generates(tmp_path):
    module = _load(DOCS / "examples" / "minimal_architecture.py")
    run = tmp_path / "run"
    result = ArtengineRunner(plugins=[module]).invoke(
        "train", "--arch", "mlp_gan", "--data", "shapes", "--out", str(run), "--steps", "2",
        "--batch-size", "8", "--data-length", "16", "--set", "hidden=32", "--device", "cpu")
    assert result.exit_code == 0, result.output
    plugins = Plugins.discover()
    plugins.register(module)
    model = load_model(run, plugins=plugins)
    images = model.generate(model.latents(0, range(3)))
    assert model.info.architecture == "mlp_gan" and images.shape == (3, 32, 32, 3)
    assert images.std() > 0  # real pixels from the trained network, not a constant
