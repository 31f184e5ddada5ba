"""Policies, the fail-closed gate, the auditor and `artengine audit` (row 26, issue 8)."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import gate_plugin
from crafted_files import png_claiming
from artengine import Plugins, PolicyError
from artengine.cli import cli
from artengine.plugins import set_plugins
from artengine.policy import load_policy


@pytest.fixture
def plugins():
    found = Plugins.discover()
    info = found.register(gate_plugin, "gate_plugin")
    assert info.loaded, info.error
    set_plugins(found)
    gate_plugin.COMPUTED.clear()
    gate_plugin.THREADS.clear()
    return found


@pytest.fixture
def folder(tmp_path):
    """Four images: two dark, one mid-grey, one bright."""
    root = tmp_path / "images"
    root.mkdir()
    for name, level in [("a.png", 10), ("b.png", 60), ("c.png", 120), ("d.png", 240)]:
        Image.fromarray(np.full((32, 32, 3), level, np.uint8)).save(root / name)
    return root


def write_policy(tmp_path, body: str, name: str = "p.toml"):
    path = tmp_path / name
    path.write_text('[policy]\nname = "test"\nversion = 1\n' + textwrap.dedent(body))
    return path


def run_audit(folder, policy, *extra):
    report = folder.parent / "report"
    result = CliRunner().invoke(cli, ["audit", str(folder), "--policy", str(policy),
                                      "--report", str(report), *extra])
    doc = json.loads((report / "report.json").read_text()) if (report / "report.json").exists() else None
    return result, doc


# ------------------------------------------------------------------ policy validation


@pytest.mark.parametrize("body, field", [
    ("[audits.too_bright\n", ""),                                     # malformed TOML
    ("[audits.nope]\n", "audits.nope"),                               # unknown audit
    ("[audits.too_bright]\ncolour = 3\n", "audits.too_bright.colour"),  # unknown field
    ("[audits.too_bright]\nmax_mean = 'high'\n", "audits.too_bright.max_mean"),  # wrong type
    ("[audits.too_bright]\nseverity = 'panic'\n", "audits.too_bright.severity"),
    ("[audits.too_bright]\nenabled = 'yes'\n", "audits.too_bright.enabled"),
    ("[audit.too_bright]\n", "audit"),                                # typo in a top-level table
    ("[[overrides]]\naudit = 'too_bright'\n[audits.too_bright]\n", "overrides[0].reason"),
])
def test_bad_policy_is_one_line_naming_file_and_field_exit_2(plugins, tmp_path, folder, body, field):
    policy = write_policy(tmp_path, body)
    result, doc = run_audit(folder, policy)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(policy) in lines[0]
    assert field in lines[0]
    assert doc is None  # no work was done


def test_policy_version_and_missing_tables(plugins, tmp_path):
    audits = plugins.components("audits")
    path = tmp_path / "v.toml"
    path.write_text('[policy]\nname = "x"\nversion = 9\n[audits.too_bright]\n')
    with pytest.raises(PolicyError, match="policy.version"):
        load_policy(path, audits=audits)
    path.write_text('[policy]\nname = "x"\nversion = 1\n')
    with pytest.raises(PolicyError, match="audits: required table is missing"):
        load_policy(path, audits=audits)
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "missing.toml", audits=audits)


def test_settings_defaults_and_int_for_float(plugins, tmp_path):
    path = write_policy(tmp_path, "[audits.too_bright]\nmax_mean = 100\n[audits.too_dark]\n")
    policy = load_policy(path, audits=plugins.components("audits"))
    assert policy.audits["too_bright"].settings == {"max_mean": 100.0}
    assert policy.audits["too_dark"].settings == {"min_mean": 20.0}
    assert policy.audits["too_dark"].severity == "block" and policy.audits["too_dark"].required


# ------------------------------------------------------------------ gate semantics


def test_fail_at_warn_severity_passes_with_warnings(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, "[audits.too_bright]\nseverity = 'warn'\n")
    result, doc = run_audit(folder, policy)
    assert result.exit_code == 0, result.output
    assert doc["verdict"] == "warn"
    by_key = {e["key"]: e for e in doc["images"]}
    assert by_key["d.png"]["verdict"] == "warn" and by_key["d.png"]["publishable"]
    assert doc["summary"]["publishable"] == 4


def test_fail_at_block_severity_blocks_and_exits_1(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, "[audits.too_bright]\n[audits.too_dark]\n")
    result, doc = run_audit(folder, policy)
    assert result.exit_code == 1
    verdicts = {e["key"]: e["verdict"] for e in doc["images"]}
    assert verdicts == {"a.png": "block", "b.png": "pass", "c.png": "pass", "d.png": "block"}
    assert "d.png" in result.output and "too_bright" in result.output


def test_shared_feature_is_computed_once_per_image(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, "[audits.too_bright]\n[audits.too_dark]\n[audits.bright_share]\n")
    run_audit(folder, policy)
    assert sorted(gate_plugin.COMPUTED) == ["a.png", "b.png", "c.png", "d.png"]


@pytest.mark.parametrize("audit, message", [
    ("raises", "raised RuntimeError: model file vanished"),
    ("returns_none", "returned NoneType, not a Finding"),
    ("unsure", "low confidence"),
])
def test_audit_that_errs_blocks_everything(plugins, tmp_path, folder, audit, message):
    policy = write_policy(tmp_path, f"[audits.{audit}]\nseverity = 'warn'\n")
    result, doc = run_audit(folder, policy)
    assert result.exit_code == 1
    assert doc["summary"]["publishable"] == 0
    assert all(e["verdict"] in ("block", "error") for e in doc["images"])
    assert message in doc["images"][0]["findings"][0]["message"]


def test_audit_that_hangs_times_out_and_blocks(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, "[audits.hangs]\ntimeout_seconds = 0.2\n")
    result, doc = run_audit(folder, policy)
    assert result.exit_code == 1
    assert doc["summary"]["error"] == 4
    assert "timed out after 0.2 s" in doc["images"][0]["reasons"][0]


def test_override_is_explicit_and_recorded(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, "[audits.raises]\n")
    result, doc = run_audit(folder, policy, "--override", "raises=known bug #12, reviewed by M.")
    assert result.exit_code == 0, result.output
    assert doc["verdict"] == "warn"
    assert doc["policy"]["overrides"] == [
        {"audit": "raises", "reason": "known bug #12, reviewed by M.", "source": "command line"}]
    assert doc["images"][0]["findings"][0]["overridden"] == "known bug #12, reviewed by M."
    html = (folder.parent / "report" / "report.html").read_text()
    assert "Overrides in force" in html and "known bug #12" in html


def test_override_in_policy_file_is_recorded(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, """
        [audits.unsure]
        [[overrides]]
        audit = "unsure"
        reason = "exploration only"
    """)
    result, doc = run_audit(folder, policy)
    assert result.exit_code == 0
    assert doc["policy"]["overrides"][0]["source"] == "policy"


def test_override_does_not_lift_a_failed_check(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, "[audits.too_bright]\n")
    result, doc = run_audit(folder, policy, "--override", "too_bright=please")
    assert result.exit_code == 1
    assert {e["key"]: e["verdict"] for e in doc["images"]}["d.png"] == "block"


def test_required_but_disabled_audit_blocks_the_batch(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, "[audits.too_bright]\nenabled = false\n[audits.too_dark]\nseverity='warn'\n")
    result, doc = run_audit(folder, policy)
    assert result.exit_code == 1
    assert doc["summary"]["batch"] == "error" and doc["summary"]["publishable"] == 0
    assert "required audit is disabled" in result.output
    optional = write_policy(tmp_path, "[audits.too_bright]\nenabled = false\nrequired = false\n"
                                      "[audits.too_dark]\nseverity='warn'\n", name="q.toml")
    result, doc = run_audit(folder, optional)
    assert result.exit_code == 0


def test_batch_audit_blocks_publication_of_every_image(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, "[audits.bright_share]\nmax_share = 0.2\n")
    result, doc = run_audit(folder, policy)
    assert result.exit_code == 1
    assert doc["summary"]["batch"] == "block"
    assert all(e["verdict"] == "pass" and not e["publishable"] for e in doc["images"])
    html = (folder.parent / "report" / "report.html").read_text()
    assert "<svg" in html and "bright share" in html


def test_unreadable_image_is_an_error_naming_it_and_the_batch_continues(plugins, tmp_path, folder):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    policy = write_policy(tmp_path, "[audits.too_bright]\n")
    result, doc = run_audit(folder, policy)
    assert result.exit_code == 1
    by_key = {e["key"]: e for e in doc["images"]}
    assert by_key["broken.png"]["verdict"] == "error"
    assert "unreadable image" in by_key["broken.png"]["reasons"][0]
    assert by_key["b.png"]["verdict"] == "pass"


def test_a_decompression_bomb_in_a_batch_is_an_error_naming_it_and_its_limit(plugins, tmp_path, folder):
    """Row 1: a PNG whose header claims 20,000 x 20,000 pixels is refused before decoding,
    as an error naming the file and the limit; the other images are still audited."""
    (folder / "bomb.png").write_bytes(png_claiming(20_000, 20_000))
    result, doc = run_audit(folder, write_policy(tmp_path, "[audits.too_bright]\n"))
    assert result.exit_code == 1
    by_key = {e["key"]: e for e in doc["images"]}
    assert by_key["bomb.png"]["verdict"] == "error"
    reason = by_key["bomb.png"]["reasons"][0]
    assert "decompression bomb refused" in reason and "400000000 pixels" in reason and "limit of" in reason
    assert by_key["b.png"]["verdict"] == "pass" and doc["summary"]["images"] == 5


def test_a_folder_is_audited_on_one_thread_per_core_with_the_same_report(plugins, tmp_path, monkeypatch):
    """`artengine audit` checks a folder's chunks (32 images) on one thread per core: the
    report lists the images in file order with the same verdicts and findings as on one
    thread, an unreadable file among them still its own error."""
    from artengine import auditor

    root = tmp_path / "many"
    root.mkdir()
    for i in range(80):
        Image.fromarray(np.full((16, 16, 3), (i * 37) % 256, np.uint8)).save(root / f"{i:03d}.png")
    (root / "045.png").write_bytes(b"not a png")
    policy = write_policy(tmp_path, "[audits.too_bright]\n[audits.too_dark]\n")
    docs = {}
    for cores in (1, 2):
        monkeypatch.setattr(auditor, "usable_cores", lambda: cores)
        gate_plugin.THREADS.clear()
        result, doc = run_audit(root, policy)
        assert result.exit_code == 1, result.output
        assert len(gate_plugin.THREADS) == cores  # 3 chunks: both threads take some
        doc.pop("created")
        docs[cores] = doc
    assert docs[1] == docs[2]
    assert [e["key"] for e in docs[2]["images"]] == [f"{i:03d}.png" for i in range(80)]
    assert docs[2]["images"][45]["verdict"] == "error" and "unreadable" in docs[2]["images"][45]["reasons"][0]
    assert {e["verdict"] for e in docs[2]["images"]} == {"pass", "block", "error"}
    # Thumbnails: every flagged image, and every readable one among the first files.
    from artengine.audit import AuditContext
    from artengine.auditor import AuditRunner, audit_folder

    runner = AuditRunner(load_policy(policy, audits=plugins.components("audits"),
                                     features=plugins.components("feature_extractors")), plugins, AuditContext())
    outcome = audit_folder(root, runner, chunk_size=4, max_thumbnails=10, progress=False)
    flagged = {e.key for e in outcome.images if e.verdict.status in ("warn", "block")}
    assert set(outcome.thumbnails) == flagged | {f"{i:03d}.png" for i in range(10)}


def test_large_images_are_decoded_and_audited_a_few_at_a_time_with_the_same_report(plugins, tmp_path,
                                                                                   monkeypatch):
    """A chunk of large photographs is not decoded whole: each thread holds at most its
    pixel budget of decoded images (plus the one that crosses it) at once, and the report
    is the same as when the whole chunk fits."""
    from artengine.audit import AuditContext
    from artengine.auditor import AuditRunner, audit_folder

    root = tmp_path / "photos"
    root.mkdir()
    sizes = [(64, 48), (32, 32), (64, 64), (16, 80), (48, 48), (64, 64), (8, 8), (64, 32), (40, 40), (64, 64)]
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), (i * 53) % 256, np.uint8)).save(root / f"{i:02d}.png")
    (root / "03b.png").write_bytes(b"not a png")
    policy = load_policy(write_policy(tmp_path, "[audits.too_bright]\n[audits.too_dark]\n"),
                         audits=plugins.components("audits"), features=plugins.components("feature_extractors"))
    runner = AuditRunner(policy, plugins, AuditContext())
    held: list[list[int]] = []
    check_images = runner.check_images

    def recording(items):
        held.append([item.image.size[0] * item.image.size[1] * 3 for item in items])
        return check_images(items)

    monkeypatch.setattr(runner, "check_images", recording)
    whole = audit_folder(root, runner, chunk_size=32, progress=False)
    assert [len(h) for h in held] == [len(sizes)]  # all of a chunk at once within the budget
    budget = 64 * 64 * 3 * 2
    held.clear()
    grouped = audit_folder(root, runner, chunk_size=32, pixel_budget=budget, progress=False)
    assert len(held) == 3 and sum(len(h) for h in held) == len(sizes)
    assert all(sum(h[:-1]) < budget for h in held)  # the last image of a group crosses it
    assert grouped.images == whole.images and grouped.batch == whole.batch
    assert grouped.thumbnails == whole.thumbnails
    assert [e.key for e in grouped.images][3:5] == ["03.png", "03b.png"]
    assert grouped.images[4].verdict.status == "error"


def test_empty_folder_is_an_input_error(plugins, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result, _ = run_audit(empty, write_policy(tmp_path, "[audits.too_bright]\n"))
    assert result.exit_code == 2 and "no images found" in result.output


def test_json_flag_prints_only_the_report(plugins, tmp_path, folder):
    policy = write_policy(tmp_path, "[audits.too_bright]\nseverity='warn'\n")
    result = CliRunner().invoke(cli, ["audit", str(folder), "--policy", str(policy), "--json",
                                      "--report", str(tmp_path / "r")])
    doc = json.loads(result.stdout)
    assert doc["schema"] == "artengine.report/1" and doc["summary"]["images"] == 4


def test_features_run_in_one_reused_thread_and_a_hung_call_is_abandoned():
    import threading
    import time

    from artengine.auditor import _Worker

    worker = _Worker("test-feature")
    threads = {worker.call(threading.get_ident, 5)[0] for _ in range(5)}
    assert len(threads) == 1  # no new thread (and no new torch thread team) per chunk
    result, exc, timed_out = worker.call(lambda: time.sleep(3), 0.1)
    assert timed_out and result is None and exc is None
    result, exc, timed_out = worker.call(lambda: 1 / 0, 5)
    assert isinstance(exc, ZeroDivisionError) and not timed_out
    assert worker.call(threading.get_ident, 5)[0] not in threads  # a fresh thread after the hang
