"""The built-in near-duplicate audit: is an output a near-copy of a registered reference?

Two components:

* the ``hashes`` feature extractor computes every perceptual hash of an image once (pHash
  and dHash of the image, of the image turned over (mirrored, flipped top to bottom,
  rotated by 90°, 180° or 270°), of its top and bottom bands and of the picture inside a
  border (a mount, a letterbox, padding by reflection), if it has one, the pHash
  of each after histogram equalisation, a PDQ-style quality score and a colour
  signature), for any audit or metric that needs them;
* the ``near_duplicate`` audit searches those hashes in every reference registry of the
  run (``--registry``, the policy's ``registries``, the registries the audited styles ship,
  and its own ``registries`` setting) and fails an image that matches a reference: pHash
  and dHash distances each within their bound and their sum within its own, or pHash
  within ``close_phash_distance`` with dHash within ``close_phash_max_dhash_distance``
  (for the same image variant and stored variant), and colour signatures within their
  bound, allowing for a contrast change of up to ``colour_contrast``, and so the colours
  of their coloured parts (``max_saturated_colour_distance``: a red and a purple circle on
  the same grey ground are not copies, though their mean colours are close); or, for an
  image of enough detail, whose top or bottom band matches the same band of a reference
  within ``max_band_distance_sum`` while the whole images are within
  ``band_max_image_distance_sum`` (a copy with a caption across it); or whose pHash is
  within its bound while its 16x16 luminance thumbnail, without its best-fitting plane,
  correlates with the reference's stored thumbnail within ``min_thumbnail_correlation``
  (a brightness or contrast change of a smooth picture, which moves its hash bits), or,
  for the image as it stands or its mirror image, both it and the reference of at least
  ``low_detail_quality``, with a part of the reference's thumbnail within
  ``min_part_correlation`` (a copy with up to a quarter of each side cut away); a match
  of the image flipped top to bottom or turned by 90°, 180° or 270°, of the picture
  inside its border, or of the image turned back by the few degrees its filled corners
  show, needs that correlation whatever the distances. The finding names the reference
  (sha256, source path, licence, source text), the distances and how the copy was turned
  over, turned or framed, if it was, and carries the reference's thumbnail for the
  report.

A file byte-identical to a reference fails whatever its hashes say. Fail-closed: no
registry, or a missing, empty, corrupt or incompatible one, gives an ``error`` finding for
every image. An image with little detail (PDQ's quality measure below
``low_detail_quality``) is weaker evidence, since smooth pictures resemble each other: a
match where the image or the reference has so little detail counts only if it is much
closer: pHash + dHash within ``flat_max_distance_sum`` and the
pHashes of the histogram-equalised images within ``flat_max_equalised_distance``, or the
ordinary bounds and equalised pHashes within ``flat_close_equalised_distance``; colours
within their bound either way. Below ``min_quality`` (too flat for the hash to rule anything out),
an image without such a match is ``unknown`` rather than ``pass``. Both ``error`` and
``unknown`` block publication unless the policy records an override.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from artengine import (
    ArtengineError,
    Audit,
    AuditItem,
    MIN_RELIABLE_QUALITY,
    FeatureExtractor,
    Finding,
    ImageHashes,
    Match,
    ReferenceRegistry,
    STRAIGHTENED,
    Setting,
    TRIMMED,
    hookimpl,
    open_registries,
    query_hashes_many,
    registry_version,
    search_registries,
    sha256_file,
)

ARTENGINE_HOOK_API = "1.0"

#: How a finding names a match of a whole-image query variant other than the image itself
#: (artengine.hashing.TURNED_VARIANTS and TRIMMED; STRAIGHTENED is named with its angle, by
#: _tilt_words): how the copy was turned or framed from
#: the reference (the "rotate90" variant turns the image a quarter anticlockwise, so it
#: finds copies turned clockwise).
VARIANT_NAMES = {"mirror": "mirrored", "flip": "flipped top to bottom", "rotate180": "rotated 180°",
                 "rotate90": "rotated 90° clockwise", "rotate270": "rotated 90° anticlockwise",
                 TRIMMED: "in a border"}


def _part_words(part: str) -> str:
    """How a match of a part of a reference (``ReferenceRegistry.part_correlation``'s
    name, ``"part0.8@0.25,0.5"``) names the cut."""
    scale = float(part.removeprefix("part").split("@")[0])
    return f"cut from it: about {scale * 100:.0f} % of each side"


def _how_turned_and_cut(match: Match) -> list[str]:
    """How a match's copy was turned or framed (:data:`VARIANT_NAMES`) and cut from a part
    of the reference, where it was."""
    words = [VARIANT_NAMES[match.query_variant]] if match.query_variant in VARIANT_NAMES else []
    if match.reference_variant.startswith("part"):
        words.append(_part_words(match.reference_variant))
    return words


def _tilt_words(angle: float | None) -> str:
    """How a match of the straightened variant names the turn (``hashing.tilt``'s angle,
    anticlockwise positive)."""
    if angle is None:
        return "rotated"
    return f"rotated by about {abs(angle):.0f}° {'anticlockwise' if angle > 0 else 'clockwise'}"


#: Operating point calibrated with benchmarks/bench_near_duplicate.py --sweep on one corpus
#: seed and measured on another (docs/near-duplicates.md). policies/*.toml repeat them.
DEFAULT_MAX_PHASH = 16
DEFAULT_MAX_DHASH = 12
DEFAULT_MAX_SUM = 22
DEFAULT_MAX_COLOUR = 0.08
DEFAULT_COLOUR_CONTRAST = 1.2
DEFAULT_MAX_SATURATED = 0.20
DEFAULT_CLOSE_PHASH = 2
DEFAULT_CLOSE_PHASH_MAX_DHASH = 20
DEFAULT_FLAT_MAX_SUM = 14
DEFAULT_FLAT_MAX_EQUALISED = 16
DEFAULT_FLAT_CLOSE_EQUALISED = 8
DEFAULT_LOW_DETAIL_QUALITY = 50
DEFAULT_MAX_BAND_SUM = 16
DEFAULT_BAND_MAX_IMAGE_SUM = 34
DEFAULT_MIN_CORRELATION = 0.96
#: Calibrated on the benchmark's corpus seed 1 (docs/near-duplicates.md, "Deeper crops").
DEFAULT_MIN_PART_CORRELATION = 0.97
#: :func:`classify`'s thresholds at these defaults (what the audit uses with no policy
#: settings).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "phash": DEFAULT_MAX_PHASH, "dhash": DEFAULT_MAX_DHASH, "sum": DEFAULT_MAX_SUM, "colour": DEFAULT_MAX_COLOUR,
    "saturated": DEFAULT_MAX_SATURATED, "colour_contrast": DEFAULT_COLOUR_CONTRAST,
    "close_phash": DEFAULT_CLOSE_PHASH, "close_phash_dhash": DEFAULT_CLOSE_PHASH_MAX_DHASH,
    "flat_sum": DEFAULT_FLAT_MAX_SUM, "flat_equalised": DEFAULT_FLAT_MAX_EQUALISED,
    "flat_close_equalised": DEFAULT_FLAT_CLOSE_EQUALISED, "band_sum": DEFAULT_MAX_BAND_SUM,
    "band_image_sum": DEFAULT_BAND_MAX_IMAGE_SUM, "correlation": DEFAULT_MIN_CORRELATION,
    "part_correlation": DEFAULT_MIN_PART_CORRELATION,
}


class PerceptualHashes(FeatureExtractor):
    """Every perceptual hash of each image (:func:`artengine.hashing.query_hashes`: pHash,
    dHash and equalised pHash of the image, the image turned over (mirrored, flipped,
    rotated by 90°, 180° or 270°), its top and bottom bands and the picture inside a flat
    border, plus hash quality and colour signature; one shared downscale per image)."""

    name = "hashes"
    description = ("perceptual hashes (imagehash pHash + dHash of image, mirror, flip, turns, bands and the "
                   "picture inside a border; equalised pHash) and PDQ-style quality")

    def compute(self, items: Sequence[AuditItem]) -> list[ImageHashes]:
        return query_hashes_many([item.image.rgb for item in items])


class NearDuplicateAudit(Audit):
    """Fails images that are near-copies of a reference in a registry."""

    name = "near_duplicate"
    description = ("near-copies of registered reference images (perceptual hashes; "
                   "crops, mirrored, flipped, turned and framed copies, re-encodes and colour changes included)")
    needs = frozenset({"hashes"})
    settings_schema = {
        "max_phash_distance": Setting(int, DEFAULT_MAX_PHASH,
                                      "largest pHash Hamming distance (of 64 bits) that counts as a copy"),
        "max_dhash_distance": Setting(int, DEFAULT_MAX_DHASH,
                                      "largest dHash Hamming distance (of 64 bits) that counts as a copy"),
        "max_distance_sum": Setting(int, DEFAULT_MAX_SUM,
                                    "largest pHash + dHash distance (of 128 bits) that counts as a copy"),
        "max_colour_distance": Setting(float, DEFAULT_MAX_COLOUR,
                                       "largest difference of a channel's share of the mean colour "
                                       "(0-1; 1 turns the colour check off)"),
        "max_saturated_colour_distance": Setting(float, DEFAULT_MAX_SATURATED,
                                                 "largest difference of a channel's share of the mean colour "
                                                 "of the coloured parts, each pixel weighted by its saturation "
                                                 "squared (0-1; 1 turns the check off): another colour of one "
                                                 "object on the same plain ground"),
        "colour_contrast": Setting(float, DEFAULT_COLOUR_CONTRAST,
                                   "contrast change (factor, either way) the colour comparison allows "
                                   "for: the difference from grey may be scaled by up to it (1: none)"),
        "close_phash_distance": Setting(int, DEFAULT_CLOSE_PHASH,
                                        "pHash distance within which a pair counts with a dHash distance "
                                        "up to close_phash_max_dhash_distance (clipped highlights move "
                                        "dHash, not pHash; -1 turns it off)"),
        "close_phash_max_dhash_distance": Setting(int, DEFAULT_CLOSE_PHASH_MAX_DHASH,
                                                  "largest dHash distance for a pair within "
                                                  "close_phash_distance"),
        "min_quality": Setting(int, MIN_RELIABLE_QUALITY,
                               "images below this hash quality (0-100) fail only on a match within "
                               "flat_max_distance_sum, else are 'unknown' (blocked); 0 turns the rule off"),
        "flat_max_distance_sum": Setting(int, DEFAULT_FLAT_MAX_SUM,
                                         "largest pHash + dHash distance that names a copy of an image "
                                         "below low_detail_quality"),
        "flat_max_equalised_distance": Setting(int, DEFAULT_FLAT_MAX_EQUALISED,
                                               "largest distance between the pHashes of the histogram-"
                                               "equalised images that names a copy of an image below "
                                               "low_detail_quality"),
        "flat_close_equalised_distance": Setting(int, DEFAULT_FLAT_CLOSE_EQUALISED,
                                                 "largest distance between the equalised pHashes that "
                                                 "names a copy of an image below low_detail_quality "
                                                 "at the ordinary distance bounds"),
        "low_detail_quality": Setting(int, DEFAULT_LOW_DETAIL_QUALITY,
                                      "images below this hash quality (0-100) need a match within "
                                      "flat_max_distance_sum and flat_max_equalised_distance, and are "
                                      "not matched by bands"),
        "max_band_distance_sum": Setting(int, DEFAULT_MAX_BAND_SUM,
                                         "largest pHash + dHash distance between the top (or bottom) "
                                         "bands of image and reference that counts as a copy"),
        "band_max_image_distance_sum": Setting(int, DEFAULT_BAND_MAX_IMAGE_SUM,
                                               "largest pHash + dHash distance between the whole images "
                                               "for a band match to count"),
        "min_thumbnail_correlation": Setting(float, DEFAULT_MIN_CORRELATION,
                                             "a pair within max_phash_distance (and the colour bound) that "
                                             "the other bounds refuse is a copy when the images' 16x16 "
                                             "luminance thumbnails, each without its best-fitting plane, "
                                             "correlate at least this well (brightness and contrast changes "
                                             "of smooth pictures); a flipped, turned or framed copy needs "
                                             "it too (0-1; 2 turns it off, and with it those searches)"),
        "min_part_correlation": Setting(float, DEFAULT_MIN_PART_CORRELATION,
                                        "such a pair of the image as it stands or mirrored, between an image and a "
                                        "reference both of at least low_detail_quality, is a copy when "
                                        "the image's thumbnail correlates at least this well with a part "
                                        "of the reference's (a copy with up to a quarter of each side cut "
                                        "away; 0-1, 2 turns it off)"),
        "registries": Setting(list, [], "extra registry files (relative to the policy file)"),
    }

    def __init__(self, settings: Any, context: Any) -> None:
        super().__init__(settings, context)
        where = context.policy_path or "policy"
        for key, top in (("max_phash_distance", 64), ("max_dhash_distance", 64), ("max_distance_sum", 128),
                         ("flat_max_distance_sum", 128), ("max_colour_distance", 1), ("low_detail_quality", 100),
                         ("max_saturated_colour_distance", 1),
                         ("min_quality", 100), ("flat_max_equalised_distance", 64),
                         ("flat_close_equalised_distance", 64), ("max_band_distance_sum", 128),
                         ("band_max_image_distance_sum", 128), ("close_phash_max_dhash_distance", 64)):
            if not 0 <= self.settings[key] <= top:
                raise ArtengineError(f"{where}: audits.near_duplicate.{key}: "
                                     f"must be between 0 and {top}, got {self.settings[key]}")
        if not -1 <= self.settings["close_phash_distance"] <= 64:
            raise ArtengineError(f"{where}: audits.near_duplicate.close_phash_distance: "
                                 f"must be between -1 (off) and 64, got {self.settings['close_phash_distance']}")
        for key in ("min_thumbnail_correlation", "min_part_correlation"):
            if not 0 <= self.settings[key] <= 2:
                raise ArtengineError(f"{where}: audits.near_duplicate.{key}: "
                                     f"must be between 0 and 1 (2: off), got {self.settings[key]}")
        if not 1 <= self.settings["colour_contrast"] <= 4:
            raise ArtengineError(f"{where}: audits.near_duplicate.colour_contrast: "
                                 f"must be between 1 (none) and 4, got {self.settings['colour_contrast']}")
        self.thresholds = {"phash": self.settings["max_phash_distance"],
                           "dhash": self.settings["max_dhash_distance"],
                           "sum": self.settings["max_distance_sum"],
                           "colour": self.settings["max_colour_distance"],
                           "saturated": self.settings["max_saturated_colour_distance"],
                           "colour_contrast": self.settings["colour_contrast"],
                           "close_phash": self.settings["close_phash_distance"],
                           "close_phash_dhash": self.settings["close_phash_max_dhash_distance"],
                           "flat_sum": self.settings["flat_max_distance_sum"],
                           "flat_equalised": self.settings["flat_max_equalised_distance"],
                           "flat_close_equalised": self.settings["flat_close_equalised_distance"],
                           "band_sum": self.settings["max_band_distance_sum"],
                           "band_image_sum": self.settings["band_max_image_distance_sum"],
                           "correlation": self.settings["min_thumbnail_correlation"],
                           "part_correlation": self.settings["min_part_correlation"]}
        self.paths = self._registry_paths()
        self.registries: list[Any] = []
        self.problem: str | None = None
        self.versions: dict[str, str | None] = {}
        self._named: list[tuple[str, Any]] = []
        if not self.paths:
            self.problem = ("no reference registry given (--registry, the policy's registries, "
                            "or a style's): cannot check for near-duplicates")
            return
        try:
            self.registries = open_registries(self.paths)
        except ArtengineError as exc:
            self.problem = str(exc)
            # what could and could not be opened: a resumed job audits again once it can
            self.versions = {str(Path(p).resolve()): registry_version(p) for p in self.paths}
        self._named = [(str(Path(r.path).resolve()), r) for r in self.registries]

    @classmethod
    def versions_now(cls, names: Sequence[str]) -> dict[str, str | None]:
        return {name: registry_version(name) for name in names}

    def _registry_paths(self) -> list[str]:
        base = Path(self.context.policy_path).parent if self.context.policy_path else Path.cwd()
        extra = []
        for entry in self.settings["registries"]:
            if not isinstance(entry, str):
                raise ArtengineError(f"{self.context.policy_path}: audits.near_duplicate.registries: "
                                     f"expected file paths, got {entry!r}")
            extra.append(str(entry if Path(entry).is_absolute() else base / entry))
        return [*self.context.registries, *extra]

    def check_image(self, item: AuditItem) -> Finding:
        if self.problem is not None:
            return Finding(audit=self.name, outcome="error", item=item.key, message=self.problem,
                           details={"registries": self.paths, "versions": dict(self.versions)})
        hashes: ImageHashes = item.features["hashes"]
        exact = _exact_copy(self.registries, item.image.path)
        outcome, matches = classify(hashes, self.registries, self.thresholds, self.settings["min_quality"],
                                    self.settings["low_detail_quality"])
        details: dict[str, Any] = {"quality": hashes.quality, "thresholds": self.thresholds,
                                   "registries": self.paths, "hashes": hashes.as_dict(),
                                   # the registries as searched: a job resumed after one changed audits again
                                   "versions": {path: registry.version() for path, registry in self._named}}
        if exact is not None:
            outcome, matches = "fail", [exact, *[m for m in matches if m.reference.sha256 != exact.reference.sha256]]
        if matches:
            details["match"] = matches[0].as_dict()
            details["other_matches"] = [m.as_dict() for m in matches[1:5]]
        if outcome == "fail":
            best = matches[0]
            ref = best.reference
            turned_or_cut = _how_turned_and_cut(best)
            how = ("byte-identical copy" if best.reference_variant == "file"
                   else f"near-duplicate ({_tilt_words(hashes.tilt)})" if best.query_variant == STRAIGHTENED
                   else f"near-duplicate ({', '.join(turned_or_cut)})" if turned_or_cut
                   else f"near-duplicate ({best.query_variant.removeprefix('band-')} band alike)"
                   if best.query_variant.startswith("band-") else "near-duplicate")
            return Finding(
                audit=self.name, outcome="fail", item=item.key,
                message=(f"{how} of {ref.source_path} (sha256 {ref.sha256[:12]}, licence: "
                         f"{ref.licence or 'not recorded'}; pHash distance {best.distances['phash']}, "
                         f"dHash {best.distances['dhash']}, colour {best.colour_distance:.3f}"
                         + (f" (coloured parts {best.saturated_distance:.3f})"
                            if best.saturated_distance is not None else "")
                         + (f", thumbnail correlation {best.correlation:.3f}" if best.correlation is not None else "")
                         + ")"),
                details=details, attachments={"reference": ref.thumbnail_uri()})
        if outcome == "unknown":
            seen = f"; closest candidate {matches[0].reference.source_path}" if matches else ""
            return Finding(
                audit=self.name, outcome="unknown", item=item.key,
                message=(f"too little detail for a reliable perceptual hash (quality {hashes.quality} "
                         f"< {self.settings['min_quality']}) and no reference within pHash + dHash "
                         f"{self.thresholds['flat_sum']}: a near-copy can be neither confirmed nor "
                         f"ruled out{seen}"),
                details=details)
        close = (f" (or pHash {self.thresholds['close_phash']} with dHash {self.thresholds['close_phash_dhash']})"
                 if self.thresholds["close_phash"] >= 0 else "")
        return Finding(audit=self.name, outcome="pass", item=item.key,
                       message=f"no reference within pHash {self.thresholds['phash']} / "
                               f"dHash {self.thresholds['dhash']} / sum {self.thresholds['sum']}{close} and colour "
                               f"{self.thresholds['colour']:g} in {len(self.registries)} registr"
                               f"{'y' if len(self.registries) == 1 else 'ies'}",
                       details=details)


def classify(hashes: ImageHashes, registries: Sequence[ReferenceRegistry], thresholds: dict[str, float],
             min_quality: int, low_detail_quality: int = DEFAULT_LOW_DETAIL_QUALITY) -> tuple[str, list[Match]]:
    """The audit's decision from an image's hashes: ``("fail" | "unknown" | "pass",
    matches)``.

    ``thresholds`` holds ``phash``, ``dhash``, ``sum`` and ``colour``, optionally
    ``correlation``, ``band_sum`` and ``band_image_sum`` (see :meth:`ReferenceRegistry.search`; bands count
    only from ``low_detail_quality`` up), and ``flat_sum``, ``flat_equalised`` and
    ``flat_close_equalised``. A hash of quality below ``low_detail_quality`` is weaker
    evidence (smooth pictures resemble each other): a match (whole image or band) where the
    image or the reference is that flat names a copy only within ``flat_sum`` (pHash + dHash) with
    equalised pHashes within ``flat_equalised`` too, or with equalised pHashes within
    ``flat_close_equalised``, or (whole-image pairs within the pHash bound) with luminance
    thumbnails correlating within ``correlation``. Below
    ``min_quality`` the hash cannot rule a copy out either: without such a match the image
    is ``unknown``, never ``pass``.
    """
    search = {k: v for k, v in thresholds.items() if not k.startswith("flat_")}
    search["band_min_quality"] = low_detail_quality
    search["part_min_quality"] = low_detail_quality
    weak = max(min_quality, low_detail_quality)

    def names_a_copy(m: Match) -> bool:
        if min(hashes.quality, m.reference.quality) >= weak:
            return True  # a band match too: the image's bands count only from low_detail_quality up
        return ((sum(m.distances.values()) <= thresholds.get("flat_sum", -1)
                 and m.equalised_distance <= thresholds.get("flat_equalised", 64))
                or m.equalised_distance <= thresholds.get("flat_close_equalised", -1)
                or (m.correlation is not None and m.correlation >= thresholds.get("correlation", 2)))

    # Every variant pair of a reference is judged, not only its closest one: a crop whose
    # plain hashes are closest may fail the low-detail test while the full image passes.
    close = search_registries(registries, hashes, search, names_a_copy)
    if close:
        return "fail", close
    if hashes.quality < min_quality:
        return "unknown", search_registries(registries, hashes, search)
    return "pass", []


def _exact_copy(registries: Sequence[ReferenceRegistry], path: str) -> Match | None:
    """A reference whose file is byte-identical to the image's file, if any."""
    try:
        digest = sha256_file(path)
    except OSError:
        return None  # not a file (bytes in memory): the perceptual hashes decide
    for registry in registries:
        ref = registry.find_sha256(digest)
        if ref is not None:
            return Match(str(registry.path), ref, {"phash": 0, "dhash": 0}, "full", "file", 0.0)
    return None


@hookimpl
def artengine_feature_extractors() -> list[type[FeatureExtractor]]:
    return [PerceptualHashes]


@hookimpl
def artengine_audits() -> list[type[Audit]]:
    return [NearDuplicateAudit]
