"""The reference registry: adding, describing, searching, change detection, fail-closed
opening (row 22), and the `artengine registry` commands."""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from artengine import ReferenceRegistry, RegistryError, open_registries, query_hashes, search_registries
from artengine.cli import cli
from test_hashing import artwork

THRESHOLDS = {"phash": 12, "dhash": 14}


@pytest.fixture
def ref_folder(tmp_path):
    folder = tmp_path / "refs"
    (folder / "sub").mkdir(parents=True)
    for i in range(4):
        artwork(100 + i, 256).save(folder / ("sub" if i % 2 else ".") / f"ref{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


@pytest.fixture
def registry_path(tmp_path, ref_folder):
    path = tmp_path / "refs.db"
    with ReferenceRegistry(path, create=True) as reg:
        summary = reg.add(sorted(p for p in ref_folder.rglob("*.png")), licence="CC BY 4.0", source="test set")
    assert summary.added == 4 and len(summary.skipped) == 1
    return path


def test_add_is_idempotent_and_reports_unreadable_files(registry_path, ref_folder):
    with ReferenceRegistry(registry_path, create=True) as reg:
        generation = reg.generation()
        again = reg.add(sorted(ref_folder.rglob("*.png")))
        assert again.added == 0 and again.unchanged == 4
        assert again.skipped[0][0].endswith("broken.png")
        assert reg.count() == 4 and reg.generation() == generation


def test_info_names_scheme_versions_and_counts(registry_path):
    with ReferenceRegistry(registry_path) as reg:
        info = reg.info()
    assert info["references"] == 4
    assert info["algorithms"] == ["phash", "dhash", "phash_eq"]
    assert info["hashes"] == 4 * info["variants_per_reference"] * 3
    assert {"imagehash", "pillow", "numpy", "artengine"} <= set(info["versions"])
    assert info["licences"] == {"CC BY 4.0": 4}
    assert info["size_bytes"] > 0


def test_search_finds_the_reference_with_its_record_and_thumbnail(registry_path, ref_folder):
    source = ref_folder / "ref0.png"
    copy = Image.open(source).convert("RGB")
    buf = io.BytesIO()
    copy.save(buf, format="JPEG", quality=70)
    with ReferenceRegistry(registry_path) as reg:
        matches = reg.search(query_hashes(Image.open(buf).convert("RGB")), THRESHOLDS)
        assert len(matches) == 1
        ref = matches[0].reference
        assert ref.source_path == str(source.resolve())
        assert ref.licence == "CC BY 4.0" and ref.source_text == "test set"
        assert len(ref.sha256) == 64
        thumb = Image.open(io.BytesIO(ref.thumbnail))
        assert thumb.format == "JPEG" and max(thumb.size) <= 128
        assert ref.thumbnail_uri().startswith("data:image/jpeg;base64,")
        # An unrelated picture matches nothing.
        assert reg.search(query_hashes(artwork(999, 256)), THRESHOLDS) == []


def test_an_accept_test_chooses_among_all_variant_pairs_of_a_reference(registry_path, ref_folder):
    """With ``accept``, a closer pair that fails it does not hide a pair that passes: an
    exact copy is found on a crop variant when the full-image pair is refused."""
    source = ref_folder / "ref0.png"
    query = query_hashes(Image.open(source).convert("RGB"))
    with ReferenceRegistry(registry_path) as reg:
        [closest] = reg.search(query, THRESHOLDS)
        assert closest.reference_variant == "full" and closest.distance == 0
        [other] = reg.search(query, THRESHOLDS, accept=lambda m: m.reference_variant != "full")
        assert other.reference.id == closest.reference.id and other.reference_variant.startswith("crop")
        assert reg.search(query, THRESHOLDS, accept=lambda m: False) == []


def test_a_flipped_or_half_turned_copy_counts_only_when_the_thumbnails_agree(registry_path, ref_folder):
    """The image flipped top to bottom or turned by 90°, 180° or 270° is searched too, but such a match
    needs the thumbnail correlation (thumbnail turned back) as well: with the correlation
    off the copies match nothing; with it, each is found on its own variant, and a
    reference's thumbnail turned the wrong way does not correlate."""
    source = Image.open(ref_folder / "ref0.png").convert("RGB")
    with ReferenceRegistry(registry_path) as reg:
        for method, variant in ((Image.Transpose.FLIP_TOP_BOTTOM, "flip"), (Image.Transpose.ROTATE_180, "rotate180"),
                                (Image.Transpose.ROTATE_90, "rotate270"), (Image.Transpose.ROTATE_270, "rotate90")):
            hashes = query_hashes(source.transpose(method))
            assert reg.search(hashes, THRESHOLDS) == []
            assert reg.search(hashes, {**THRESHOLDS, "correlation": 2.0}) == []
            [match] = reg.search(hashes, {**THRESHOLDS, "correlation": 0.96})
            assert match.query_variant == variant
            assert match.reference.source_path == str((ref_folder / "ref0.png").resolve())
            assert match.correlation > 0.99 and match.as_dict()["query_variant"] == variant
            assert reg.correlation(match.reference.id, hashes.luma, "full") < 0.96


def test_a_copy_in_a_border_counts_on_its_own_thumbnail_only_when_it_agrees(registry_path, ref_folder):
    """The picture inside a flat border is searched as "trimmed", a match counting only with
    the correlation on and reached, measured on that picture's own thumbnail (the whole
    framed image's does not agree)."""
    from test_hashing import _framed

    source = Image.open(ref_folder / "ref2.png").convert("RGB")
    hashes = query_hashes(_framed(source, 0.12, (255, 255, 255)))
    assert hashes.variants[-1] == "trimmed" and "trimmed" in hashes.variant_luma
    with ReferenceRegistry(registry_path) as reg:
        assert all(m.query_variant != "trimmed" for m in reg.search(hashes, THRESHOLDS))
        assert all(m.query_variant != "trimmed" for m in reg.search(hashes, {**THRESHOLDS, "correlation": 2.0}))
        found = [m for m in reg.search(hashes, {**THRESHOLDS, "correlation": 0.96}) if m.query_variant == "trimmed"]
        assert [m.reference.source_path for m in found] == [str((ref_folder / "ref2.png").resolve())]
        ref_id = found[0].reference.id
        assert found[0].correlation == pytest.approx(reg.correlation(ref_id, hashes.luma, "trimmed", hashes.variant_luma))
        assert found[0].correlation > 0.96 > reg.correlation(ref_id, hashes.luma, "full")


def test_index_is_rebuilt_when_the_registry_changes(registry_path, tmp_path):
    newcomer = tmp_path / "new.png"
    artwork(555, 256).save(newcomer)
    query = query_hashes(Image.open(newcomer).convert("RGB"))
    with ReferenceRegistry(registry_path) as reader:
        assert reader.search(query, THRESHOLDS) == []
        with ReferenceRegistry(registry_path, create=True) as writer:
            writer.add([newcomer])
        # The same open reader sees the change: the generation moved, the index is rebuilt.
        assert [m.reference.source_path for m in reader.search(query, THRESHOLDS)] == [str(newcomer.resolve())]
    # A change made behind artengine's back (the sqlite3 shell) is noticed too.
    with sqlite3.connect(registry_path) as conn:
        conn.execute("DELETE FROM refs WHERE source_path = ?", (str(newcomer.resolve()),))
    with ReferenceRegistry(registry_path) as reader:
        assert reader.search(query, THRESHOLDS) == []


def test_references_added_extend_the_index_and_any_other_change_rebuilds_it(registry_path, tmp_path, monkeypatch):
    """A reader of a registry that only grew since its index was made reads the new rows
    alone (a reference added to 100,000 must not cost every job's worker a rebuild of
    2.1 million rows); after an edit, a delete or a row put in below the top it reads every
    row again. Either way its index holds exactly what a rebuild would."""
    from artengine.registry import _Index

    def same(a: _Index, b: _Index) -> bool:
        return (a.generation == b.generation and a.variant_names == b.variant_names
                and all(np.array_equal(a.columns[k], b.columns[k]) for k in a.columns)
                and np.array_equal(a.ref_ids, b.ref_ids) and np.array_equal(a.variants, b.variants)
                and np.array_equal(a.colours, b.colours))

    newcomers = []
    for seed in (555, 556, 557):
        newcomers.append(tmp_path / f"new{seed}.png")
        artwork(seed, 256).save(newcomers[-1])
    query = query_hashes(Image.open(newcomers[0]).convert("RGB"))
    builds = []
    build = ReferenceRegistry._build_index
    monkeypatch.setattr(ReferenceRegistry, "_build_index", lambda reg: builds.append(reg.path) or build(reg))
    with ReferenceRegistry(registry_path) as reader:
        assert reader.search(query, THRESHOLDS) == [] and len(builds) == 1  # made at first use
        with ReferenceRegistry(registry_path, create=True) as writer:
            writer.add(newcomers[:2])
        found = reader.search(query, THRESHOLDS)
        assert [m.reference.source_path for m in found] == [str(newcomers[0].resolve())] and len(builds) == 1
        with ReferenceRegistry(registry_path) as fresh:  # a new reader extends the stored index too
            assert len(fresh.search(query, THRESHOLDS)) == 1 and len(builds) == 1
            assert same(fresh.index(), build(fresh)) and same(reader.index(), build(fresh))

        # A delete, an edit and a row put in below the top each make the next reader read every row.
        with sqlite3.connect(registry_path) as conn:
            deleted_id = conn.execute("SELECT id FROM refs WHERE source_path = ?",
                                      (str(newcomers[0].resolve()),)).fetchone()[0]
            conn.execute("DELETE FROM hashes WHERE ref_id = ?", (deleted_id,))
            conn.execute("DELETE FROM refs WHERE id = ?", (deleted_id,))
        assert reader.search(query, THRESHOLDS) == [] and len(builds) == 2
        with sqlite3.connect(registry_path) as conn:
            conn.execute("UPDATE refs SET licence = 'withdrawn' WHERE id = 1")
        reader.index()
        assert len(builds) == 3
        with ReferenceRegistry(registry_path, create=True) as writer:
            writer.add(newcomers[2:])
        reader.index()
        assert len(builds) == 3  # an add again: extended
        with sqlite3.connect(registry_path) as conn:  # the deleted reference's id, taken by hand
            conn.execute("INSERT INTO refs (id, sha256, source_path, width, height, quality, added_at, thumbnail, "
                         "colour_r, colour_g, colour_b) SELECT ?, sha256 || '-copy', source_path, width, height, "
                         "quality, added_at, thumbnail, colour_r, colour_g, colour_b FROM refs WHERE id = ?",
                         (deleted_id, deleted_id + 1))
            conn.execute("INSERT INTO hashes SELECT ?, variant, phash, dhash, phash_eq FROM hashes WHERE ref_id = ?",
                         (deleted_id, deleted_id + 1))
        assert same(reader.index(), build(reader)) and len(builds) == 4

        # What a reader measured on a reference it met is measured again after an edit.
        from artengine.registry import _measures

        reader._details_of(np.asarray([1]))
        with sqlite3.connect(registry_path) as conn:
            conn.execute("UPDATE refs SET thumbnail = (SELECT thumbnail FROM refs WHERE id = 2) WHERE id = 1")
        reader.index()
        thumbnail = reader._stored(2)[0]
        assert np.array_equal(reader._details_of(np.asarray([1]))[0],
                              _measures(reader._thumbnail_image(thumbnail, 2))[1])


@pytest.mark.parametrize("stored", [True, False], ids=["extension-stored", "extension-in-memory"])
def test_the_index_carries_each_references_measures_so_no_reader_decodes_them_again(registry_path, tmp_path,
                                                                                      monkeypatch, stored):
    """The thumbnail measures a search compares (detail, the colour of the coloured parts,
    quality) are made once, with the index, for every reader: a job's workers against a
    registry of 100,000 references each decoded hundreds of thumbnails per image. They are
    the measures a reader would make itself; references added later are measured as the
    index is extended."""
    from artengine.registry import _measures

    with ReferenceRegistry(registry_path) as first:
        first.index()  # made and stored
    newcomer = tmp_path / "new.png"
    artwork(558, 256).save(newcomer)
    # An extension of 5 % of the rows or more is stored again, with every reference's measures;
    # a smaller one is kept in memory, with the new references' measures alone.
    monkeypatch.setattr(ReferenceRegistry, "STORE_EXTENSION", 0.05 if stored else 100)
    with ReferenceRegistry(registry_path) as reader:
        decoded: list[int] = []
        decode = reader._thumbnail_image
        monkeypatch.setattr(reader, "_thumbnail_image", lambda data, ref_id: decoded.append(ref_id) or decode(data, ref_id))
        reader.index()  # the stored index, its measures taken
        with ReferenceRegistry(registry_path, create=True) as writer:
            writer.add([newcomer])
        index = reader.index()  # extended by the newcomer
        ids = sorted(set(int(i) for i in index.ref_ids))
        assert len(ids) == 5 and decoded == [ids[-1]]
        assert [int(i) for i in index.measured_ids] == (ids if stored else ids[-1:])
        assert index.measures_added is not stored
        details = reader._details_of(np.asarray(ids))
        qualities = [reader._quality(i) for i in ids]
        assert decoded == [ids[-1]]  # nothing measured again
        for row, ref_id in enumerate(ids):
            thumbnail, quality = reader._stored(ref_id)
            _, detail, colour = _measures(decode(thumbnail, ref_id))
            assert np.array_equal(details[row], detail) and qualities[row] == quality
            assert np.array_equal(reader._saturated[ref_id], colour, equal_nan=True)


def test_a_thumbnail_that_cannot_be_read_fails_only_the_searches_that_meet_it(registry_path, ref_folder):
    """Measuring every reference with the index must not make one damaged thumbnail the
    failure of every search (and a rebuild at each): as before, a search that meets that
    reference errors, naming it; the others go on."""
    with sqlite3.connect(registry_path) as conn:
        conn.execute("UPDATE refs SET thumbnail = x'00112233' WHERE id = 2")
    with ReferenceRegistry(registry_path) as reader:
        index = reader.index()
        assert [int(i) for i in index.measured_ids] == [1, 3, 4]
        query = query_hashes(Image.open(ref_folder / "ref0.png").convert("RGB"))
        assert len(reader.search(query, THRESHOLDS)) == 1
        with pytest.raises(RegistryError, match="thumbnail of reference 2 cannot be read"):
            reader._details_of(np.asarray([2]))


def test_a_damaged_index_file_is_rebuilt(registry_path, ref_folder):
    query = query_hashes(Image.open(ref_folder / "ref0.png").convert("RGB"))
    with ReferenceRegistry(registry_path) as reg:
        reg.index()
    index_file = registry_path.with_name(registry_path.name + ".index")
    assert index_file.exists()
    index_file.write_bytes(index_file.read_bytes()[:100])  # truncated
    with ReferenceRegistry(registry_path) as reg:
        assert len(reg.search(query, THRESHOLDS)) == 1
    assert index_file.stat().st_size > 100


def test_several_registries_are_searched_at_once(registry_path, tmp_path):
    style_refs = tmp_path / "style.png"
    artwork(777, 256).save(style_refs)
    style_db = tmp_path / "style.db"
    with ReferenceRegistry(style_db, create=True) as reg:
        reg.add([style_refs], licence="studio licence")
    registries = open_registries([registry_path, style_db, registry_path])
    assert len(registries) == 2  # the same file opens once
    matches = search_registries(registries, query_hashes(Image.open(style_refs).convert("RGB")), THRESHOLDS)
    assert [(m.registry, m.reference.licence) for m in matches] == [(str(style_db), "studio licence")]


# --------------------------------------------------------------------- fail-closed (row 22)


def _corrupt_variants(tmp_path, registry_path):
    missing = tmp_path / "missing.db"
    zero = tmp_path / "zero.db"
    zero.write_bytes(b"")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(registry_path.read_bytes()[:1500])
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    future = tmp_path / "future.db"
    shutil.copy(registry_path, future)
    with sqlite3.connect(future) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    other_scheme = tmp_path / "other_scheme.db"
    shutil.copy(registry_path, other_scheme)
    with sqlite3.connect(other_scheme) as conn:
        conn.execute("UPDATE meta SET value = 'imagededup-phash/0' WHERE key = 'hash_scheme'")
    no_refs = tmp_path / "no_refs.db"
    ReferenceRegistry(no_refs, create=True).close()
    return {"no such file": missing, "empty file": zero, "not a database": garbage,
            "registry": truncated, "not an artengine reference registry": foreign,
            "schema version '99'": future, "imagededup-phash/0": other_scheme,
            "no references": no_refs}


def test_missing_empty_corrupt_or_incompatible_registries_are_errors_naming_the_file(tmp_path, registry_path):
    for expected, path in _corrupt_variants(tmp_path, registry_path).items():
        with pytest.raises(RegistryError) as caught:
            open_registries([path])
        assert str(path) in str(caught.value) and expected in str(caught.value), (path, caught.value)


def test_registry_add_and_info_commands(tmp_path, ref_folder):
    db = tmp_path / "cli.db"
    runner = CliRunner()
    result = runner.invoke(cli, ["registry", "add", str(db), str(ref_folder), "--licence", "CC0",
                                 "--source", "museum scans"])
    assert result.exit_code == 0, result.output
    assert "added 4" in result.output and "skipped 1 unreadable" in result.output
    assert "broken.png" in result.output
    again = runner.invoke(cli, ["registry", "add", str(db), str(ref_folder)])
    assert "added 0, already present 4" in again.output
    info = runner.invoke(cli, ["registry", "info", str(db), "--json"])
    assert info.exit_code == 0
    doc = json.loads(info.stdout)
    assert doc["references"] == 4 and doc["licences"] == {"CC0": 4}
    text = runner.invoke(cli, ["registry", "info", str(db)])
    assert "4 references" in text.output and "imagehash" in text.output


def test_registry_commands_fail_with_one_line_and_exit_2(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(2048))
    unreadable, empty = tmp_path / "unreadable", tmp_path / "empty"
    unreadable.mkdir(), empty.mkdir()
    (unreadable / "a.png").write_bytes(b"not a png")
    (unreadable / "b.jpg").write_bytes(b"")
    runner = CliRunner()
    for args, expected in (
            (["registry", "info", str(tmp_path / "missing.db")], "missing.db"),
            (["registry", "info", str(garbage)], "garbage.db"),
            (["registry", "add", str(garbage), str(tmp_path)], "garbage.db"),
            (["registry", "add", str(tmp_path / "x.db"), str(tmp_path / "no_such_folder")], "no_such_folder"),
            # Nothing given could be used: an error, not "added 0".
            (["registry", "add", str(tmp_path / "y.db"), str(unreadable)], "none of the 2 file(s) given could be read"),
            (["registry", "add", str(tmp_path / "z.db"), str(empty)], f"no image files in {empty}")):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert expected in result.output, (args, result.output)
    # The registries those two would have created are not left behind, empty.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("y.db", "z.db"))]


def _as_schema_2(path):
    """Turn a current registry file into what artengine's schema 2 wrote (no band hashes,
    no equalised pHash, hash scheme 1)."""
    from artengine.hashing import BAND_VARIANTS

    with sqlite3.connect(path) as conn:
        conn.execute(f"DELETE FROM hashes WHERE variant IN ({', '.join('?' for _ in BAND_VARIANTS)})", BAND_VARIANTS)
        conn.execute("ALTER TABLE hashes DROP COLUMN phash_eq")
        variants = [v for v in json.loads(conn.execute("SELECT value FROM meta WHERE key = 'variants'").fetchone()[0])
                    if v not in BAND_VARIANTS]
        for key, value in (("schema_version", "2"), ("hash_scheme", "artengine-hashes/1"),
                           ("algorithms", "phash,dhash"), ("variants", json.dumps(variants))):
            conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.close()


def _as_schema_1(path):
    """Turn a current registry file into what artengine's schema 1 wrote (no colours)."""
    _as_schema_2(path)
    with sqlite3.connect(path) as conn:
        for channel in "rgb":
            conn.execute(f"ALTER TABLE refs DROP COLUMN colour_{channel}")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()


def _captioned(image):
    """``image`` with an opaque strip across its lower middle (a caption band)."""
    from PIL import ImageDraw

    out = image.copy()
    top = round(image.height * 0.58)
    ImageDraw.Draw(out).rectangle((0, top, image.width, top + image.height // 10), fill=(255, 255, 255))
    return out


BAND_THRESHOLDS = {"phash": 14, "dhash": 12, "sum": 22, "band_sum": 16, "band_image_sum": 64}


def test_a_schema_2_registry_gains_band_and_equalised_hashes_in_place(registry_path, ref_folder, tmp_path):
    with ReferenceRegistry(registry_path) as reg:
        before = {tuple(r) for r in reg._conn.execute("SELECT ref_id, variant, phash, dhash, phash_eq FROM hashes")}
    source = ref_folder / "ref0.png"
    caption = _captioned(Image.open(source).convert("RGB"))
    with ReferenceRegistry(registry_path) as reg:
        [found] = reg.search(query_hashes(caption), BAND_THRESHOLDS)
        assert found.query_variant == "band-top" and found.reference.source_path == str(source.resolve())
    _as_schema_2(registry_path)
    shutil.move(ref_folder / "sub" / "ref1.png", tmp_path / "moved.png")  # the upgrade falls back to the thumbnail
    with pytest.raises(RegistryError) as caught:
        open_registries([registry_path])
    assert "schema version '2'" in str(caught.value) and "artengine registry upgrade" in str(caught.value)
    result = CliRunner().invoke(cli, ["registry", "upgrade", str(registry_path)])
    assert result.exit_code == 0 and "upgraded from schema version 2 to 3" in result.output, result.output
    with ReferenceRegistry(registry_path) as reg:
        info = reg.info()
        assert info["schema_version"] == 3 and info["algorithms"] == ["phash", "dhash", "phash_eq"]
        after = {tuple(r) for r in reg._conn.execute("SELECT ref_id, variant, phash, dhash, phash_eq FROM hashes")}
        # Unchanged sources give the very hashes a fresh registry holds; the moved one's
        # new hashes come from its thumbnail and stay close.
        rows = reg._conn.execute("SELECT id, source_path FROM refs").fetchall()
        moved_id = next(i for i, p in rows if p.endswith("ref1.png"))
        assert {r for r in after if r[0] != moved_id} == {r for r in before if r[0] != moved_id}
        fresh = {r[1]: r for r in before if r[0] == moved_id}
        for ref_id, variant, p, d, eq in (r for r in after if r[0] == moved_id):
            assert (p, d) == fresh[variant][2:4] or variant.startswith("band-")
            assert bin(int(eq, 16) ^ int(fresh[variant][4], 16)).count("1") <= 12, variant
        [found] = reg.search(query_hashes(caption), BAND_THRESHOLDS)
        assert found.query_variant == "band-top"


def test_a_schema_1_registry_is_refused_read_only_and_upgraded_in_place(registry_path, ref_folder):
    with ReferenceRegistry(registry_path) as reg:
        before = {m.reference.source_path: m.reference.colour
                  for p in sorted(ref_folder.rglob("ref*.png"))
                  for m in reg.search(query_hashes(Image.open(p).convert("RGB")), THRESHOLDS)}
    assert len(before) == 4
    _as_schema_1(registry_path)
    with pytest.raises(RegistryError) as caught:
        open_registries([registry_path])
    assert "schema version '1'" in str(caught.value) and "artengine registry upgrade" in str(caught.value)
    runner = CliRunner()
    result = runner.invoke(cli, ["registry", "upgrade", str(registry_path)])
    assert result.exit_code == 0 and "upgraded from schema version 1 to 3" in result.output, result.output
    again = runner.invoke(cli, ["registry", "upgrade", str(registry_path)])
    assert again.exit_code == 0 and "nothing to do" in again.output
    with ReferenceRegistry(registry_path) as reg:
        assert reg.info()["schema_version"] == 3
        for p in sorted(ref_folder.rglob("ref*.png")):
            [match] = reg.search(query_hashes(Image.open(p).convert("RGB")), {**THRESHOLDS, "colour": 0.1})
            # Measured on the stored thumbnail: within a hair of the original's signature.
            assert max(abs(a - b) for a, b in zip(match.reference.colour, before[match.reference.source_path])) < 0.01
    missing = runner.invoke(cli, ["registry", "upgrade", str(registry_path.with_name("none.db"))])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_colour_signature_separates_same_composition_in_other_colours(registry_path, ref_folder):
    source = Image.open(ref_folder / "ref0.png").convert("RGB")
    # The same luminance, other colours: greyscale hashes agree, colours do not.
    lum = np.asarray(source.convert("L"), dtype=np.float32)
    recoloured = np.stack([lum * 0.55, lum * 0.95, np.minimum(255, lum * 1.6)], axis=-1)
    other = Image.fromarray(recoloured.clip(0, 255).astype(np.uint8))
    with ReferenceRegistry(registry_path) as reg:
        loose = reg.search(query_hashes(other), THRESHOLDS)
        assert [m.reference.source_path for m in loose] == [str((ref_folder / "ref0.png").resolve())]
        assert loose[0].colour_distance > 0.1
        assert reg.search(query_hashes(other), {**THRESHOLDS, "colour": 0.1}) == []
        jpeg = io.BytesIO()
        source.save(jpeg, format="JPEG", quality=60)
        [copy] = reg.search(query_hashes(Image.open(jpeg).convert("RGB")), {**THRESHOLDS, "colour": 0.1})
        assert copy.colour_distance < 0.02


def test_part_details_are_the_resized_parts_of_the_thumbnail():
    """The part search computes every part's 16x16 thumbnail from one summed-area table:
    the same cells as Pillow's BOX resize of the part cut out (what the thumbnail
    correlation uses), on square and oblong thumbnails, shrunk and enlarged parts."""
    from artengine.hashing import crop_box, luma_thumbnail, thumbnail_detail
    from artengine.registry import _PART_GRID, _corner_weights, _part_cells, _part_details, _part_norms, _part_scores

    rng = np.random.default_rng(3)
    parts = [*_PART_GRID, (0.725, 0.125, 0.875), (0.925, 0.375, 0.0), (0.775, 1.0, 0.625)]
    for width, height in ((128, 128), (128, 85), (61, 128), (20, 14)):
        smooth = Image.fromarray(rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8))
        thumb = smooth.resize((width, height), Image.Resampling.BICUBIC).convert("L")
        expected = thumbnail_detail(np.stack([luma_thumbnail(thumb.crop(crop_box(thumb.size, *p))) for p in parts]))
        luma = np.asarray(thumb, dtype=np.float64)
        integral = np.pad(luma.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        cells = _part_cells(width, height, parts)
        got = _part_details(integral, cells)
        assert got.shape == (len(parts), 256)
        assert np.abs(got - expected).max() < 1e-6, (width, height)
        # The search scores the parts against an image's thumbnail detail without making
        # their details (shrunk parts' cells from the corners they share): the same scores.
        for _ in range(3):
            image_detail = thumbnail_detail(rng.normal(size=(16, 16)))
            assert np.abs(_part_scores(integral, cells, image_detail) - got @ image_detail).max() < 1e-9
            # The norms kept with the table and the image's corner weights give the same.
            kept = _part_scores(integral, cells, image_detail, _part_norms(integral, cells),
                                _corner_weights(cells, image_detail) if len(cells) == 2 else None)
            assert np.abs(kept - got @ image_detail).max() < 1e-9
    assert len(_part_cells(128, 128, parts)) == 2 and len(_part_cells(20, 14, parts)) == 5  # tiled / enlarged


def test_part_tests_of_many_references_at_once_are_each_ones_own(tmp_path, monkeypatch):
    """A search part-tests all the references an image variant needs at once, in groups
    of one thumbnail size: each reference's best part and its correlation are what it gets
    tested alone, whatever the group (thumbnails of four sizes, shrunk and enlarged
    parts, groups of two and of all, and parts looked at more closely)."""
    from artengine.hashing import crop_box, luma_thumbnail, thumbnail_detail

    rng = np.random.default_rng(8)
    folder = tmp_path / "refs"
    folder.mkdir()
    for i, (width, height) in enumerate([(128, 128)] * 3 + [(200, 133)] * 2 + [(20, 14)] * 2 + [(32, 32)] * 3):
        small = Image.fromarray(rng.integers(0, 256, (height // 6 + 2, width // 6 + 2, 3), dtype=np.uint8))
        small.resize((width, height), Image.Resampling.BICUBIC).save(folder / f"r{i}.png")
    # A copy of the first a little brighter: its part looked at closely is the same one.
    Image.eval(Image.open(folder / "r0.png"), lambda v: min(255, v + 3)).save(folder / "r0-brighter.png")
    with ReferenceRegistry(tmp_path / "refs.db", create=True) as reg:
        reg.add(sorted(folder.glob("*.png")))
    with ReferenceRegistry(tmp_path / "refs.db") as reg:
        ids = sorted(set(reg.index().ref_ids.tolist()))
        first = reg._thumbnail_image(reg._stored(ids[0])[0], ids[0]).convert("L")
        details = [thumbnail_detail(luma_thumbnail(first.crop(crop_box(first.size, 0.825, 0.375, 0.625)))),
                   *(thumbnail_detail(rng.normal(size=(16, 16))) for _ in range(2))]
        for at_once in (2, 32):
            monkeypatch.setattr(reg, "PARTS_AT_ONCE", at_once)
            for detail in details:
                together = reg.part_correlations(ids[::-1], detail)
                assert together == [reg.part_correlation(i, detail) for i in ids[::-1]]
        # The crop is found by the closer look: it lies between the grid's parts.
        assert max(best for best, _ in reg.part_correlations(ids, details[0])) > 0.99


#: The search's bounds in the publication policy, the part test on.
PUBLICATION_BOUNDS = {"phash": 16, "dhash": 12, "sum": 22, "colour": 0.08, "saturated": 0.2, "colour_contrast": 1.2,
                      "close_phash": 2, "close_phash_dhash": 20, "band_sum": 16, "band_image_sum": 34,
                      "band_min_quality": 20, "correlation": 0.96, "part_correlation": 0.97, "part_min_quality": 50}


def _shapes_folder(tmp_path, length: int, others: int = 0):
    """``length`` training shapes of 32 px saved as a folder of references (a registry of
    look-alikes), and ``others`` shapes of another seed; returns (training, folder, others)."""
    from artengine.data import open_dataset
    from artengine.plugins import get_plugins

    datasets = get_plugins().components("datasets")
    training = open_dataset("shapes", image_size=32, seed=0, datasets=datasets, length=length)
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(len(training)):
        training[i].image.save(folder / f"r{i:03d}.png")
    other = open_dataset("shapes", image_size=32, seed=1, datasets=datasets, length=others) if others else []
    return training, folder, other


def _pair_decisions_one_by_one(reg, hashes, thresholds, qi, codes, pair_refs, apart_by, band_of_code, query_band,
                               confirmed, use_bands, min_correlation, min_part):
    """The search's decisions of each pair before the colours, one pair at a time (as its
    loop made them before stop 39): which pairs it looks at, whether each is within the
    bounds, to be verified, to be confirmed, and the correlation of those it passes over
    on their correlation alone."""
    from artengine.hashing import ALGORITHMS, PART_VARIANTS
    from artengine.registry import _query_detail

    first = ALGORITHMS[0]
    looked, within_of, verify_of, confirm_of, by_correlation = [], {}, {}, {}, {}
    for k, (q, code, ref_id) in enumerate(zip(qi.tolist(), codes.tolist(), pair_refs.tolist())):
        band = band_of_code[code]
        if band != query_band[q] or (band is not None and not use_bands):
            continue
        distances = {a: int(apart_by[a][k]) for a in ALGORITHMS}
        close = (band is None and distances[first] <= thresholds.get("close_phash", -1)
                 and distances["dhash"] <= thresholds.get("close_phash_dhash", -1))
        within = close or (all(distances[a] <= thresholds[a] for a in ALGORITHMS)
                           and (thresholds.get("sum") is None or sum(distances.values()) <= thresholds["sum"]))
        verify = band is None and min_correlation is not None and distances[first] <= thresholds[first]
        confirm = confirmed[q]
        if not verify and (not within or confirm):
            continue
        if band is not None and sum(distances.values()) > thresholds["band_sum"]:
            continue
        variant = hashes.variants[q]
        if verify and (not within or confirm) and (min_part is None or variant not in PART_VARIANTS):
            detail = _query_detail(hashes.luma, variant, hashes.variant_luma)
            correlation = float(detail @ reg._detail(ref_id, hashes.variant_box.get(variant)))
            if correlation < min_correlation:
                by_correlation[k] = correlation
                continue
        looked.append(k)
        within_of[k], verify_of[k], confirm_of[k] = within, verify, confirm
    return looked, within_of, verify_of, confirm_of, by_correlation


def test_the_pairs_passed_over_at_once_are_those_the_search_would_pass_over(tmp_path, monkeypatch):
    """The search decides on arrays which pairs it need not look at (outside every bound,
    or a whole-thumbnail correlation clearly below the bound with no part to search), and
    looks at the rest one by one. Those decisions must be the ones made a pair at a time
    (a pair whose correlation is within the margin of the bound may be looked at besides),
    and the matches those of looking at every pair the correlation alone would pass over,
    with the part test on and off, on a registry of look-alikes (training shapes) searched
    by other shapes and by copies of registered ones (cut, mirrored, turned, brightened)."""
    from artengine.hashing import query_hashes_many

    training, folder, others = _shapes_folder(tmp_path, 160, 40)
    rng = np.random.default_rng(9)
    queries = [others[i].image.resize((256, 256), Image.Resampling.BICUBIC) for i in range(len(others))]
    for i in range(0, 40, 2):
        image = training[i].image.resize((256, 256), Image.Resampling.BICUBIC)
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        cut = image.crop((x, y, x + 205, y + 205)).resize((256, 256))
        queries += [cut, cut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), image.transpose(Image.Transpose.ROTATE_90),
                    ImageEnhance.Brightness(image).enhance(1.2)]
    thresholds = {"phash": 16, "dhash": 12, "sum": 22, "colour": 0.08, "saturated": 0.2, "colour_contrast": 1.2,
                  "close_phash": 2, "close_phash_dhash": 20, "band_sum": 16, "band_image_sum": 34,
                  "band_min_quality": 20, "correlation": 0.96, "part_min_quality": 50}
    looked_at: list[tuple[int, int]] = []
    with ReferenceRegistry(tmp_path / "refs.db", create=True) as reg:
        reg.add(sorted(folder.glob("*.png")))
        at_once = reg._pair_decisions

        def checked(hashes, thresholds, qi, codes, pair_refs, apart_by, band_of_code, query_band, confirmed,
                    use_bands, min_correlation, min_part, query_detail):
            decided = at_once(hashes, thresholds, qi, codes, pair_refs, apart_by, band_of_code, query_band,
                              confirmed, use_bands, min_correlation, min_part, query_detail)
            kept, within, verify, confirm = decided
            looked, one_within, one_verify, one_confirm, by_correlation = _pair_decisions_one_by_one(
                reg, hashes, thresholds, qi, codes, pair_refs, apart_by, band_of_code, query_band, confirmed,
                use_bands, min_correlation, min_part)
            assert set(looked) <= set(kept.tolist())
            for k in set(kept.tolist()) - set(looked):  # only pairs within the margin of the bound
                assert by_correlation[k] >= min_correlation - reg.CORRELATION_MARGIN
            for k in looked:
                assert (bool(within[k]), bool(verify[k]), bool(confirm[k])) == (one_within[k], one_verify[k],
                                                                                 one_confirm[k])
            looked_at.append((len(kept), len(qi)))
            return decided

        hashes = query_hashes_many([q.convert("RGB") for q in queries])
        # The part test on (its pairs are looked at) and off; and the thumbnails off (a
        # turned copy then never counts).
        for part, correlation in ((0.97, 0.96), (2.0, 0.96), (2.0, 2.0)):
            bounds = {**thresholds, "part_correlation": part, "correlation": correlation}
            looked_at.clear()
            monkeypatch.setattr(reg, "_pair_decisions", checked)
            found = [reg.search(h, bounds) for h in hashes]
            kept, pairs = (sum(n) for n in zip(*looked_at))
            monkeypatch.setattr(reg, "CORRELATION_MARGIN", float("inf"))  # no pair passed over on its correlation
            assert [reg.search(h, bounds) for h in hashes] == found
            monkeypatch.undo()
            if correlation <= 1:
                assert sum(bool(f) for f in found[40:]) >= 40  # most copies are found
                assert kept < 0.5 * pairs  # most pairs passed over at once (0.34 with the part test, 0.08 without)


def test_a_reference_thumbnail_is_decoded_once_for_everything_the_search_measures(tmp_path, monkeypatch):
    """The search measures three things on a reference's stored thumbnail (its detail, the
    colour of its coloured parts, the summed-area table of its parts); the JPEG is decoded
    once for all of them while the registry is open, and a part test after its luminance
    was let go decodes it again to the same findings."""
    from artengine.hashing import query_hashes_many

    training, folder, _ = _shapes_folder(tmp_path, 120)
    queries = []
    for i in range(0, 60, 3):
        image = training[i].image.resize((256, 256), Image.Resampling.BICUBIC)
        queries += [image.crop((20, 30, 225, 235)).resize((256, 256)), ImageEnhance.Brightness(image).enhance(1.2),
                    training[i + 1].image.resize((256, 256), Image.Resampling.BICUBIC).rotate(3)]
    thresholds = PUBLICATION_BOUNDS
    hashes = query_hashes_many([q.convert("RGB") for q in queries])
    with ReferenceRegistry(tmp_path / "refs.db", create=True) as reg:
        reg.add(sorted(folder.glob("*.png")))
    found = {}
    for grays_bytes in (ReferenceRegistry.GRAYS_BYTES, 0):
        decoded: list[int] = []
        with ReferenceRegistry(tmp_path / "refs.db") as reg:
            monkeypatch.setattr(reg, "GRAYS_BYTES", grays_bytes)
            decode = reg._thumbnail_image
            monkeypatch.setattr(reg, "_thumbnail_image", lambda data, ref_id: decoded.append(ref_id) or decode(data, ref_id))
            part_tests = []
            part_correlations = reg.part_correlations
            monkeypatch.setattr(reg, "part_correlations",
                                lambda ref_ids, detail: part_tests.extend(ref_ids) or part_correlations(ref_ids, detail))
            matches = [reg.search(h, thresholds) for h in hashes]
            found[grays_bytes] = [[m.as_dict() for m in f] for f in matches]
            # The records kept for the registry's lifetime (with their thumbnails' bytes) are
            # only those of the references the matches name, not of every reference met.
            assert set(reg._refs) == {m.reference.id for f in matches for m in f}
        assert part_tests and decoded  # the searches reached the thumbnails and the part test
        if grays_bytes:
            assert len(decoded) == len(set(decoded))  # each thumbnail decoded once
        else:
            assert len(decoded) > len(set(decoded))  # luminance let go: decoded again for a part test
    assert found[0] == found[ReferenceRegistry.GRAYS_BYTES]
    assert sum(bool(f) for f in found[0]) >= 30  # the cut and brightened copies are named


def test_the_image_turned_as_a_variant_faces_the_reference_as_pillow_turns_it():
    """A match of a turned variant is verified on the image's thumbnail turned the same
    way: numpy's views give the values Pillow's transpose gives, to the bit."""
    from artengine.hashing import TURNED_VARIANTS, thumbnail_detail
    from artengine.registry import _query_detail

    luma = np.random.default_rng(3).random((16, 16), dtype=np.float32) * 255
    for variant, method in TURNED_VARIANTS.items():
        turned = np.asarray(Image.fromarray(luma).transpose(method))
        assert _query_detail(luma, variant).tobytes() == thumbnail_detail(turned).tobytes(), variant
    assert not np.array_equal(_query_detail(luma, "rotate90"), _query_detail(luma, "rotate270"))


def test_the_colours_of_the_coloured_parts_compared_at_once_are_each_ones_own(tmp_path, monkeypatch):
    """The search compares the colour of the image's coloured parts with those of the
    references it has measured in one array operation. Every match, and every pair the
    bound refuses, must be as when each reference is compared when a pair reaches it, on a
    registry of look-alikes searched by copies in other colours and by other shapes."""
    from artengine.hashing import query_hashes_many

    training, folder, others = _shapes_folder(tmp_path, 120, 30)
    queries = [others[i].image.resize((256, 256), Image.Resampling.BICUBIC) for i in range(len(others))]
    for i in range(0, 60, 2):
        image = training[i].image.resize((256, 256), Image.Resampling.BICUBIC)
        queries += [image.convert("RGB").split()[::-1][0].convert("RGB") if i % 4 else image,  # grey or as it is
                    Image.merge("RGB", image.convert("RGB").split()[::-1]),  # red and blue swapped
                    ImageEnhance.Brightness(image).enhance(1.15)]
    thresholds = PUBLICATION_BOUNDS
    hashes = query_hashes_many([q.convert("RGB") for q in queries])
    with ReferenceRegistry(tmp_path / "refs.db", create=True) as reg:
        reg.add(sorted(folder.glob("*.png")))
        one_at_a_time = reg.saturated_distance
        compared: list[bool] = []  # per reference compared one at a time: on a variant's own colours?

        def each_one(ref_id, hashes, variant, contrast):
            compared.append(variant in hashes.variant_colour)
            return one_at_a_time(ref_id, hashes, variant, contrast)

        monkeypatch.setattr(reg, "saturated_distance", each_one)

        def search_all(bounds):
            return [[m.as_dict() for m in reg.search(h, bounds)] for h in hashes]

        monkeypatch.setattr(reg, "_saturated_apart", lambda refs, ours, contrast: [])
        each = search_all(thresholds)  # every reference compared as a pair reaches it; all measured now
        assert compared
        monkeypatch.undo()
        monkeypatch.setattr(reg, "saturated_distance", each_one)
        compared.clear()
        assert search_all(thresholds) == each
        # The image's own colours against every reference a pair reached at once (all had
        # been measured); only a cut-out variant's own colours one at a time.
        assert all(compared)
        # The bound decides here: without it, more images match.
        assert search_all({**thresholds, "saturated": 1.0}) != each
        # Each band's queries scanning only its rows (an index of many rows): the same.
        from artengine.registry import _Index
        monkeypatch.setattr(_Index, "BANDS_APART_FROM", 1)
        assert search_all(thresholds) == each
    assert sum(bool(f) for f in each) >= 20


def test_each_band_scans_only_its_own_rows_and_the_pairs_come_as_a_scan_of_every_row(monkeypatch):
    """The first step of a search: every (query variant, row) pair within the pHash bound.
    A band's queries scan only that band's rows; the pairs must be those of a scan of
    every row, less the pairs a search never compares (a band and another kind of row, a
    whole image and a band, bands when they are not in use), in the same order, across
    several chunks of the scan."""
    from artengine.hashing import BAND_VARIANTS, COLUMNS, REFERENCE_VARIANTS, hamming_within
    from artengine.registry import _Index

    rng = np.random.default_rng(5)
    refs, per_ref = 300, len(REFERENCE_VARIANTS)
    n = refs * per_ref
    # Hashes of a few bits each, so that many pairs of every kind fall within the bound.
    columns = {a: (rng.random((n, 64)) < 0.08).astype(np.uint64) @ (np.uint64(1) << np.arange(64, dtype=np.uint64))
               for a in COLUMNS}
    variants = np.tile(np.arange(per_ref, dtype=np.uint8), refs)
    index = _Index("u", 1, columns, np.repeat(np.arange(refs), per_ref), variants, REFERENCE_VARIANTS,
                   np.zeros((n, 3), np.float32))
    monkeypatch.setattr(_Index, "SCAN_CHUNK", 1000)  # 7 chunks
    monkeypatch.setattr(_Index, "BANDS_APART_FROM", 1000)
    kinds = [None, "band-top", None, "band-bottom", None, "band-top"]
    queries = columns["phash"][rng.integers(0, n, len(kinds))] ^ np.uint64(1)
    row_kind = np.array([name if name in BAND_VARIANTS else None for name in REFERENCE_VARIANTS], dtype=object)[variants]
    for use_bands in (True, False):
        qi, rows, dist = hamming_within(columns["phash"], queries, 9, chunk=1000)
        keep = np.array([row_kind[r] == kinds[q] and (kinds[q] is None or use_bands)
                         for q, r in zip(qi.tolist(), rows.tolist())], dtype=bool)
        found = index.pairs_within(queries, kinds, use_bands, 9)
        assert len(found[0]) == keep.sum() > 500
        for ours, every_row in zip(found, (qi[keep], rows[keep], dist[keep])):
            assert ours.tolist() == every_row.tolist()
        assert {kinds[q] for q in found[0].tolist()} == ({None, *BAND_VARIANTS} if use_bands else {None})
