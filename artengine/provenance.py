"""Provenance: keys, signed manifests, where they are stored, the ledger, and verification.

Every published image carries two kinds of evidence, bound together by the watermark payload:

* an invisible **watermark** (a :class:`artengine.Watermark` scheme, keyed with the
  watermark key) whose payload survives re-encoding, resizing and cropping;
* a **manifest**: a JSON document saying what made the image (engine and plugin versions,
  model or style and its weights hash, seed, label / style / reference, audit verdicts,
  time), the sha256 of its final pixels and the watermark payload, signed with Ed25519.
  It is embedded in the PNG (an iTXt chunk named :data:`MANIFEST_KEY`), written beside the
  image as a sidecar (``NAME.manifest.json``) and recorded in the **ledger**, an SQLite
  database keyed by the payload. When metadata is stripped, the mark still leads to the
  ledger record.

Determinism: nothing here reads the clock or draws random numbers except :func:`init_keys`
and :func:`utc_now`. Manifests take the payload and the time as arguments, JSON is
canonical (sorted keys, no whitespace) and Ed25519 signatures are deterministic, so the same
inputs always give byte-identical files (the batch pipeline relies on this to resume).

Pixel hash: :func:`pixels_sha256` hashes decoded pixels, not file bytes, so lossless
re-encoding keeps it: ``sha256(b"artengine-pixels-v1\\n" + b"MODE WIDTH HEIGHT\\n" + raw)``
where MODE is ``RGB``, or ``RGBA`` when the image has an alpha channel, and raw is the
row-major 8-bit samples after EXIF orientation (the pixels :func:`artengine.open_image`
returns).
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
import numpy as np
from PIL import Image

from .errors import ArtengineError, ImageLoadError, InputError
from .io import LoadedImage, atomic_save_image, atomic_write_bytes, decode_png_up, open_image, restore_alpha, to_rgb
from .watermark import Watermark, WatermarkReading

MANIFEST_KEY = "artengine.manifest"  # PNG iTXt keyword
MANIFEST_FORMAT = "artengine-manifest/1"
SIDECAR_SUFFIX = ".manifest.json"
PIXELS_HASH = "artengine-pixels-v1"

KEYS_ENV = "ARTENGINE_KEYS"
LEDGER_ENV = "ARTENGINE_LEDGER"
SIGNING_KEY_FILE = "signing.key"  # Ed25519 private key, PEM (PKCS#8), mode 0600
PUBLIC_KEY_FILE = "signing.pub"  # its public key, PEM
WATERMARK_KEY_FILE = "watermark.key"  # 32 random bytes as hex, mode 0600
TRUSTED_DIR = "trusted"  # other studios' public keys (*.pub) whose manifests are accepted

#: Verification statuses, best first.
STATUSES = ("verified", "watermark-only", "tampered", "unknown")


class ProvenanceError(ArtengineError):
    """A provenance step could not be completed (payload collision, a mark or manifest
    that did not survive the save, a corrupt ledger)."""


# ----------------------------------------------------------------------------- keys


def default_keys_dir() -> Path:
    """``$ARTENGINE_KEYS``, else ``$XDG_CONFIG_HOME/artengine/keys``, else
    ``~/.config/artengine/keys``."""
    if os.environ.get(KEYS_ENV):
        return Path(os.environ[KEYS_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "artengine" / "keys"


def default_ledger_path() -> Path:
    """``$ARTENGINE_LEDGER``, else ``$XDG_DATA_HOME/artengine/ledger.sqlite``, else
    ``~/.local/share/artengine/ledger.sqlite``."""
    if os.environ.get(LEDGER_ENV):
        return Path(os.environ[LEDGER_ENV])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "artengine" / "ledger.sqlite"


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key: the first 16 hex digits of sha256(raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Keys:
    """The keys a provenance step needs; any part may be absent (see :func:`load_keys`)."""

    source: str  # the folder or file they came from, for messages
    signing_key: Ed25519PrivateKey | None = None
    public_key: Ed25519PublicKey | None = None
    watermark_key: bytes | None = None
    #: key id -> public key whose signatures are accepted (our own and trusted/*.pub)
    trusted: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)

    @property
    def key_id(self) -> str | None:
        return key_id(self.public_key) if self.public_key is not None else None

    def require_signing(self) -> Ed25519PrivateKey:
        if self.signing_key is None:
            raise InputError(f"{self.source}: no signing key ({SIGNING_KEY_FILE}); "
                             "create one with `artengine keys init`")
        return self.signing_key

    def require_watermark(self) -> bytes:
        if self.watermark_key is None:
            raise InputError(f"{self.source}: no watermark key ({WATERMARK_KEY_FILE}); "
                             "create one with `artengine keys init`")
        return self.watermark_key


def init_keys(folder: str | os.PathLike[str] | None = None, *, force: bool = False) -> Keys:
    """Create a signing key pair and a watermark key in ``folder`` (default:
    :func:`default_keys_dir`). Private files are created with mode 0600 in a 0700 folder.
    Existing keys are never overwritten unless ``force`` (losing a key orphans every image
    signed or marked with it)."""
    target = Path(folder) if folder is not None else default_keys_dir()
    files = [target / SIGNING_KEY_FILE, target / PUBLIC_KEY_FILE, target / WATERMARK_KEY_FILE]
    existing = [f for f in files if f.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]}: keys already exist; refusing to overwrite them "
                         "(use --force to replace them, which orphans images signed with the old keys)")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    signing = Ed25519PrivateKey.generate()
    private_pem = signing.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = signing.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_private(target / SIGNING_KEY_FILE, private_pem)
    _write_private(target / WATERMARK_KEY_FILE, (secrets.token_hex(32) + "\n").encode())
    atomic_write_bytes(target / PUBLIC_KEY_FILE, public_pem)
    return load_keys(target)


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file that is never readable by others, not even for an instant."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.artengine-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_keys(path: str | os.PathLike[str] | None = None) -> Keys:
    """Keys from a folder (``signing.key``, ``signing.pub``, ``watermark.key``,
    ``trusted/*.pub``; missing files are simply absent) or from one file: a watermark key
    (hex), a PEM private key or a PEM public key. ``None`` means :func:`default_keys_dir`.
    Unreadable or malformed key files, and private files readable by others, are errors."""
    source = Path(path) if path is not None else default_keys_dir()
    if source.is_file():
        return _keys_from_file(source)
    if not source.exists():
        if path is None:
            return Keys(source=str(source))
        raise InputError(f"{source}: no such key file or keys folder")
    signing = public = None
    watermark = None
    if (source / SIGNING_KEY_FILE).exists():
        signing = _read_private_key(source / SIGNING_KEY_FILE)
        public = signing.public_key()
    elif (source / PUBLIC_KEY_FILE).exists():
        public = _read_public_key(source / PUBLIC_KEY_FILE)
    if (source / WATERMARK_KEY_FILE).exists():
        watermark = _read_watermark_key(source / WATERMARK_KEY_FILE)
    trusted: dict[str, Ed25519PublicKey] = {}
    if public is not None:
        trusted[key_id(public)] = public
    folder = source / TRUSTED_DIR
    if folder.is_dir():
        for pub in sorted(folder.glob("*.pub")):
            other = _read_public_key(pub)
            trusted[key_id(other)] = other
    return Keys(str(source), signing, public, watermark, trusted)


def _keys_from_file(path: Path) -> Keys:
    head = _read_secret(path, check_mode=False)[:64]
    if b"PRIVATE KEY" in head:
        signing = _read_private_key(path)
        return Keys(str(path), signing, signing.public_key(), None,
                    {key_id(signing.public_key()): signing.public_key()})
    if b"PUBLIC KEY" in head:
        public = _read_public_key(path)
        return Keys(str(path), None, public, None, {key_id(public): public})
    return Keys(str(path), watermark_key=_read_watermark_key(path))


def _read_secret(path: Path, *, check_mode: bool = True) -> bytes:
    try:
        if check_mode and os.name == "posix":
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise InputError(f"{path}: permissions {mode:04o} are too open for a secret key; "
                                 f"run `chmod 600 {path}`")
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read key: {exc.strerror or exc}") from None


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read_secret(path), password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: not an Ed25519 private key")
    return key


def _read_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read_secret(path, check_mode=False))
    except ValueError as exc:
        raise InputError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: not an Ed25519 public key")
    return key


def _read_watermark_key(path: Path) -> bytes:
    text = _read_secret(path).decode("ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise InputError(f"{path}: a watermark key file holds hex digits only") from None
    if len(key) < 16:
        raise InputError(f"{path}: watermark key is {len(key)} bytes; at least 16 are needed")
    return key


# ----------------------------------------------------------------------------- payloads


def job_secret(watermark_key: bytes, job_id: str) -> bytes:
    """A per-job secret derived from the watermark key, so a job folder needs to store
    nothing secret to re-derive its payloads after a crash."""
    return hmac.new(watermark_key, b"artengine job v1\0" + job_id.encode("utf-8"), hashlib.sha256).digest()


def derive_payload(secret: bytes, index: int, *, size: int = 6, attempt: int = 0) -> bytes:
    """The watermark payload of image ``index`` of a job: HMAC-SHA256(secret, index),
    truncated to ``size`` bytes. Deterministic (resume gives the same payload), distinct
    per index with overwhelming probability, unpredictable without the secret. On the rare
    ledger collision (48 bits: about 1 in 10^6 for a 2,000-image batch against a ledger of
    10^5), derive again with ``attempt + 1``."""
    if index < 0:
        raise ValueError("index must be non-negative")
    message = b"artengine payload v1\0" + index.to_bytes(8, "big") + attempt.to_bytes(2, "big")
    return hmac.new(secret, message, hashlib.sha256).digest()[:size]


def parse_payload(text: str, size: int = 6) -> bytes:
    """A payload given as hex on the command line."""
    cleaned = text.strip().lower().removeprefix("0x")
    try:
        value = bytes.fromhex(cleaned)
    except ValueError:
        raise InputError(f"--payload {text}: not hexadecimal") from None
    if len(value) != size:
        raise InputError(f"--payload {text}: must be {size} bytes ({2 * size} hex digits), got {len(value)}")
    return value


# ----------------------------------------------------------------------------- manifests


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string (seconds), for callers that are not
    part of a resumable job."""
    return format_time(_dt.datetime.now(_dt.timezone.utc))


def format_time(value: _dt.datetime | str) -> str:
    """A manifest time: ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, whole seconds). Accepts an aware
    datetime or an ISO 8601 string with a zone; a batch passes its job's start time, so
    every image of the job, resumed or not, carries the same bytes. Raises
    :class:`InputError` for a naive or malformed time."""
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"manifest time {value!r}: not an ISO 8601 time") from None
    elif isinstance(value, _dt.datetime):
        parsed = value
    else:
        raise InputError(f"manifest time {value!r}: expected a datetime or an ISO 8601 string")
    if parsed.tzinfo is None:
        raise InputError(f"manifest time {value!r}: has no time zone (give UTC, e.g. 2026-01-02T03:04:05Z)")
    utc = parsed.astimezone(_dt.timezone.utc).replace(microsecond=0)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def pixels_sha256(image: Image.Image | LoadedImage | np.ndarray) -> str:
    """sha256 of decoded pixels (see the module docstring for the exact definition).
    An array is ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA) uint8."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            # The same bytes as the image's, hashed where they lie (no copy into an image).
            height, width = image.shape[:2]
            digest = hashlib.sha256(f"{PIXELS_HASH}\nRGB {width} {height}\n".encode())
            digest.update(np.ascontiguousarray(image))
            return digest.hexdigest()
        image = _image_from_array(image)
    if isinstance(image, LoadedImage):
        rgb, alpha = image.rgb, image.alpha
    else:
        rgb, alpha = to_rgb(image)
    if alpha is not None:
        pixels = rgb.convert("RGB").copy()
        pixels.putalpha(alpha)
        mode = "RGBA"
    else:
        pixels, mode = rgb.convert("RGB"), "RGB"
    digest = hashlib.sha256(f"{PIXELS_HASH}\n{mode} {pixels.width} {pixels.height}\n".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


def _image_from_array(pixels: np.ndarray) -> Image.Image:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise InputError(f"pixels must be an (H, W, 3) or (H, W, 4) uint8 array, got {pixels.shape} {pixels.dtype}")
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB" if pixels.shape[2] == 3 else "RGBA")


def canonical_json(value: Any) -> bytes:
    """The bytes that are signed: UTF-8 JSON, keys sorted, no whitespace, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def build_manifest(
    *,
    payload: bytes,
    created: str | _dt.datetime,
    pixels: str,
    size: tuple[int, int],
    scheme: str,
    scheme_version: int,
    engine: Mapping[str, Any],
    plugins: Mapping[str, Any],
    model: Mapping[str, Any] | None = None,
    seed: int | None = None,
    label: str | None = None,
    style: str | None = None,
    reference: str | None = None,
    audits: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The unsigned manifest of one image. Pure: every value is an argument.

    ``pixels`` is :func:`pixels_sha256` of the final (marked) pixels, ``size`` their
    (width, height), ``created`` the time (see :func:`format_time`). ``model`` describes the model or style
    (e.g. ``{"name": ..., "architecture": ..., "weights_sha256": ...}``); ``audits`` maps
    audit names to verdicts; ``extra`` holds anything else a caller wants signed.
    """
    doc: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "created": format_time(created),
        "engine": dict(engine),
        "plugins": dict(plugins),
        "generation": {"model": dict(model) if model else None, "seed": seed, "label": label,
                       "style": style, "reference": reference},
        "image": {"pixels_sha256": pixels, "pixels_hash": PIXELS_HASH, "width": size[0], "height": size[1]},
        "watermark": {"scheme": scheme, "version": scheme_version, "payload": payload.hex()},
        "audits": dict(audits) if audits else {},
    }
    if extra:
        doc["extra"] = dict(extra)
    canonical_json(doc)  # fail now, not at signing time, on values JSON cannot carry
    return doc


def sign_manifest(manifest: Mapping[str, Any], signing_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return ``manifest`` with a ``signature`` block: Ed25519 over the canonical JSON of
    everything else."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    public = signing_key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = signing_key.sign(canonical_json(body))
    return {**body, "signature": {"algorithm": "Ed25519", "key_id": key_id(public),
                                  "public_key": base64.b64encode(raw).decode(),
                                  "value": base64.b64encode(signature).decode()}}


def check_signature(manifest: Any, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """``"valid"``, ``"invalid"`` (altered or forged), ``"untrusted-key"`` (signed by a
    key not in ``trusted``) or ``"malformed"``. Only trusted keys are used: the public
    key embedded in the manifest is informative, never trusted."""
    if not isinstance(manifest, Mapping) or not isinstance(manifest.get("signature"), Mapping):
        return "malformed"
    sig = manifest["signature"]
    if sig.get("algorithm") != "Ed25519" or not isinstance(sig.get("value"), str):
        return "malformed"
    public = trusted.get(str(sig.get("key_id")))
    if public is None:
        return "untrusted-key"
    try:
        value = base64.b64decode(sig["value"], validate=True)
        body = {k: v for k, v in manifest.items() if k != "signature"}
        public.verify(value, canonical_json(body))
    except (InvalidSignature, ValueError, TypeError):
        return "invalid"
    return "valid"


def sidecar_path(image_path: str | os.PathLike[str]) -> Path:
    """Where the sidecar manifest of an image lives: ``NAME.EXT.manifest.json``."""
    path = Path(image_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


# ----------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class LedgerRecord:
    """One ledger row: the signed manifest of the image marked with ``payload``."""

    payload: str
    manifest: dict[str, Any]
    image: str | None


class Ledger:
    """The provenance ledger: SQLite (WAL, synchronous=FULL), one row per payload.

    Recording is idempotent, so a resumed batch can record the same image again. The
    same image (pixels and signing key) signed again with a new manifest, as when it is
    audited again against a grown registry, replaces its record: the ledger gives an
    image's latest manifest. Another image under a payload already taken raises
    :class:`ProvenanceError`.
    One instance may be used from several threads (calls are serialised); processes
    share the file through SQLite's own locking.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise InputError(f"{self.path}: no such ledger")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS manifests ("
                " payload TEXT PRIMARY KEY, pixels_sha256 TEXT NOT NULL, key_id TEXT NOT NULL,"
                " created TEXT NOT NULL, scheme TEXT NOT NULL, image TEXT, manifest TEXT NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: not a usable ledger database ({exc})") from None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def record(self, manifest: Mapping[str, Any], image: str | None = None) -> None:
        """Store a signed manifest under its watermark payload."""
        self.record_many([(manifest, image)])

    def record_many(self, entries: Sequence[tuple[Mapping[str, Any], str | None]]) -> None:
        """Store several ``(manifest, image)`` pairs in one transaction (one sync)."""
        rows = [(canonical_json(m).decode("utf-8"), m, image) for m, image in entries]
        if not rows:
            return
        clash = None
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for text, manifest, image in rows:
                        payload = manifest["watermark"]["payload"]
                        fields = (manifest["image"]["pixels_sha256"], manifest["signature"]["key_id"],
                                  manifest["created"], manifest["watermark"]["scheme"], image, text)
                        row = self._db.execute("SELECT manifest, pixels_sha256, key_id FROM manifests "
                                               "WHERE payload = ?", (payload,)).fetchone()
                        if row is None:
                            self._db.execute(
                                "INSERT INTO manifests (pixels_sha256, key_id, created, scheme, image, manifest,"
                                " payload) VALUES (?, ?, ?, ?, ?, ?, ?)", (*fields, payload))
                        elif row[0] == text:
                            continue
                        elif tuple(row[1:]) == fields[:2]:  # the same image signed again (audited again)
                            self._db.execute(
                                "UPDATE manifests SET pixels_sha256 = ?, key_id = ?, created = ?, scheme = ?,"
                                " image = ?, manifest = ? WHERE payload = ?", (*fields, payload))
                        else:
                            clash = payload
                            break
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("ROLLBACK" if clash else "COMMIT")
        except sqlite3.DatabaseError as exc:
            raise ProvenanceError(f"{self.path}: ledger write failed: {exc}") from None
        if clash:
            raise ProvenanceError(f"{self.path}: payload {clash} is already recorded for another "
                                  "image; derive the next payload (attempt + 1)")

    def lookup(self, payload: bytes | str) -> LedgerRecord | None:
        """The record of a payload, or None."""
        key = payload.hex() if isinstance(payload, (bytes, bytearray)) else str(payload)
        try:
            with self._lock:
                row = self._db.execute("SELECT manifest, image FROM manifests WHERE payload = ?",
                                       (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise ProvenanceError(f"{self.path}: ledger read failed: {exc}") from None
        if row is None:
            return None
        return LedgerRecord(payload=key, manifest=json.loads(row[0]), image=row[1])

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM manifests").fetchone()[0]


# ----------------------------------------------------------------------------- stamping


@dataclass(frozen=True)
class Stamped:
    """A marked image and its signed manifest, ready to be written."""

    image: Image.Image
    manifest: dict[str, Any]

    @property
    def text(self) -> dict[str, str]:
        """PNG text chunks carrying the manifest."""
        return {MANIFEST_KEY: canonical_json(self.manifest).decode("utf-8")}


def watermark_scheme(key: bytes, name: str = "stdm", plugins: Any = None) -> Watermark:
    """The registered watermark scheme ``name`` bound to ``key`` (from
    :attr:`Keys.watermark_key`). ``plugins`` is a :class:`artengine.Plugins` (default:
    :func:`artengine.get_plugins`); an unknown name raises :class:`PluginError`."""
    if plugins is None:
        from .plugins import get_plugins

        plugins = get_plugins()
    return plugins.component("watermarks", name)(key)


def sign_marked(marked: Image.Image | np.ndarray, *, scheme: Watermark, signing_key: Ed25519PrivateKey,
                payload: bytes | str, created: str | _dt.datetime, engine: Mapping[str, Any],
                plugins: Mapping[str, Any], **fields: Any) -> Stamped:
    """Build and sign the manifest of pixels already marked with ``payload`` (so audits
    can run on the final pixels first and their verdicts go in ``audits``). ``marked`` is
    an image or an ``(H, W, 3|4)`` uint8 array; ``fields`` go to :func:`build_manifest`
    (model, seed, label, style, reference, audits, extra). Pure and deterministic."""
    image = _image_from_array(marked) if isinstance(marked, np.ndarray) else marked
    value = scheme.payload_from(payload)
    manifest = build_manifest(payload=value, created=created, pixels=pixels_sha256(image),
                              size=image.size, scheme=scheme.name, scheme_version=scheme.version,
                              engine=engine, plugins=plugins, **fields)
    return Stamped(image, sign_manifest(manifest, signing_key))


def stamp(image: Image.Image | np.ndarray, *, scheme: Watermark, signing_key: Ed25519PrivateKey,
          payload: bytes | str, created: str | _dt.datetime, engine: Mapping[str, Any],
          plugins: Mapping[str, Any], **fields: Any) -> Stamped:
    """Mark ``image`` (an image, or ``(H, W, 3)`` uint8 pixels) with ``payload`` (bytes
    or hex) and sign its manifest: :meth:`Watermark.embed` then :func:`sign_marked`."""
    if isinstance(image, np.ndarray):
        marked: Image.Image | np.ndarray = scheme.embed_array(image, payload)
    else:
        marked = scheme.embed(image, payload)
    return sign_marked(marked, scheme=scheme, signing_key=signing_key, payload=payload, created=created,
                       engine=engine, plugins=plugins, **fields)


def write_stamped(path: str | os.PathLike[str], stamped: Stamped, *, scheme: Watermark,
                  ledger: Ledger | None = None, sidecar: bool = True, compress_level: int = 6) -> Path:
    """Write the image (PNG with the manifest in iTXt) atomically, re-read it and check
    that mark and manifest survived the save (:func:`check_written`), then write the
    sidecar and record the manifest in the ledger. Re-running with the same inputs
    rewrites identical bytes and records nothing new (resume)."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise InputError(f"{target}: a stamped image must be a PNG (the manifest lives in its iTXt chunk)")
    atomic_save_image(target, stamped.image, text=stamped.text, compress_level=compress_level)
    check_written(target, stamped.manifest, scheme=scheme)  # before anything vouches for the file
    if sidecar:
        atomic_write_bytes(sidecar_path(target), json.dumps(stamped.manifest, indent=2, sort_keys=True,
                                                            ensure_ascii=False).encode("utf-8") + b"\n")
    if ledger is not None:
        ledger.record(stamped.manifest, image=target.name)
    return target


def check_written(path: str | os.PathLike[str], manifest: Mapping[str, Any], *, scheme: Watermark) -> None:
    """Re-read a written image: its embedded manifest must equal ``manifest``, its pixels
    must hash to the manifest's value and the mark must read back the manifest's payload.
    Raises :class:`ProvenanceError` naming what did not survive."""
    _check_loaded(open_image(path), manifest, scheme=scheme, name=str(path))


def check_encoded(data: bytes, manifest: Mapping[str, Any], *, scheme: Watermark, name: str,
                  pixels: np.ndarray | None = None) -> None:
    """:func:`check_written` on an encoded file's bytes, before they are written: a writer
    that stores exactly these bytes and reads them back equal has a file that passes
    :func:`check_written`. ``name`` is used in messages.

    ``pixels``: the ``(H, W, 3)`` uint8 pixels whose :func:`pixels_sha256` the manifest
    holds, where the caller has them (it hashed them to build the manifest). The decoded
    pixels are then compared with them, which proves the same as hashing the decoded
    pixels again, for a tenth of the time.

    The bytes of an RGB PNG as a job encodes them are read with :func:`decode_png_up`
    (ISA-L's inflate; the same pixels and text as Pillow's decode, in half the time);
    any other file with :func:`open_image`."""
    own = decode_png_up(data)
    if own is None:
        _check_loaded(open_image(data, name=name), manifest, scheme=scheme, name=name, pixels=pixels)
        return
    rgb, text = own
    _check_read(text, rgb, manifest, scheme=scheme, name=name, pixels=pixels)


def _check_loaded(loaded: LoadedImage, manifest: Mapping[str, Any], *, scheme: Watermark, name: str,
                  pixels: np.ndarray | None = None) -> None:
    _check_read(loaded.text, loaded, manifest, scheme=scheme, name=name, pixels=pixels)


def _check_read(text: Mapping[str, str], read: np.ndarray | LoadedImage, manifest: Mapping[str, Any], *,
                scheme: Watermark, name: str, pixels: np.ndarray | None) -> None:
    """The checks of :func:`check_written` on what was read: its ``text`` and its pixels,
    ``read`` (RGB pixels, or a loaded image, which may have transparency)."""
    rgb = read if isinstance(read, np.ndarray) else np.asarray(read.rgb) if read.alpha is None else None
    embedded = text.get(MANIFEST_KEY)
    if embedded is None or embedded != canonical_json(manifest).decode("utf-8"):
        raise ProvenanceError(f"{name}: the manifest did not survive the save")
    if pixels is not None:
        same = rgb is not None and np.array_equal(rgb, pixels)
    else:
        same = pixels_sha256(read) == manifest["image"]["pixels_sha256"]
    if not same:
        raise ProvenanceError(f"{name}: the saved pixels differ from the signed ones")
    reading = scheme.detect(read.rgb, search=False) if rgb is None else scheme.detect_array(rgb, search=False)
    if not reading.detected or reading.payload_hex != manifest["watermark"]["payload"]:
        raise ProvenanceError(f"{name}: the watermark did not survive the save ({reading.reason or 'wrong payload'})")


def watermark_file(source: str | os.PathLike[str], target: str | os.PathLike[str], *, scheme: Watermark,
                   payload: bytes) -> float:
    """Mark an image file (alpha kept) and write it atomically; returns the PSNR in dB."""
    loaded = open_image(source)
    original = restore_alpha(loaded.rgb, loaded.alpha)
    try:
        marked = scheme.embed(original, payload)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    atomic_save_image(target, marked if Path(target).suffix.lower() in (".png", ".webp") else marked.convert("RGB"))
    return psnr(loaded.rgb, marked.convert("RGB"))


def sign_file(source: str | os.PathLike[str], target: str | os.PathLike[str], *, scheme: Watermark,
              signing_key: Ed25519PrivateKey, ledger: Ledger | None, payload: bytes, created: str,
              engine: Mapping[str, Any], plugins: Mapping[str, Any], **fields: Any) -> Stamped:
    """Mark, sign and record an existing image file: :func:`stamp` then :func:`write_stamped`."""
    loaded = open_image(source)
    try:
        stamped = stamp(restore_alpha(loaded.rgb, loaded.alpha), scheme=scheme, signing_key=signing_key,
                        payload=payload, created=created, engine=engine, plugins=plugins, **fields)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    write_stamped(target, stamped, scheme=scheme, ledger=ledger)
    return stamped


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio between two same-size RGB images, in dB."""
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# ----------------------------------------------------------------------------- verification


@dataclass
class Verification:
    """What :func:`verify_image` concluded about one image.

    ``status``: ``verified`` (trusted signature, pixels match, mark agrees),
    ``watermark-only`` (no manifest in or beside the file, but the mark leads to a trusted
    ledger record), ``tampered`` (pixels or manifest changed after signing) or ``unknown``
    (nothing trustworthy found). ``code`` is the precise reason, for programs: verified,
    metadata-stripped, pixels-edited, manifest-invalid, mark-mismatch, untrusted-key,
    mark-unreadable, low-confidence, no-ledger-record, ledger-invalid, no-provenance,
    unreadable-image, audited-again (verified, but the ledger holds a later manifest of
    the image in which an audit blocks it: not to be published) and audit-blocked
    (verified, but the image's manifest records a verdict that blocked it: the gate
    quarantined it; not to be published).
    """

    path: str
    status: str
    code: str
    message: str
    manifest: dict[str, Any] | None = None
    manifest_source: str | None = None  # png | sidecar | given | ledger
    signature: str | None = None
    pixels_match: bool | None = None
    reading: WatermarkReading | None = None
    #: The ledger's later manifest of this image, when it was audited again since it was
    #: signed with other verdicts (code ``audited-again`` when one of them blocks).
    later_manifest: dict[str, Any] | None = None

    @property
    def verified(self) -> bool:
        """Trusted provenance, and no audit verdict of the image (its own manifest's, or a
        later one's in the ledger) keeps it from publication."""
        return self.status == "verified" and self.code == "verified"

    @property
    def blocking(self) -> dict[str, str]:
        """The audit verdicts that keep this image from publication, from the trusted
        manifest that speaks for it (the ledger's later one, else its own; the ledger's
        record for a watermark-only copy); empty when none does or nothing is trusted."""
        if self.status not in ("verified", "watermark-only"):
            return {}
        return blocking_verdicts(self.later_manifest or self.manifest)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "code": self.code, "message": self.message,
                "manifest_source": self.manifest_source, "signature": self.signature,
                "pixels_match": self.pixels_match,
                "watermark": self.reading.as_dict() if self.reading is not None else None,
                "manifest": self.manifest, "later_manifest": self.later_manifest, "blocking": self.blocking}


def find_manifest(image: LoadedImage) -> tuple[Any, str] | None:
    """The manifest embedded in the PNG, else its sidecar; ``(document, source)``. A
    manifest that is not valid JSON is returned as its raw text, to be judged tampered."""
    text = image.text.get(MANIFEST_KEY)
    source = "png"
    if text is None:
        side = sidecar_path(image.path)
        if not side.is_file():
            return None
        try:
            text = side.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return "", "sidecar"
        source = "sidecar"
    try:
        return json.loads(text), source
    except json.JSONDecodeError:
        return text, source


def verify_image(
    image: str | os.PathLike[str] | LoadedImage,
    *,
    keys: Keys,
    schemes: Mapping[str, type[Watermark]],
    ledger: Ledger | None = None,
    manifest: Mapping[str, Any] | None = None,
    min_confidence: float = 0.3,
    search: bool = True,
) -> Verification:
    """Check one image's provenance. Never raises on foreign or damaged input: anything
    that cannot be trusted is ``tampered`` or ``unknown``, with the reason.

    ``schemes`` are the registered watermark classes by name; ``manifest`` overrides the
    embedded/sidecar lookup (a pipeline that already holds it).
    """
    try:
        loaded = image if isinstance(image, LoadedImage) else open_image(image)
    except ImageLoadError as exc:
        return Verification(str(image), "unknown", "unreadable-image", exc.reason)
    path = loaded.path
    found = (dict(manifest), "given") if manifest is not None else find_manifest(loaded)
    wm_key = keys.watermark_key

    def read(scheme_name: str | None) -> WatermarkReading | None:
        names = [scheme_name] if scheme_name in schemes else list(schemes)
        if wm_key is None or not names:
            return None
        best = None
        for name in names:
            reading = schemes[name](wm_key).detect(loaded.rgb, search=search)
            if reading.detected:
                return reading
            best = best or reading
        return best

    if found is not None:
        doc, source = found
        signature = check_signature(doc, keys.trusted)
        if signature in ("invalid", "malformed"):
            return Verification(path, "tampered", "manifest-invalid",
                                f"the {source} manifest fails its signature check ({signature})",
                                doc if isinstance(doc, dict) else None, source, signature)
        if signature == "untrusted-key":
            return Verification(path, "unknown", "untrusted-key",
                                f"signed by key {doc['signature'].get('key_id')}, which is not trusted here",
                                doc, source, signature)
        pixels_match = pixels_sha256(loaded) == _field(doc, "image", "pixels_sha256")
        if not pixels_match:
            return Verification(path, "tampered", "pixels-edited",
                                "pixels differ from the signed manifest (edited or re-encoded after signing)",
                                doc, source, signature, False, read(_field(doc, "watermark", "scheme")))
        reading = read(_field(doc, "watermark", "scheme"))
        expected = _field(doc, "watermark", "payload")
        if reading is None or not reading.detected:
            why = "no watermark key here" if wm_key is None else "the mark is not readable with this watermark key"
            return Verification(path, "unknown", "mark-unreadable",
                                f"signature and pixels check out, but {why}", doc, source, signature, True, reading)
        if reading.payload_hex != expected:
            return Verification(path, "tampered", "mark-mismatch",
                                f"the mark carries {reading.payload_hex}, the manifest says {expected}",
                                doc, source, signature, True, reading)
        message = f"signature valid (key {doc['signature']['key_id']}), pixels match, mark {expected} agrees"
        later = _audited_again(ledger, doc, keys) if ledger is not None else None
        changed = {} if later is None else {name: verdict for name, verdict in sorted(later["audits"].items())
                                            if _audits(doc).get(name) != verdict}
        if changed:
            message += "; audited again since, the ledger's manifest of this image says: " + _listed(changed)
        code = "verified"
        if any(verdict in BLOCKING_VERDICTS for verdict in changed.values()):
            code = "audited-again"
        elif blocking_verdicts(later or doc):
            code = "audit-blocked"
            message += _blocked_note(later or doc)
        if code != "verified":
            message += " (not to be published)"
        return Verification(path, "verified", code, message, doc, source, signature, True, reading,
                            later_manifest=later)

    reading = read(None)
    if reading is None:
        return Verification(path, "unknown", "no-provenance",
                            "no manifest, and no watermark key to look for a mark")
    if not reading.detected:
        return Verification(path, "unknown", "no-provenance",
                            f"no manifest and no readable mark ({reading.reason})", reading=reading)
    if reading.confidence < min_confidence:
        return Verification(path, "unknown", "low-confidence",
                            f"mark {reading.payload_hex} read with low confidence {reading.confidence:.2f}",
                            reading=reading)
    record = ledger.lookup(reading.payload) if ledger is not None else None
    if record is None:
        where = "no ledger given" if ledger is None else "no ledger record"
        return Verification(path, "unknown", "no-ledger-record",
                            f"mark {reading.payload_hex} found, but {where}; metadata is stripped", reading=reading)
    signature = check_signature(record.manifest, keys.trusted)
    if signature != "valid":
        return Verification(path, "unknown", "ledger-invalid",
                            f"the ledger record of {reading.payload_hex} fails its signature check ({signature})",
                            record.manifest, "ledger", signature, reading=reading)
    same = pixels_sha256(loaded) == _field(record.manifest, "image", "pixels_sha256")
    note = "pixels identical to the signed image" if same else "pixels changed since signing (re-encoded, resized or cropped)"
    where = f" of {record.image}" if record.image else ""
    blocked = f"{_blocked_note(record.manifest)} (not to be published)" if blocking_verdicts(record.manifest) else ""
    return Verification(path, "watermark-only", "metadata-stripped",
                        f"metadata stripped; mark {reading.payload_hex} matches the ledger record{where}; {note}"
                        + blocked, record.manifest, "ledger", signature, same, reading)


#: Audit verdicts in a manifest that keep an image from publication.
BLOCKING_VERDICTS = ("block", "error")


def _audits(doc: Mapping[str, Any] | None) -> dict[str, Any]:
    """A manifest's ``audits`` table (name -> verdict), empty when it has none."""
    audits = doc.get("audits") if isinstance(doc, Mapping) else None
    return dict(audits) if isinstance(audits, Mapping) else {}


def blocking_verdicts(doc: Mapping[str, Any] | None) -> dict[str, str]:
    """The verdicts of a manifest's audits that keep its image from publication (the gate
    quarantined it when it was signed): name -> ``block`` or ``error``, sorted by name."""
    return {name: verdict for name, verdict in sorted(_audits(doc).items()) if verdict in BLOCKING_VERDICTS}


def _listed(verdicts: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {verdict}" for name, verdict in verdicts.items())


def _blocked_note(doc: Mapping[str, Any]) -> str:
    return f"; its manifest records audit verdicts that keep it from publication: {_listed(blocking_verdicts(doc))}"


def _audited_again(ledger: Ledger, doc: Mapping[str, Any], keys: Keys) -> dict[str, Any] | None:
    """The ledger's later manifest of the image ``doc`` signed (the same payload, pixels
    and a trusted signature), when its audit verdicts differ: the image was audited again
    since (a job run again after its registry grew)."""
    try:
        record = ledger.lookup(str(_field(doc, "watermark", "payload") or ""))
    except (ProvenanceError, ValueError):
        return None
    if record is None or record.manifest == doc:
        return None
    later = record.manifest
    if (_field(later, "image", "pixels_sha256") != _field(doc, "image", "pixels_sha256")
            or check_signature(later, keys.trusted) != "valid" or not isinstance(later.get("audits"), dict)
            or later["audits"] == doc.get("audits")):
        return None
    return later


def _field(doc: Mapping[str, Any], section: str, name: str) -> Any:
    """``doc[section][name]`` or None, whatever shape a (signed but foreign) manifest has."""
    part = doc.get(section) if isinstance(doc, Mapping) else None
    return part.get(name) if isinstance(part, Mapping) else None
