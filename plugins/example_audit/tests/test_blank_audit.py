"""Tests of the blank_image audit, written as a plugin author would: through the real
`artengine audit` command, with the helpers of artengine.testing."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

import artengine_blank_audit
from artengine.testing import ArtengineRunner

POLICY = """
[policy]
name = "blank"
version = 1

[audits.blank_image]
min_contrast = 6.0
"""


def test_blank_images_are_blocked_and_art_passes(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    Image.new("RGB", (64, 64), (30, 90, 200)).save(folder / "flat.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "art.png")
    (tmp_path / "policy.toml").write_text(POLICY)

    # Registered in-process: the tests run before (or without) installing the package.
    runner = ArtengineRunner(plugins=[artengine_blank_audit])
    result = runner.invoke("audit", str(folder), "--policy", str(tmp_path / "policy.toml"),
                           "--report", str(tmp_path / "report"), "--json")
    assert result.exit_code == 1
    verdicts = {i["key"]: i["verdict"] for i in json.loads(result.output)["images"]}
    assert verdicts == {"flat.png": "block", "art.png": "pass"}
