"""The bias audit end to end: real plugins, the shipped tiny CLIP, rendered shapes, and the
``[audits.bias]`` table recommended in docs/bias.md, exactly as written there."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from artengine import AuditContext, AuditItem, LoadedImage, PolicyError, atomic_save_image, get_plugins
from artengine.auditor import AuditRunner
from artengine.cli import cli
from artengine.policy import load_policy

ROOT = Path(__file__).resolve().parent.parent
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")


def recommended_table() -> str:
    """The TOML block docs/bias.md recommends for policies, verbatim."""
    text = (ROOT / "docs" / "bias.md").read_text()
    match = re.search(r"<!-- recommended-policy -->\s*```toml\n(.+?)```", text, re.S)
    assert match, "docs/bias.md must hold the recommended [audits.bias] table"
    return match.group(1)


def write_policy(folder: Path, table: str | None = None) -> Path:
    path = folder / "policy.toml"
    path.write_text('[policy]\nname = "bias test"\nversion = 1\n\n' + (table or recommended_table()))
    return path


def make_runner(policy_path: Path, **context) -> AuditRunner:
    plugins = get_plugins()
    plugins.raise_if_refused()
    policy = load_policy(policy_path, audits=plugins.components("audits"),
                         features=plugins.components("feature_extractors"))
    return AuditRunner(policy, plugins, AuditContext(policy_path=policy.path, **context))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("bias")


@pytest.fixture(scope="module")
def run_dir(workdir):
    """A run folder shared by the module, so the training reference is measured once."""
    path = workdir / "run"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def pool(workdir):
    """Held-out shapes (not the training seed) with their CLIP features, computed through
    the real ``clip`` feature extractor."""
    runner = make_runner(write_policy(workdir))
    dataset = get_plugins().components("datasets")["shapes"].open(None, image_size=64, seed=31337, length=1500)
    samples = [dataset[i] for i in range(len(dataset))]
    items = [AuditItem(key=f"{i}.png", image=LoadedImage(path=f"{i}.png", rgb=s.image, alpha=None, format="PNG",
                                                         mode="RGB", text={}))
             for i, s in enumerate(samples)]
    assert runner.features(items) == {}
    return {
        "features": np.stack([item.features["clip"] for item in items]),
        "colour": np.array([s.attributes["colour"] for s in samples]),
        "shape": np.array([s.attributes["shape"] for s in samples]),
        "samples": samples,
    }


def batch(pool, indices, meta=None):
    return [AuditItem(key=f"{i}.png", image=None, meta=(meta(i) if meta else {}),
                      features={"clip": pool["features"][i]}) for i in indices]


def skewed_indices(pool, rng, n=100, colour="red", share=0.8):
    chosen = rng.choice(np.flatnonzero(pool["colour"] == colour), size=round(n * share), replace=False)
    rest = rng.choice(np.flatnonzero(pool["colour"] != colour), size=n - len(chosen), replace=False)
    return np.concatenate([chosen, rest])


def findings_by_attribute(findings):
    return {f.details["attribute"]: f for f in findings}


# ----------------------------------------------------------------------------- the contract


def test_planted_colour_skew_is_flagged_and_says_where(pool, workdir, run_dir):
    runner = make_runner(write_policy(workdir), reference_data="shapes", run_dir=str(run_dir))
    findings = findings_by_attribute(runner.check_batch(batch(pool, skewed_indices(pool, np.random.default_rng(0))), []))
    colour = findings["colour"]
    assert colour.outcome == "fail"
    assert "red" in colour.message and "colour" in colour.message
    red = next(row for row in colour.details["overall"]["values"] if row["value"] == "red")
    assert red["low"] <= red["share"] <= red["high"]
    assert 0.7 <= red["share"] <= 0.9
    assert colour.details["overall"]["amplification"]["value"] == "red"
    assert colour.details["reference"]["source"] == "measured"
    # The report draws bars with intervals and reference ticks from these.
    bars = colour.details["charts"][0]["bars"]
    assert [b["label"] for b in bars] == list(COLOURS)
    assert all({"value", "low", "high", "reference"} <= set(b) for b in bars)
    json.dumps(colour.as_dict())  # report-ready
    assert findings["shape"].outcome == "pass"


def false_alarm_bound(flagged: int, draws: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound on a rate seen ``flagged`` of ``draws`` times."""
    return float(stats.beta.ppf(0.95, flagged + 1, draws - flagged))


def test_balanced_batches_are_rarely_flagged_and_skewed_ones_always(pool, workdir, run_dir):
    """Quick version: batches of 60 drawn from the 1500 held-out images (slightly
    dependent draws; test_balanced_batches_fresh_draws below draws every batch anew)."""
    runner = make_runner(write_policy(workdir), reference_data="shapes", run_dir=str(run_dir))
    rng = np.random.default_rng(1)
    draws = 200
    false_alarms = sum(
        any(f.outcome == "fail" for f in runner.check_batch(batch(pool, rng.choice(len(pool["colour"]), 60, replace=False)), []))
        for _ in range(draws))
    print(f"balanced batches flagged: {false_alarms}/{draws} (95 % upper bound {false_alarm_bound(false_alarms, draws):.3f})")
    assert false_alarm_bound(false_alarms, draws) <= 0.05
    detected = sum(
        findings_by_attribute(runner.check_batch(batch(pool, skewed_indices(pool, rng, n=60)), []))["colour"].outcome == "fail"
        for _ in range(40))
    assert detected == 40


@pytest.mark.slow
def test_balanced_batches_fresh_draws(workdir, run_dir):
    """Every batch is 100 newly rendered shapes (its own seed): independent draws from the
    training distribution. The figure docs/bias.md quotes."""
    runner = make_runner(write_policy(workdir), reference_data="shapes", run_dir=str(run_dir))
    shapes = get_plugins().components("datasets")["shapes"]
    draws, false_alarms = 300, 0
    for k in range(draws):
        dataset = shapes.open(None, image_size=64, seed=100_000 + k, length=100)
        items = [AuditItem(key=f"{i}", image=LoadedImage(path=f"{i}", rgb=dataset[i].image, alpha=None,
                                                         format="PNG", mode="RGB", text={})) for i in range(100)]
        assert runner.features(items) == {}
        kept = [AuditItem(key=it.key, image=None, features=it.features) for it in items]
        false_alarms += any(f.outcome == "fail" for f in runner.check_batch(kept, []))
    bound = false_alarm_bound(false_alarms, draws)
    print(f"fresh balanced batches flagged: {false_alarms}/{draws} (95 % upper bound {bound:.3f})")
    assert bound <= 0.05


def test_reference_is_measured_once_and_stored_with_the_run(pool, workdir, run_dir):
    store = run_dir / "bias_reference.json"
    store.unlink(missing_ok=True)
    first = make_runner(write_policy(workdir), reference_data="shapes", run_dir=str(run_dir))
    a = first.check_batch(batch(pool, range(100)), [])
    assert a[0].details["reference"]["reused"] is False
    assert a[0].details["reference"]["stored"] == str(store)
    doc = json.loads(store.read_text())
    assert doc["schema"] == "artengine.bias-reference/1"
    [entry] = doc["entries"].values()
    from artengine import load_clip

    assert entry["clip"]["weights_sha256"] == load_clip().weights_sha256
    assert set(entry["attributes"]) == {"colour", "shape"}
    assert entry["images"] == 2000
    second = make_runner(write_policy(workdir), reference_data="shapes", run_dir=str(run_dir))
    b = second.check_batch(batch(pool, range(100)), [])
    assert b[0].details["reference"]["reused"] is True
    assert [f.details["overall"]["p_value"] for f in a] == [f.details["overall"]["p_value"] for f in b]
    # Another classifier (a changed prompt) is another key: measured anew, stored beside.
    table = recommended_table().replace('"a {} object"', '"an object coloured {}"')
    third = make_runner(write_policy(workdir, table), reference_data="shapes", run_dir=str(run_dir))
    assert third.check_batch(batch(pool, range(30)), [])[0].details["reference"]["reused"] is False
    assert len(json.loads(store.read_text())["entries"]) == 2


def test_skew_inside_one_class_label_is_found_per_label(pool, workdir, run_dir):
    """Each shape (class label) leans to its own colour: per-label tests point at it."""
    rng = np.random.default_rng(2)
    lean = dict(zip(SHAPES, COLOURS))
    indices = []
    for shape, colour in lean.items():
        mine = np.flatnonzero((pool["shape"] == shape) & (pool["colour"] == colour))
        other = np.flatnonzero((pool["shape"] == shape) & (pool["colour"] != colour))
        indices += list(rng.choice(mine, 24, replace=False)) + list(rng.choice(other, 6, replace=False))
    runner = make_runner(write_policy(workdir), reference_data="shapes", run_dir=str(run_dir))
    findings = runner.check_batch(batch(pool, indices, meta=lambda i: {"label": str(pool["shape"][i])}), [])
    colour = findings_by_attribute(findings)["colour"]
    assert colour.outcome == "fail"
    flagged = {(f["group"], f["name"]) for f in colour.details["flagged"]}
    assert {("by_label", s) for s in SHAPES} <= flagged
    assert "among label '" in colour.message and "np.str_" not in colour.message  # names the group plainly
    star = colour.details["by_label"]["star"]
    assert star["reference_group"] == "star"  # compared with training stars, not all images
    assert star["amplification"]["value"] == lean["star"]


def test_per_style_breakdown(pool, workdir):
    rng = np.random.default_rng(3)
    skewed = skewed_indices(pool, rng, n=40)
    balanced = rng.choice(np.setdiff1d(np.arange(len(pool["colour"])), skewed), 60, replace=False)
    style = {int(i): "ink" for i in skewed} | {int(i): "pastel" for i in balanced}
    runner = make_runner(write_policy(workdir))  # no training data: uniform reference
    colour = findings_by_attribute(runner.check_batch(
        batch(pool, np.concatenate([skewed, balanced]), meta=lambda i: {"style": style[int(i)]}), []))["colour"]
    assert colour.details["reference"]["source"] == ["uniform"]
    assert colour.details["by_style"]["ink"]["flagged"] is True
    assert colour.details["by_style"]["pastel"].get("flagged") is False


# ----------------------------------------------------------------------------- fail-closed


def test_small_batches_are_unknown_not_pass(pool, workdir):
    runner = make_runner(write_policy(workdir))
    findings = runner.check_batch(batch(pool, range(5)), [])
    assert {f.outcome for f in findings} == {"unknown"}
    assert "at least" in findings[0].message


def test_training_reference_without_training_data_is_an_error(pool, workdir):
    table = recommended_table().replace('reference = "auto"', 'reference = "training"')
    assert 'reference = "training"' in table
    runner = make_runner(write_policy(workdir, table))
    [finding] = runner.check_batch(batch(pool, range(50)), [])
    assert finding.outcome == "error" and "--reference-data" in finding.message


def test_embeddings_from_another_model_are_an_error(pool, workdir):
    runner = make_runner(write_policy(workdir))
    items = [AuditItem(key=f"{i}", image=None, features={"clip": np.ones(512, np.float32) / np.sqrt(512)})
             for i in range(30)]
    [finding] = runner.check_batch(items, [])
    assert finding.outcome == "error" and "dimensions" in finding.message


@pytest.mark.parametrize("edit, field", [
    (lambda t: t.replace("alpha = 0.01", "alpha = 2.0"), "audits.bias.alpha"),
    (lambda t: t.replace('reference = "auto"', 'reference = "census"'), "audits.bias.reference"),
    (lambda t: re.sub(r"values = \[\"red\".*\]", 'values = ["red"]', t), "audits.bias.attributes.colour.values"),
    (lambda t: t + '\n[audits.bias.attributes.mood]\nvalues = ["calm", "angry"]\ntemplates = ["a calm image"]\n',
     "audits.bias.attributes.mood.templates"),
])
def test_policy_mistakes_name_the_file_and_field(workdir, edit, field):
    path = write_policy(workdir, edit(recommended_table()))
    with pytest.raises(PolicyError) as info:
        make_runner(path)
    assert str(info.value).startswith(f"{path}: {field}: ")


# ----------------------------------------------------------------------------- command line


def _write_folder(folder: Path, samples) -> Path:
    folder.mkdir()
    for i, sample in enumerate(samples):
        atomic_save_image(folder / f"{i:03d}.png", sample.image)
    return folder


def test_cli_audit_blocks_a_skewed_batch_and_passes_a_balanced_one(pool, workdir, run_dir):
    rng = np.random.default_rng(4)
    policy = write_policy(workdir)
    skewed = _write_folder(workdir / "skewed", [pool["samples"][i] for i in skewed_indices(pool, rng, n=60)])
    balanced = _write_folder(workdir / "balanced",
                             [pool["samples"][i] for i in rng.choice(len(pool["colour"]), 60, replace=False)])
    runner = CliRunner()
    results = {}
    for name, folder in (("skewed", skewed), ("balanced", balanced)):
        result = runner.invoke(cli, ["audit", str(folder), "--policy", str(policy), "--reference-data", "shapes",
                                     "--run", str(run_dir), "--report", str(workdir / f"report-{name}"), "--json"])
        results[name] = result
    assert results["skewed"].exit_code == 1, results["skewed"].output
    assert results["balanced"].exit_code == 0, results["balanced"].output
    report = json.loads((workdir / "report-skewed" / "report.json").read_text())
    text = json.dumps(report)
    assert "bias" in text and "colour" in text and "red" in text


def test_cli_bad_reference_data_is_one_line_exit_2(pool, workdir):
    folder = _write_folder(workdir / "few", pool["samples"][:3])
    missing = workdir / "no-such-folder"
    result = CliRunner().invoke(cli, ["audit", str(folder), "--policy", str(write_policy(workdir)),
                                      "--reference-data", str(missing), "--report", str(workdir / "r")])
    assert result.exit_code == 2
    assert f"--reference-data {missing}" in result.output
    assert not (workdir / "r").exists()  # refused before any work


def test_cli_breaks_the_batch_down_by_the_style_and_label_in_the_manifests(pool, workdir):
    """`artengine audit` reads each image's embedded manifest; its generation label and
    style become the groups of the bias statistics."""
    from artengine.provenance import MANIFEST_KEY

    rng = np.random.default_rng(5)
    skewed = skewed_indices(pool, rng, n=40)
    balanced = rng.choice(np.setdiff1d(np.arange(len(pool["colour"])), skewed), 60, replace=False)
    folder = workdir / "styled"
    folder.mkdir()
    for n, (i, style) in enumerate([(i, "ink") for i in skewed] + [(i, "pastel") for i in balanced]):
        manifest = {"generation": {"style": style, "label": str(pool["shape"][i]), "seed": n}}
        atomic_save_image(folder / f"{n:03d}.png", pool["samples"][i].image, text={MANIFEST_KEY: json.dumps(manifest)})
    result = CliRunner().invoke(cli, ["audit", str(folder), "--policy", str(write_policy(workdir)),
                                      "--report", str(workdir / "report-styled"), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads((workdir / "report-styled" / "report.json").read_text())
    colour = next(f for f in report["batch"]["decisions"] if f["audit"] == "bias" and f["details"]["attribute"] == "colour")
    assert colour["details"]["by_style"]["ink"]["flagged"] is True
    assert colour["details"]["by_style"]["pastel"]["flagged"] is False
    assert set(colour["details"]["by_label"]) == set(SHAPES)
    assert any(chart["title"].startswith("colour | style = ink") for chart in colour["details"]["charts"])
    assert {e["meta"]["style"] for e in report["images"]} == {"ink", "pastel"}
    html = (workdir / "report-styled" / "report.html").read_text()
    assert "<svg class='chart'" in html and "colour | style = ink" in html  # bars with intervals


def test_cli_named_clip_model_missing_offline_is_one_line_exit_2(pool, workdir, tmp_path):
    """A pretrained model that is not in the hub cache, with HF_HUB_OFFLINE set: one line,
    exit 2, before any image is audited or any report written."""
    import os
    import subprocess
    import sys

    folder = _write_folder(tmp_path / "images", pool["samples"][:3])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-m", "artengine", "audit", str(folder), "--policy", str(write_policy(workdir)),
                          "--clip-model", "ViT-B-32", "--clip-pretrained", "laion2b_s34b_b79k",
                          "--report", str(tmp_path / "report")], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "ViT-B-32" in lines[0] and "HF_HUB_OFFLINE" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "report").exists()


def test_stored_reference_distribution_round_trip_through_the_cli(pool, workdir, tmp_path):
    """`artengine bias reference` measures the training distribution once into a file (what
    a style ships); `artengine audit --reference-distribution FILE` compares with it."""
    from artengine import load_reference_distribution

    policy = write_policy(workdir)
    out = tmp_path / "style_reference.json"
    runner = CliRunner()
    made = runner.invoke(cli, ["bias", "reference", "--policy", str(policy), "--reference-data", "shapes",
                               "--images", "600", "--out", str(out)])
    assert made.exit_code == 0, made.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "artengine.reference-distribution/1" and doc["images"] == 600
    shares = load_reference_distribution(out)
    assert set(shares) == {"colour", "shape"} and set(shares["colour"]) == set(COLOURS)
    assert all(abs(p - 1 / 6) < 0.06 for p in shares["colour"].values())  # shapes are drawn uniformly
    rng = np.random.default_rng(6)
    skewed = _write_folder(tmp_path / "skewed", [pool["samples"][i] for i in skewed_indices(pool, rng, n=60)])
    balanced = _write_folder(tmp_path / "balanced",
                             [pool["samples"][i] for i in rng.choice(len(pool["colour"]), 60, replace=False)])
    codes = {}
    for name, folder in (("skewed", skewed), ("balanced", balanced)):
        result = runner.invoke(cli, ["audit", str(folder), "--policy", str(policy), "--reference-distribution",
                                     str(out), "--report", str(tmp_path / f"report-{name}")])
        codes[name] = result.exit_code
    assert codes == {"skewed": 1, "balanced": 0}
    report = json.loads((tmp_path / "report-skewed" / "report.json").read_text())
    colour = next(d for d in report["batch"]["decisions"] if d["audit"] == "bias" and d["details"]["attribute"] == "colour")
    assert colour["details"]["reference"]["source"] == ["declared"]
    assert colour["details"]["reference_distribution"]["probabilities"] == pytest.approx(shares["colour"])


def test_bad_reference_distribution_file_is_one_line_exit_2(pool, workdir, tmp_path):
    folder = _write_folder(tmp_path / "images", pool["samples"][:3])
    bad = tmp_path / "bad.json"
    bad.write_text('{"attributes": {"colour": {"red": "lots"}}}')
    result = CliRunner().invoke(cli, ["audit", str(folder), "--policy", str(write_policy(workdir)),
                                      "--reference-distribution", str(bad), "--report", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert f"{bad}: attributes.colour.red" in result.output
    assert not (tmp_path / "r").exists()


def test_a_label_that_asks_for_a_value_is_not_tested_against_the_whole_reference(pool, workdir):
    """Images generated with the label ``circle`` are meant to be circles: without training
    images labelled ``circle`` to compare with, that group is reported, not flagged; the
    skewed mix of labels is still found in the batch as a whole."""
    rng = np.random.default_rng(6)
    circles = rng.choice(np.flatnonzero(pool["shape"] == "circle"), 60, replace=False)
    others = np.concatenate([rng.choice(np.flatnonzero(pool["shape"] == s), 12, replace=False)
                             for s in ("square", "triangle", "star")])
    flat = _write_folder(workdir / "flat-reference", pool["samples"][:300])  # no labels: one folder
    runner = make_runner(write_policy(workdir), reference_data=str(flat))
    findings = runner.check_batch(batch(pool, np.concatenate([circles, others]),
                                        meta=lambda i: {"label": str(pool["shape"][i])}), [])
    shape = findings_by_attribute(findings)["shape"]
    circle = shape.details["by_label"]["circle"]
    assert "untested" in circle and "p_adjusted" not in circle and not circle.get("flagged")
    assert [(f["group"], f["name"]) for f in shape.details["flagged"]] == [("overall", None)]
    assert shape.outcome == "fail" and "among label" not in shape.message
    # Another attribute is still compared per label (the colours of the circles).
    assert "untested" not in findings_by_attribute(findings)["colour"].details["by_label"]["circle"]
