"""artengine.testing, as a plugin author uses it: the fixtures arrive through the pytest11
entry point (no import in this module), the runner discovers plugins afresh."""
from __future__ import annotations

import json
import types

import numpy as np
from PIL import Image

from artengine import Finding, ReferenceRegistry, hookimpl, query_hashes
from artengine.plugins import get_plugins
from artengine.testing import ArtengineRunner


def test_tiny_model_fixture_generates_reproducible_images(artengine_tiny_model):
    model = artengine_tiny_model
    assert model.info.architecture == "dcgan" and model.info.image_size == 32
    first = model.generate(model.latents(3, range(4)))
    again = model.generate(model.latents(3, [2]))
    assert first.shape == (4, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first[2], again[0])


def test_registry_fixture_finds_its_own_images(artengine_registry):
    rng = np.random.default_rng(5)
    art = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1))
    other = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    path = artengine_registry([art])
    with ReferenceRegistry(path) as registry:
        assert registry.count() == 1
        thresholds = {"phash": 8, "dhash": 8}
        assert registry.search(query_hashes(art), thresholds)
        assert not registry.search(query_hashes(other), thresholds)


def _plugin_module() -> types.ModuleType:
    module = types.ModuleType("in_test_plugin")

    class Nothing:
        name = "in_test_audit"

        def check_image(self, item):
            return Finding(audit=self.name, outcome="pass", message="", item=item.key)

    module.ARTENGINE_HOOK_API = "1.0"
    module.artengine_audits = hookimpl(lambda: [Nothing])
    return module


def test_cli_runner_adds_uninstalled_plugins_and_leaves_no_trace(artengine_cli):
    plain = json.loads(artengine_cli.invoke("plugins", "--json").output)
    assert "in_test_plugin" not in {p["name"] for p in plain["plugins"]}
    with_plugin = ArtengineRunner(plugins=[_plugin_module()]).invoke("plugins", "--json")
    row = next(p for p in json.loads(with_plugin.output)["plugins"] if p["name"] == "in_test_plugin")
    assert row["components"] == {"audits": ["in_test_audit"]}
    assert "in_test_plugin" not in get_plugins().infos  # the process-wide set is rediscovered


def test_cli_runner_env_applies_the_allowlist_for_one_command():
    result = ArtengineRunner(env={"ARTENGINE_PLUGINS": "shapes"}).invoke("plugins", "--json")
    assert [p["name"] for p in json.loads(result.output)["plugins"]] == ["shapes"]
