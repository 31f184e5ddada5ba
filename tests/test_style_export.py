"""`artengine style export`: a trained run becomes a style plugin that installs with pip,
is discovered, loads, and uninstalls cleanly (fresh virtual environment)."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from artengine.registry import ReferenceRegistry
from artengine.testing import ArtengineRunner, OverlayVenv, train_tiny_run

LICENCE = "CC-BY-4.0: procedural shapes by the artengine tests"


@pytest.fixture(scope="module")
def run(artengine_tiny_run) -> Path:
    """A dcgan run on 32 shapes (artengine.testing, trained once per session)."""
    return artengine_tiny_run


@pytest.fixture(scope="module")
def package(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("style") / "pkg"
    result = ArtengineRunner().invoke("style", "export", str(run), "--name", "test-shapes", "--out", str(out),
                                      "--licence", LICENCE, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["references"] == 32
    return out


def test_package_holds_weights_registry_distribution_licence_and_card(run, package):
    data = package / "artengine_style_test_shapes" / "data"
    project = tomllib.loads((package / "pyproject.toml").read_text())
    assert project["project"]["name"] == "artengine-style-test-shapes"
    assert project["project"]["entry-points"]["artengine"] == {"style_test_shapes": "artengine_style_test_shapes"}
    assert any(d.startswith("artengine") for d in project["project"]["dependencies"])
    with ReferenceRegistry(data / "registry.sqlite") as registry:
        assert registry.count() == 32  # every training image, hashed
    # The distribution is the training record's attribute counts, as probabilities.
    record = json.loads((run / "training_data.json").read_text())
    distribution = json.loads((data / "reference_distribution.json").read_text())["attributes"]
    assert set(distribution) == set(record["attribute_counts"]) == {"shape", "colour", "background"}
    for attribute, counts in record["attribute_counts"].items():
        assert sum(distribution[attribute].values()) == pytest.approx(1.0)
        for value, count in counts.items():
            assert distribution[attribute][value] == pytest.approx(count / 32)
    assert (data / "LICENCE").read_text().strip() == LICENCE
    card = (data / "MODEL_CARD.md").read_text()
    assert "dcgan" in card and LICENCE in card and "32 images" in card
    assert json.loads((data / "style.json").read_text())["model"]["architecture"] == "dcgan"


def test_fresh_venv_install_discover_load_uninstall(package, tmp_path):
    env = OverlayVenv(tmp_path / "venv")
    env.install(package)

    listed = json.loads(env.artengine("plugins", "--json").stdout)
    row = next(p for p in listed["plugins"] if p["name"] == "style_test_shapes")
    assert row["status"] == "loaded"
    assert row["distribution"] == "artengine-style-test-shapes"
    assert row["components"] == {"styles": ["test-shapes"]}

    # The installed style loads, generates, and its registry opens read-only where pip put it.
    script = """
import json, sys
from artengine import ReferenceRegistry, get_plugins
from artengine.models import load_model
style = get_plugins().component("styles", "test-shapes")
model = load_model(style.weights)
images = model.generate(model.latents(7, range(3)))
with ReferenceRegistry(style.registry) as registry:
    count = registry.count()
print(json.dumps({"weights": str(style.weights), "shape": list(images.shape), "dtype": str(images.dtype),
                  "sha": model.info.weights_sha256 == style.extra["weights_sha256"], "refs": count,
                  "licence": style.licence, "dist": style.read_reference_distribution()["shape"]}))
"""
    used = env.run("-c", script, check=True)
    found = json.loads(used.stdout)
    assert found["weights"].startswith(str(env.site_packages))
    assert found["shape"] == [3, 32, 32, 3] and found["dtype"] == "uint8"
    assert found["sha"] and found["refs"] == 32 and found["licence"] == LICENCE
    assert sum(found["dist"].values()) == pytest.approx(1.0)

    env.uninstall("artengine-style-test-shapes")
    assert not (env.site_packages / "artengine_style_test_shapes").exists()
    # Gone from discovery (asked by name, which is quick: nothing else is imported).
    gone = env.artengine("plugins", "--json", ARTENGINE_PLUGINS="style_test_shapes")
    assert gone.returncode == 2 and "no installed plugin has that entry-point" in gone.stderr


def test_export_refuses_bad_names_and_non_empty_folders(run, tmp_path):
    runner = ArtengineRunner()
    bad = runner.invoke("style", "export", str(run), "--name", "Bad Name", "--out", str(tmp_path / "a"))
    assert bad.exit_code == 2 and "--name 'Bad Name'" in bad.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    full = runner.invoke("style", "export", str(run), "--name", "ok", "--out", str(tmp_path / "full"))
    assert full.exit_code == 2 and "not an empty folder" in full.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    not_run = runner.invoke("style", "export", str(tmp_path), "--name", "ok", "--out", str(tmp_path / "b"))
    assert not_run.exit_code == 2 and "config.json" in not_run.output


def test_folder_run_registry_holds_the_original_files_and_refuses_changed_ones(tmp_path):
    data = tmp_path / "art"
    for label, colour in (("warm", (200, 60, 30)), ("cool", (30, 80, 200))):
        (data / label).mkdir(parents=True)
        for i in range(4):
            im = Image.new("RGB", (48, 40), colour)
            im.paste((i * 50, 255 - i * 40, 90), (4 + 3 * i, 6, 20 + 4 * i, 30))
            im.save(data / label / f"{i}.png")
    run = train_tiny_run(tmp_path / "run", data=str(data))
    out = ArtengineRunner().invoke("style", "export", str(run), "--name", "folder", "--out", str(tmp_path / "pkg"),
                                   "--json")
    assert out.exit_code == 0, out.output
    registry_path = Path(json.loads(out.output)["registry"])
    with ReferenceRegistry(registry_path) as registry:
        assert registry.count() == 8
        assert registry.reference(1).source_path.startswith(str(data.resolve()))

    Image.new("RGB", (48, 40), (0, 0, 0)).save(data / "warm" / "2.png")  # changed after training
    changed = ArtengineRunner().invoke("style", "export", str(run), "--name", "folder", "--out",
                                       str(tmp_path / "pkg2"))
    assert changed.exit_code == 2
    assert "2.png: training image changed since the run" in changed.output
    assert not (tmp_path / "pkg2").exists()  # a failed export leaves no half-written package
    assert not list(tmp_path.glob(".pkg2.*"))


def test_audit_with_style_uses_its_registry_and_distribution(package, tmp_path, monkeypatch):
    import importlib

    from artengine import get_plugins, open_dataset, query_hashes

    monkeypatch.syspath_prepend(str(package))
    module = importlib.import_module("artengine_style_test_shapes")
    folder = tmp_path / "out"
    folder.mkdir()
    training = open_dataset("shapes", image_size=32, seed=0, datasets=get_plugins().components("datasets"),
                            length=32)
    # The training image with the most detail: flat ones hash too unreliably to match (unknown).
    copies = [training[i].image.resize((256, 256), Image.Resampling.NEAREST) for i in range(len(training))]
    best = max(range(len(copies)), key=lambda i: query_hashes(copies[i]).quality)
    copies[best].save(folder / "copy.png")
    (tmp_path / "p.toml").write_text('[policy]\nname = "p"\nversion = 1\n\n[audits.near_duplicate]\n')
    runner = ArtengineRunner(plugins=[module])
    result = runner.invoke("audit", str(folder), "--policy", str(tmp_path / "p.toml"), "--style", "test-shapes",
                           "--report", str(tmp_path / "report"), "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 1
    (image,) = report["images"]
    finding = next(f for f in image["findings"] if f["audit"] == "near_duplicate")
    assert finding["outcome"] == "fail"  # the training image, found through the style's own registry
    assert finding["details"]["match"]["source"] == training[best].source
    assert report["inputs"]["style"] == "test-shapes"
    assert any(r.endswith("registry.sqlite") for r in report["inputs"]["registries"])
    unknown = runner.invoke("audit", str(folder), "--policy", str(tmp_path / "p.toml"), "--style", "nope")
    assert unknown.exit_code == 2 and "no style named 'nope'" in unknown.output


def test_generate_with_the_style_name_audits_against_its_registry(package, tmp_path, monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(package))
    module = importlib.import_module("artengine_style_test_shapes")
    out = tmp_path / "gen"
    monkeypatch.setenv("ARTENGINE_KEYS", str(tmp_path / "keys"))  # this test's own keys and ledger
    monkeypatch.setenv("ARTENGINE_LEDGER", str(tmp_path / "ledger.sqlite"))
    runner = ArtengineRunner(plugins=[module])
    assert runner.invoke("keys", "init").exit_code == 0
    result = runner.invoke("generate", "--model", "test-shapes", "--count", "2", "--out", str(out),
                           "--policy", "default", "--workers", "1", "--json")
    assert result.exit_code in (0, 1), result.output
    report = json.loads(Path(json.loads(result.stdout)["report"]).read_text())
    style_registry = str((package / "artengine_style_test_shapes" / "data" / "registry.sqlite").resolve())
    assert style_registry in report["inputs"]["registries"]
    assert report["inputs"]["model"]["style"] == "test-shapes"
    findings = [f for image in report["images"] for f in image["findings"] if f["audit"] == "near_duplicate"]
    assert len(findings) == 2 and all(f["outcome"] != "error" for f in findings)  # the registry was searched
