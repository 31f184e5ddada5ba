"""Provenance: keys, canonical signed manifests, PNG iTXt and sidecars, the ledger, the
post-write check, verification (verified / watermark-only / tampered / unknown), the
commands, and the provenance audit (RELIABILITY rows 15-19)."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from artengine import ImageLoadError, InputError, ProvenanceError, get_plugins, open_image
from artengine import provenance as pv
from artengine.cli import cli
from artengine_plugins.shapes import ShapesSet
from artengine_plugins.watermark import SpreadTransformWatermark

CREATED = "2026-01-02T03:04:05Z"
ENGINE = {"name": "artengine", "version": "0.1.0", "hook_api": "1.0"}
PLUGINS = {"shapes": "0.1.0", "watermark": "0.1.0"}


def picture(index: int = 0, size: int = 256) -> Image.Image:
    return ShapesSet(image_size=size, seed=11)[index].image


@pytest.fixture
def keys(tmp_path) -> pv.Keys:
    return pv.init_keys(tmp_path / "keys")


@pytest.fixture
def scheme(keys) -> SpreadTransformWatermark:
    return SpreadTransformWatermark(keys.watermark_key)


@pytest.fixture
def ledger(tmp_path):
    with pv.Ledger(tmp_path / "ledger.sqlite") as db:
        yield db


def schemes():
    return get_plugins().components("watermarks")


def stamp(keys, scheme, payload: bytes = b"\x10\x20\x30\x40\x50\x60", index: int = 0, **fields) -> pv.Stamped:
    return pv.stamp(picture(index), scheme=scheme, signing_key=keys.signing_key, payload=payload,
                    created=CREATED, engine=ENGINE, plugins=PLUGINS, seed=42, label="circle",
                    model={"name": "demo", "weights_sha256": "ab" * 32}, **fields)


def written(tmp_path, keys, scheme, ledger, name: str = "out.png", **kwargs) -> Path:
    stamped = stamp(keys, scheme, **kwargs)
    return pv.write_stamped(tmp_path / name, stamped, scheme=scheme, ledger=ledger)


# ----------------------------------------------------------------------------- keys


def test_init_keys_creates_private_files_0600_and_refuses_to_overwrite(tmp_path):
    made = pv.init_keys(tmp_path / "k")
    folder = tmp_path / "k"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "signing.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "watermark.key").stat().st_mode) == 0o600
    assert made.signing_key is not None and len(made.watermark_key) == 32 and made.key_id in made.trusted
    with pytest.raises(InputError, match="refusing to overwrite"):
        pv.init_keys(folder)
    again = pv.init_keys(folder, force=True)
    assert again.key_id != made.key_id


def test_keys_default_folder_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTENGINE_KEYS", str(tmp_path / "env-keys"))
    assert pv.default_keys_dir() == tmp_path / "env-keys"
    monkeypatch.delenv("ARTENGINE_KEYS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert pv.default_keys_dir() == tmp_path / "cfg" / "artengine" / "keys"
    made = pv.init_keys()  # the default folder
    assert (tmp_path / "cfg" / "artengine" / "keys" / "signing.key").exists()
    only_mark = pv.load_keys(tmp_path / "cfg" / "artengine" / "keys" / "watermark.key")
    assert only_mark.watermark_key == made.watermark_key and only_mark.signing_key is None
    only_public = pv.load_keys(tmp_path / "cfg" / "artengine" / "keys" / "signing.pub")
    assert only_public.signing_key is None and made.key_id in only_public.trusted


def test_key_files_that_are_readable_by_others_or_malformed_are_refused(tmp_path, keys):
    secret = Path(keys.source) / "watermark.key"
    os.chmod(secret, 0o644)
    with pytest.raises(InputError, match="too open"):
        pv.load_keys(keys.source)
    os.chmod(secret, 0o600)
    secret.write_text("not hex at all\n")
    with pytest.raises(InputError, match="hex digits"):
        pv.load_keys(keys.source)
    with pytest.raises(InputError, match="no such key file"):
        pv.load_keys(tmp_path / "missing")


# ----------------------------------------------------------------------------- manifests


def test_manifest_signing_is_deterministic_and_covers_every_field(keys, scheme):
    a, b = stamp(keys, scheme), stamp(keys, scheme)
    assert pv.canonical_json(a.manifest) == pv.canonical_json(b.manifest)
    assert a.image.tobytes() == b.image.tobytes()
    m = a.manifest
    assert m["watermark"] == {"scheme": "stdm", "version": 1, "payload": "102030405060"}
    assert m["generation"]["seed"] == 42 and m["generation"]["model"]["weights_sha256"] == "ab" * 32
    assert m["created"] == CREATED and m["engine"] == ENGINE and m["plugins"] == PLUGINS
    assert m["image"]["pixels_sha256"] == pv.pixels_sha256(a.image)
    assert pv.check_signature(m, keys.trusted) == "valid"
    for path in (("generation", "seed"), ("created",), ("image", "pixels_sha256"), ("watermark", "payload")):
        forged = json.loads(json.dumps(m))
        target = forged
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = 7 if path[-1] == "seed" else "0" * 12
        assert pv.check_signature(forged, keys.trusted) == "invalid", path
    assert pv.check_signature(m, {}) == "untrusted-key"
    assert pv.check_signature({"no": "signature"}, keys.trusted) == "malformed"
    assert pv.check_signature("garbage", keys.trusted) == "malformed"


def test_pixel_hash_is_over_decoded_pixels_not_file_bytes(tmp_path):
    image = picture(1)
    image.save(tmp_path / "a.png", compress_level=1)
    image.save(tmp_path / "b.png", compress_level=9)
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    assert pv.pixels_sha256(open_image(tmp_path / "a.png")) == pv.pixels_sha256(open_image(tmp_path / "b.png"))
    changed = image.copy()
    changed.putpixel((3, 3), (0, 0, 0))
    assert pv.pixels_sha256(changed) != pv.pixels_sha256(image)
    rgba = image.convert("RGBA")
    assert pv.pixels_sha256(rgba) != pv.pixels_sha256(image)  # alpha is part of the pixels


def test_payload_derivation_is_deterministic_unique_and_keyed():
    secret = pv.job_secret(b"k" * 32, "job-1")
    payloads = [pv.derive_payload(secret, i) for i in range(20000)]
    assert len(set(payloads)) == len(payloads) and all(len(p) == 6 for p in payloads)
    assert payloads[5] == pv.derive_payload(pv.job_secret(b"k" * 32, "job-1"), 5)
    assert pv.derive_payload(pv.job_secret(b"k" * 32, "job-2"), 5) != payloads[5]
    assert pv.derive_payload(secret, 5, attempt=1) != payloads[5]
    assert pv.parse_payload("0x0102030405AB") == bytes.fromhex("0102030405ab")
    with pytest.raises(InputError, match="12 hex digits"):
        pv.parse_payload("0102")


# ----------------------------------------------------------------------------- ledger


def test_ledger_records_idempotently_and_refuses_collisions(tmp_path, keys, scheme):
    path = tmp_path / "ledger.sqlite"
    first = stamp(keys, scheme)
    with pv.Ledger(path) as db:
        db.record(first.manifest, image="a.png")
        db.record(first.manifest, image="a.png")  # a resumed batch records again: fine
        assert len(db) == 1
        other = stamp(keys, scheme, index=2)  # same payload, another image
        with pytest.raises(ProvenanceError, match="already recorded"):
            db.record(other.manifest, image="b.png")
        # The same image audited again (a grown registry) and signed with its new verdicts:
        # the ledger gives its latest manifest, still one row.
        again = stamp(keys, scheme, audits={"near_duplicate": "fail"})
        assert again.manifest["image"] == first.manifest["image"]
        db.record(again.manifest, image="a.png")
        assert len(db) == 1
        assert db.lookup(bytes.fromhex("102030405060")).manifest["audits"] == {"near_duplicate": "fail"}
        with pytest.raises(ProvenanceError, match="already recorded"):  # still refused after it
            db.record(other.manifest, image="b.png")
        first = again
    with pv.Ledger(path, create=False) as db:  # durable, WAL
        assert db.lookup(bytes.fromhex("102030405060")).manifest == first.manifest
        assert db.lookup("ffffffffffff") is None
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="not a usable ledger"):
        pv.Ledger(bad)


# ----------------------------------------------------------------------------- writing


def test_write_stamped_embeds_manifest_writes_sidecar_records_and_checks(tmp_path, keys, scheme, ledger):
    path = written(tmp_path, keys, scheme, ledger)
    loaded = open_image(path)
    manifest = json.loads(loaded.text[pv.MANIFEST_KEY])
    assert json.loads(pv.sidecar_path(path).read_text()) == manifest
    assert ledger.lookup(manifest["watermark"]["payload"]).image == "out.png"
    assert pv.pixels_sha256(loaded) == manifest["image"]["pixels_sha256"]
    again = written(tmp_path, keys, scheme, ledger, name="again.png")
    assert path.read_bytes() == again.read_bytes()  # byte-identical on a re-run


def test_post_write_check_catches_what_did_not_survive(tmp_path, keys, scheme):
    stamped = stamp(keys, scheme)
    plain = tmp_path / "plain.png"
    stamped.image.save(plain)  # saved without the manifest
    with pytest.raises(ProvenanceError, match="manifest did not survive"):
        pv.check_written(plain, stamped.manifest, scheme=scheme)
    lossy = tmp_path / "lossy.png"
    info = PngImagePlugin.PngInfo()
    info.add_itxt(pv.MANIFEST_KEY, stamped.text[pv.MANIFEST_KEY])
    stamped.image.quantize(64).convert("RGB").save(lossy, pnginfo=info)  # pixels changed on the way
    with pytest.raises(ProvenanceError, match="pixels differ"):
        pv.check_written(lossy, stamped.manifest, scheme=scheme)
    with pytest.raises(InputError, match="must be a PNG"):
        pv.write_stamped(tmp_path / "x.jpg", stamped, scheme=scheme)


# ----------------------------------------------------------------------------- the pipeline's calls


def test_check_of_encoded_bytes_against_the_signed_pixels(keys, scheme):
    """The pipeline's check before writing: given the pixels it signed, the decoded pixels
    must equal them; one changed grey level anywhere is caught, as by the hash."""
    from artengine.io import decode_png_up, encode_image

    stamped = stamp(keys, scheme)
    signed = np.asarray(stamped.image.convert("RGB"))
    assert pv.pixels_sha256(signed) == stamped.manifest["image"]["pixels_sha256"] == pv.pixels_sha256(stamped.image)
    text = {pv.MANIFEST_KEY: stamped.text[pv.MANIFEST_KEY]}
    png = encode_image(Image.fromarray(signed), text=text, compress_level=1, strategy="isal", png_filter="up")
    pv.check_encoded(png, stamped.manifest, scheme=scheme, name="x.png", pixels=signed)
    pv.check_encoded(png, stamped.manifest, scheme=scheme, name="x.png")
    changed = signed.copy()
    changed[37, 101, 1] ^= 1
    other = encode_image(Image.fromarray(changed), text=text, compress_level=1, strategy="isal", png_filter="up")
    for given in (signed, None):
        with pytest.raises(ProvenanceError, match="x.png: the saved pixels differ"):
            pv.check_encoded(other, stamped.manifest, scheme=scheme, name="x.png", pixels=given)
    # Bytes the job's own reader leaves to Pillow (another writer's layout) are checked
    # the same way; damaged bytes fail either way.
    pillows = encode_image(Image.fromarray(signed), text=text, compress_level=1)
    assert decode_png_up(png) is not None and decode_png_up(pillows) is None
    pv.check_encoded(pillows, stamped.manifest, scheme=scheme, name="x.png", pixels=signed)
    at = png.index(b"IDAT") + 40
    damaged = png[:at] + bytes([png[at] ^ 16]) + png[at + 1:]
    with pytest.raises((ProvenanceError, ImageLoadError), match="x.png"):
        pv.check_encoded(damaged, stamped.manifest, scheme=scheme, name="x.png", pixels=signed)


PIPELINE_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
from artengine import provenance as pv
from artengine_plugins.shapes import ShapesSet
from artengine_plugins.watermark import SpreadTransformWatermark

keys_dir, out, job, indices = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
keys = pv.load_keys(keys_dir)
scheme = SpreadTransformWatermark(keys.require_watermark())  # what pv.watermark_scheme returns
secret = pv.job_secret(keys.watermark_key, job)
with pv.Ledger(out / "ledger.sqlite") as ledger:
    for i in map(int, indices.split(",")):
        pixels = np.asarray(ShapesSet(image_size=256, seed=3)[i].image)
        payload = pv.derive_payload(secret, i)
        marked = scheme.embed_array(pixels, payload)
        stamped = pv.sign_marked(marked, scheme=scheme, signing_key=keys.require_signing(), payload=payload,
                                 created="2026-03-04T05:06:07+00:00", engine={"name": "artengine"},
                                 plugins={"shapes": "1"}, seed=i, label="shape", audits={"bias": "pass"})
        pv.write_stamped(out / f"{i:06d}.png", stamped, scheme=scheme, ledger=ledger)
"""


def _run_pipeline(tmp_path, keys_dir, name: str, indices: list[int], threads: str | None = None) -> Path:
    out = tmp_path / name
    out.mkdir()
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(keys_dir), str(out), "job-7",
                    ",".join(map(str, indices))], check=True, env=env, timeout=120)
    return out


def test_pipeline_output_is_byte_identical_whatever_the_order_processes_or_threads(tmp_path):
    """A batch resumed after a crash, or split over workers, writes the same bytes."""
    keys_dir = tmp_path / "keys"
    pv.init_keys(keys_dir)
    whole = _run_pipeline(tmp_path, keys_dir, "whole", [0, 1, 2], threads="1")
    # two "workers" in another order, with other thread counts, into one ledger
    split = _run_pipeline(tmp_path, keys_dir, "split", [2], threads="2")
    # the other worker, in another order, then resumed over an image it had written
    subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(keys_dir), str(split), "job-7", "1,0,1"],
                   check=True, timeout=120)
    for i in range(3):
        for name in (f"{i:06d}.png", f"{i:06d}.png.manifest.json"):
            assert (whole / name).read_bytes() == (split / name).read_bytes(), name
    with pv.Ledger(whole / "ledger.sqlite") as a, pv.Ledger(split / "ledger.sqlite") as b:
        assert len(a) == len(b) == 3
        keys = pv.load_keys(keys_dir)
        for i in range(3):
            payload = pv.derive_payload(pv.job_secret(keys.watermark_key, "job-7"), i)
            assert a.lookup(payload).manifest == b.lookup(payload).manifest
            assert a.lookup(payload).manifest["created"] == "2026-03-04T05:06:07Z"
        result = pv.verify_image(whole / "000001.png", keys=keys, schemes=schemes(), ledger=a)
        assert result.status == "verified"


def test_embed_array_takes_pixels_and_hex_and_refuses_bad_input(keys, scheme):
    assert isinstance(pv.watermark_scheme(keys.watermark_key), SpreadTransformWatermark)
    pixels = np.asarray(picture(3))
    marked = scheme.embed_array(pixels, "0a0b0c0d0e0f")
    assert marked.shape == pixels.shape and marked.dtype == np.uint8
    assert marked.tobytes() == scheme.embed(picture(3), bytes.fromhex("0a0b0c0d0e0f")).tobytes()
    reading = scheme.detect_array(marked, search=False)
    assert reading.detected and reading.payload_hex == "0a0b0c0d0e0f"
    assert not scheme.detect_array(pixels, search=False).detected
    assert not scheme.detect_array(np.zeros((300, 300), np.uint8)).detected  # wrong shape: a miss, no crash
    with pytest.raises(InputError, match="at least 256 pixels"):
        scheme.embed_array(pixels[:255], "0a0b0c0d0e0f")
    with pytest.raises(InputError, match="uint8 array"):
        scheme.embed_array(pixels.astype(np.float32), "0a0b0c0d0e0f")
    with pytest.raises(InputError, match="not hexadecimal"):
        scheme.embed_array(pixels, "zz0b0c0d0e0f")
    with pytest.raises(InputError, match="exactly 6 bytes"):
        scheme.embed_array(pixels, b"short")


def test_manifest_time_is_passed_in_and_normalised(keys, scheme):
    import datetime as dt

    marked = scheme.embed_array(np.asarray(picture(4)), b"\x01" * 6)
    sign = lambda created: pv.sign_marked(marked, scheme=scheme, signing_key=keys.signing_key,  # noqa: E731
                                          payload="010101010101", created=created, engine=ENGINE,
                                          plugins=PLUGINS).manifest
    reference = sign("2026-01-02T03:04:05Z")
    aware = dt.datetime(2026, 1, 2, 4, 4, 5, 999, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert sign(aware) == reference  # same instant, same signed bytes
    assert reference["image"]["pixels_sha256"] == pv.pixels_sha256(marked)
    for bad in ("yesterday", dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"):
        with pytest.raises(InputError, match="manifest time"):
            sign(bad)


# ----------------------------------------------------------------------------- verification


def test_verified(tmp_path, keys, ledger, scheme):
    path = written(tmp_path, keys, scheme, ledger)
    result = pv.verify_image(path, keys=keys, schemes=schemes(), ledger=ledger)
    assert (result.status, result.code, result.manifest_source) == ("verified", "verified", "png")
    assert result.pixels_match and result.reading.payload_hex == "102030405060"


def test_a_copy_signed_before_its_image_was_audited_again_is_flagged_by_the_ledger(tmp_path, keys, ledger, scheme):
    """A published copy carries the manifest it was signed with; when a job later audits
    the image again (its registry grew) the ledger holds the new manifest, and verify says
    so: a later verdict that blocks makes the copy not verified (exit 1)."""
    published = written(tmp_path, keys, scheme, ledger, audits={"near_duplicate": "pass", "bias": "pass"})
    assert pv.verify_image(published, keys=keys, schemes=schemes(), ledger=ledger).code == "verified"

    blocked = stamp(keys, scheme, audits={"near_duplicate": "block", "bias": "pass"})
    ledger.record(blocked.manifest, image="quarantine/out.png")
    result = pv.verify_image(published, keys=keys, schemes=schemes(), ledger=ledger)
    assert (result.status, result.code, result.verified) == ("verified", "audited-again", False)
    assert result.message.endswith("audited again since, the ledger's manifest of this image says: "
                                   "near_duplicate block (not to be published)")
    assert result.later_manifest == blocked.manifest and result.as_dict()["later_manifest"] == blocked.manifest
    assert pv.verify_image(published, keys=keys, schemes=schemes()).verified  # no ledger: nothing to compare

    cleared = stamp(keys, scheme, audits={"near_duplicate": "pass", "bias": "warn"})  # audited again, not blocked
    ledger.record(cleared.manifest, image="approved/out.png")
    result = pv.verify_image(published, keys=keys, schemes=schemes(), ledger=ledger)
    assert (result.code, result.verified) == ("verified", True) and result.message.endswith("says: bias warn")


def test_an_image_its_own_manifest_says_was_blocked_is_not_verified(tmp_path, keys, ledger, scheme, monkeypatch):
    """A quarantined image carries a genuine manifest whose audit verdicts blocked it:
    its provenance is intact, but verify must not answer "verified" (exit 0) for it, nor
    the provenance audit pass it; the same for a copy stripped of that manifest, whose
    ledger record says so."""
    quarantined = written(tmp_path, keys, scheme, ledger, name="q.png",
                          audits={"bias": "pass", "near_duplicate": "block", "watermark": "error"})
    result = pv.verify_image(quarantined, keys=keys, schemes=schemes(), ledger=ledger)
    assert (result.status, result.code, result.verified) == ("verified", "audit-blocked", False)
    assert result.message.endswith("agrees; its manifest records audit verdicts that keep it from publication: "
                                   "near_duplicate block, watermark error (not to be published)")
    assert result.blocking == result.as_dict()["blocking"] == {"near_duplicate": "block", "watermark": "error"}
    warned = written(tmp_path, keys, scheme, ledger, name="w.png", payload=b"\x10\x20\x30\x40\x50\x61",
                     audits={"bias": "warn", "near_duplicate": "pass"})
    assert pv.verify_image(warned, keys=keys, schemes=schemes(), ledger=ledger).verified  # warn publishes

    Image.open(quarantined).convert("RGB").save(tmp_path / "stripped.jpg", quality=90)
    stripped = pv.verify_image(tmp_path / "stripped.jpg", keys=keys, schemes=schemes(), ledger=ledger)
    assert (stripped.status, stripped.code) == ("watermark-only", "metadata-stripped")
    assert stripped.message.endswith("near_duplicate block, watermark error (not to be published)")
    assert stripped.blocking == {"near_duplicate": "block", "watermark": "error"}

    # The provenance audit fails both, even where a stripped copy would otherwise pass.
    monkeypatch.setenv("ARTENGINE_KEYS", keys.source)
    monkeypatch.setenv("ARTENGINE_LEDGER", str(ledger.path))
    policy = tmp_path / "lenient.toml"
    policy.write_text('[policy]\nname = "t"\nversion = 1\n\n[audits.provenance]\nrequire_manifest = false\n')
    outcome = CliRunner().invoke(cli, ["audit", str(tmp_path), "--policy", str(policy), "--report",
                                       str(tmp_path / "report"), "--json"])
    report = json.loads(outcome.output)
    found = {e["key"]: [f for f in e["findings"] if f["audit"] == "provenance"][0] for e in report["images"]}
    assert {key: f["outcome"] for key, f in found.items()} == {"q.png": "fail", "stripped.jpg": "fail", "w.png": "pass"}
    assert found["q.png"]["details"]["blocking"] == {"near_duplicate": "block", "watermark": "error"}
    assert outcome.exit_code == 1

    outcome = CliRunner().invoke(cli, ["verify", str(quarantined), str(warned)])
    assert outcome.exit_code == 1 and outcome.output.startswith(f"audit-blocked  {quarantined}: signature valid")
    assert CliRunner().invoke(cli, ["verify", str(warned)]).exit_code == 0


def test_sidecar_manifest_verifies_a_png_whose_chunk_was_stripped(tmp_path, keys, ledger, scheme):
    path = written(tmp_path, keys, scheme, ledger)
    Image.open(path).save(tmp_path / "copy.png")  # Pillow drops the iTXt chunk
    (tmp_path / "copy.png.manifest.json").write_bytes(pv.sidecar_path(path).read_bytes())
    result = pv.verify_image(tmp_path / "copy.png", keys=keys, schemes=schemes(), ledger=ledger)
    assert (result.status, result.manifest_source) == ("verified", "sidecar")


def test_watermark_only_when_metadata_is_stripped(tmp_path, keys, ledger, scheme):
    path = written(tmp_path, keys, scheme, ledger)
    image = Image.open(path)
    image.convert("RGB").save(tmp_path / "shared.jpg", quality=80)
    image.resize((128, 128), Image.Resampling.BICUBIC).save(tmp_path / "thumb.png")
    for name in ("shared.jpg", "thumb.png"):
        result = pv.verify_image(tmp_path / name, keys=keys, schemes=schemes(), ledger=ledger)
        assert (result.status, result.code) == ("watermark-only", "metadata-stripped"), name
        assert result.manifest["watermark"]["payload"] == "102030405060"
    no_ledger = pv.verify_image(tmp_path / "shared.jpg", keys=keys, schemes=schemes(), ledger=None)
    assert (no_ledger.status, no_ledger.code) == ("unknown", "no-ledger-record")
    strict = pv.verify_image(tmp_path / "shared.jpg", keys=keys, schemes=schemes(), ledger=ledger,
                             min_confidence=1.01)
    assert (strict.status, strict.code) == ("unknown", "low-confidence")


def test_tampered_pixels_or_manifest(tmp_path, keys, ledger, scheme):
    path = written(tmp_path, keys, scheme, ledger)
    image = Image.open(path)
    text = image.text[pv.MANIFEST_KEY]
    edited = image.convert("RGB")
    for x in range(40, 60):
        edited.putpixel((x, 40), (255, 0, 0))
    info = PngImagePlugin.PngInfo()
    info.add_itxt(pv.MANIFEST_KEY, text)
    edited.save(tmp_path / "edited.png", pnginfo=info)
    result = pv.verify_image(tmp_path / "edited.png", keys=keys, schemes=schemes(), ledger=ledger)
    assert (result.status, result.code) == ("tampered", "pixels-edited")
    forged = PngImagePlugin.PngInfo()
    forged.add_itxt(pv.MANIFEST_KEY, text.replace('"label":"circle"', '"label":"square"'))
    image.save(tmp_path / "forged.png", pnginfo=forged)
    result = pv.verify_image(tmp_path / "forged.png", keys=keys, schemes=schemes(), ledger=ledger)
    assert (result.status, result.code) == ("tampered", "manifest-invalid")
    broken = PngImagePlugin.PngInfo()
    broken.add_itxt(pv.MANIFEST_KEY, "{not json")
    image.save(tmp_path / "broken.png", pnginfo=broken)
    assert pv.verify_image(tmp_path / "broken.png", keys=keys, schemes=schemes()).status == "tampered"


def test_manifest_moved_onto_another_marked_image_is_tampered(tmp_path, keys, ledger, scheme):
    first = written(tmp_path, keys, scheme, ledger, name="first.png")
    other = stamp(keys, scheme, payload=b"\x99" * 6, index=3)
    # Re-sign the first image's manifest so only the mark can tell: pixels of image 2 with
    # a valid manifest claiming image 2's pixels but image 1's payload.
    claim = dict(other.manifest)
    claim["watermark"] = {**claim["watermark"], "payload": "102030405060"}
    resigned = pv.sign_manifest(claim, keys.signing_key)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(pv.MANIFEST_KEY, pv.canonical_json(resigned).decode())
    other.image.save(tmp_path / "swapped.png", pnginfo=info)
    result = pv.verify_image(tmp_path / "swapped.png", keys=keys, schemes=schemes(), ledger=ledger)
    assert (result.status, result.code) == ("tampered", "mark-mismatch")
    assert first.exists()


def test_foreign_images_wrong_keys_and_garbage_are_never_verified_and_never_crash(tmp_path, keys, ledger, scheme):
    path = written(tmp_path, keys, scheme, ledger)
    picture(5).save(tmp_path / "foreign.png")
    (tmp_path / "garbage.png").write_bytes(os.urandom(3000))
    (tmp_path / "empty.jpg").write_bytes(b"")
    other = pv.init_keys(tmp_path / "other")
    cases = {
        "foreign.png": (keys, "no-provenance"),
        "garbage.png": (keys, "unreadable-image"),
        "empty.jpg": (keys, "unreadable-image"),
        path.name: (other, "untrusted-key"),
    }
    for name, (with_keys, code) in cases.items():
        result = pv.verify_image(tmp_path / name, keys=with_keys, schemes=schemes(), ledger=ledger)
        assert result.status == "unknown" and result.code == code, (name, result)
    # trusted signer but another studio's watermark key: signature fine, mark unreadable
    mixed = pv.Keys(source="mixed", watermark_key=other.watermark_key, trusted=keys.trusted)
    result = pv.verify_image(path, keys=mixed, schemes=schemes(), ledger=ledger)
    assert (result.status, result.code) == ("unknown", "mark-unreadable")
    # a trusted verifier can add the studio's public key under trusted/
    (Path(other.source) / "trusted").mkdir()
    (Path(other.source) / "trusted" / "studio.pub").write_bytes((Path(keys.source) / "signing.pub").read_bytes())
    trusting = pv.load_keys(other.source)
    assert pv.check_signature(json.loads(open_image(path).text[pv.MANIFEST_KEY]), trusting.trusted) == "valid"


# ----------------------------------------------------------------------------- commands


def run(args, env):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


@pytest.fixture
def env(tmp_path):
    return {"ARTENGINE_KEYS": str(tmp_path / "cli-keys"), "ARTENGINE_LEDGER": str(tmp_path / "cli-ledger.sqlite")}


def test_cli_keys_watermark_sign_verify(tmp_path, env):
    assert run(["keys", "init"], env).exit_code == 0
    again = run(["keys", "init"], env)
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    shown = json.loads(run(["keys", "show", "--json"], env).output)
    assert shown["signing_key"] and shown["watermark_key"]
    src = tmp_path / "in.png"
    rgba = picture(2).convert("RGBA")
    rgba.putalpha(180)
    rgba.save(src)
    out = run(["watermark", "embed", str(src), str(tmp_path / "marked.png"), "--payload", "a1b2c3d4e5f6"], env)
    assert out.exit_code == 0 and "PSNR" in out.output
    assert Image.open(tmp_path / "marked.png").mode == "RGBA"
    found = run(["watermark", "detect", str(tmp_path / "marked.png"), str(src), "--json", "--no-search"], env)
    assert found.exit_code == 1  # one of the two carries no mark
    doc = json.loads(found.output)
    assert [i["payload"] for i in doc["images"]] == ["a1b2c3d4e5f6", None]
    key_file = Path(env["ARTENGINE_KEYS"]) / "watermark.key"
    alone = run(["watermark", "detect", str(tmp_path / "marked.png"), "--key", str(key_file)], env)
    assert alone.exit_code == 0 and "a1b2c3d4e5f6" in alone.output
    signed = run(["sign", str(src), str(tmp_path / "signed.png"), "--label", "star", "--payload", "0a0b0c0d0e0f"], env)
    assert signed.exit_code == 0, signed.output
    verified = run(["verify", str(tmp_path / "signed.png"), "--json"], env)
    assert verified.exit_code == 0
    assert json.loads(verified.output)["images"][0]["status"] == "verified"
    mixed = run(["verify", str(tmp_path / "signed.png"), str(src)], env)
    assert mixed.exit_code == 1 and "verified" in mixed.output and "unknown" in mixed.output
    reused = run(["sign", str(tmp_path / "marked.png"), str(tmp_path / "s2.png"), "--payload", "0a0b0c0d0e0f"], env)
    assert reused.exit_code == 2 and "already recorded" in reused.output


def test_cli_errors_are_one_line_exit_2(tmp_path, env):
    picture(0).save(tmp_path / "a.png")
    cases = [
        ["watermark", "embed", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--payload", "xyz"],
        ["watermark", "embed", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--payload", "00"],
        ["watermark", "detect", str(tmp_path / "a.png")],  # no keys yet
        ["verify", str(tmp_path / "missing.png")],
        ["verify", str(tmp_path / "a.png"), "--keys", str(tmp_path / "nowhere")],
    ]
    for args in cases:
        result = subprocess.run([sys.executable, "-m", "artengine", *args], capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, args
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    run(["keys", "init"], env)
    result = run(["watermark", "embed", str(small), str(tmp_path / "o.png"), "--payload", "000000000000"], env)
    assert result.exit_code == 2 and "at least 256 pixels" in result.output
    assert not (tmp_path / "o.png").exists()


# ----------------------------------------------------------------------------- the audit


def test_audit_reports_provenance_per_image(tmp_path, keys, ledger, monkeypatch):
    # A fixed watermark key: how well a mark survives JPEG 35 depends on the key (over 1,500
    # random keys the read's confidence ran 0.82-1.0), and this test needs a read that is
    # found but below 0.999, every time.
    key_file = Path(keys.source) / pv.WATERMARK_KEY_FILE
    key_file.write_text(bytes(range(32)).hex() + "\n")
    keys = pv.load_keys(keys.source)
    scheme = SpreadTransformWatermark(keys.watermark_key)
    folder = tmp_path / "outputs"
    folder.mkdir()
    written(folder, keys, scheme, ledger, name="good.png")
    Image.open(folder / "good.png").convert("RGB").save(folder / "stripped.jpg", quality=35)
    picture(7).save(folder / "unmarked.png")
    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nname = "t"\nversion = 1\n\n[audits.provenance]\nsearch = false\n')
    monkeypatch.setenv("ARTENGINE_KEYS", keys.source)
    monkeypatch.setenv("ARTENGINE_LEDGER", str(ledger.path))
    result = CliRunner().invoke(cli, ["audit", str(folder), "--policy", str(policy), "--report",
                                      str(tmp_path / "report"), "--json"])
    assert result.exit_code == 1, result.output  # the policy blocks the stripped and unmarked images
    report = json.loads(result.output)
    outcomes = {e["key"]: [f for f in e["findings"] if f["audit"] == "provenance"][0] for e in report["images"]}
    assert outcomes["good.png"]["outcome"] == "pass"
    assert outcomes["good.png"]["details"]["status"] == "verified"
    assert outcomes["stripped.jpg"]["outcome"] == "fail"  # require_manifest
    assert outcomes["stripped.jpg"]["details"]["status"] == "watermark-only"
    assert outcomes["unmarked.png"]["outcome"] == "fail"  # require_watermark
    lenient = tmp_path / "lenient.toml"
    lenient.write_text('[policy]\nname = "t"\nversion = 1\n\n[audits.provenance]\nsearch = false\n'
                       'require_manifest = false\nmin_confidence = 0.999\n')
    result = CliRunner().invoke(cli, ["audit", str(folder), "--policy", str(lenient), "--report",
                                      str(tmp_path / "report2"), "--json"])
    report = json.loads(result.output)
    outcomes = {e["key"]: [f for f in e["findings"] if f["audit"] == "provenance"][0] for e in report["images"]}
    assert outcomes["good.png"]["outcome"] == "pass"
    assert outcomes["stripped.jpg"]["outcome"] == "unknown"  # low-confidence read: never a pass


def test_audit_without_keys_is_an_error_not_a_pass(tmp_path, monkeypatch):
    folder = tmp_path / "outputs"
    folder.mkdir()
    picture(0).save(folder / "a.png")
    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nname = "t"\nversion = 1\n\n[audits.provenance]\n')
    monkeypatch.setenv("ARTENGINE_KEYS", str(tmp_path / "no-keys-here"))
    monkeypatch.setenv("ARTENGINE_LEDGER", str(tmp_path / "no-ledger.sqlite"))
    result = CliRunner().invoke(cli, ["audit", str(folder), "--policy", str(policy), "--report",
                                      str(tmp_path / "report"), "--json"])
    report = json.loads(result.output)
    finding = [f for f in report["images"][0]["findings"] if f["audit"] == "provenance"][0]
    assert finding["outcome"] == "error" and "artengine keys init" in finding["message"]
    assert result.exit_code != 0
