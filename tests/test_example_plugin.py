"""The third-party path end to end: the separately packaged example plugin
(plugins/example_audit) installs into a fresh virtual environment, is discovered, audits a
folder through `artengine audit`, runs its own tests there, and is gone after uninstall."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from artengine.testing import OverlayVenv

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "example_audit"
POLICY = """
[policy]
name = "studio"
version = 1

[audits.blank_image]
min_contrast = 6.0
"""


def _audit_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    Image.new("RGB", (64, 64), (240, 240, 235)).save(folder / "blank.png")
    noisy_flat = np.full((64, 64, 3), 120, dtype=np.uint8) + np.random.default_rng(1).integers(0, 3, (64, 64, 3),
                                                                                              dtype=np.uint8)
    Image.fromarray(noisy_flat).save(folder / "almost_blank.png")
    art = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(art).save(folder / "art.png")
    return folder


def test_install_discover_audit_uninstall_in_a_fresh_venv(tmp_path):
    project = shutil.copytree(EXAMPLE, tmp_path / "example_audit")  # builds leave files in the source tree
    folder = _audit_folder(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    env = OverlayVenv(tmp_path / "venv")
    env.install(project)

    listed = json.loads(env.artengine("plugins", "--json").stdout)
    row = next(p for p in listed["plugins"] if p["name"] == "blank_image")
    assert row["status"] == "loaded" and row["distribution"] == "artengine-blank-audit"
    assert row["version"] == "1.0.0" and row["components"] == {"audits": ["blank_image"]}

    # Only this plugin loads (the allowlist): the audit needs nothing else, and skipping the
    # architecture plugins saves importing torch.
    audited = env.artengine("audit", str(folder), "--policy", str(policy), "--report", str(tmp_path / "report"),
                            "--json", ARTENGINE_PLUGINS="artengine-blank-audit")
    assert audited.returncode == 1, audited.stderr
    report = json.loads(audited.stdout)
    assert {i["key"]: i["verdict"] for i in report["images"]} == {
        "blank.png": "block", "almost_blank.png": "block", "art.png": "pass"}
    assert report["plugins"]["blank_image"] == "1.0.0"

    # The plugin's own test suite, as its author runs it, against the installed package.
    own = env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests"))
    assert own.returncode == 0, own.stdout + own.stderr

    env.uninstall("artengine-blank-audit")
    assert not (env.site_packages / "artengine_blank_audit").exists()
    # Gone from discovery: a policy that needs the audit now refuses to run, naming it
    # (a missing audit plugin aborts the run, row 13).
    gone = env.artengine("audit", str(folder), "--policy", str(policy), "--report", str(tmp_path / "report2"))
    assert gone.returncode == 2
    assert "blank_image" in gone.stderr and "Traceback" not in gone.stderr


def test_main_distribution_does_not_package_the_example(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "tests",
                                                                  "benchmarks", "__pycache__", "docs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True,
                   env={"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1", "PATH": "/usr/bin:/bin"})
    (wheel,) = (tmp_path / "dist").glob("artengine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "artengine_plugins/shapes.py" in names
    assert not [n for n in names if "example_audit" in n or "blank_audit" in n]
