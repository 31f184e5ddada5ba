"""Batch generation: deterministic, resumable, audited and gated.

``artengine generate`` turns a model (a training run, exported weights or a style a plugin
ships) into a folder of published-or-quarantined images. For each image ``i``:

    latent(seed, i) + conditioning(seed, i) -> generator -> upsample to the output size
    -> watermark (payload = HMAC(job secret, i)) -> per-image audits on the marked pixels
    -> gate -> signed manifest -> PNG bytes (fixed compression) -> decoded again:
       manifest, pixels and mark must read back
    -> atomic write into approved/ or quarantine/ (pending/ while batch audits can still
       block), read back equal -> sidecar -> per chunk: folder sync, ledger rows, journal
       lines (the commit point).

Determinism: image ``i`` depends only on the model weights, the seed, ``i``, the
conditioning, the output size, the keys and the job's time (``created``; set it with
``SOURCE_DATE_EPOCH`` for reproducible builds). Each chunk's generator pass runs on one
thread (in whichever process), finishing is per image, and PNG compression is
deterministic, so the bytes are the same whatever the worker count, executor or resume
history.

Resume: the journal (``journal.jsonl``) names the images that are completely written.
Running the same command again skips them, removes stray temporaries and files that were
written but not journaled, and continues. A folder holding a different job is refused.

Producers (the expensive part) run in the parent as overlapping stages (``--workers 1``,
see :class:`_InProcess`: for a long job with a generator process and a forked finishing
process beside it), in local processes (``--workers N``; by default one per core for a
job of 64 images or more where they are forked, see :func:`default_workers`; the first
chunks' passes get a head start, see :class:`_HeadStart`) or on Ray actors
(``--executor ray``); the parent is the only writer.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import gc
import hashlib
import json
import logging
import mmap
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import __version__
from .audit import AuditContext, AuditItem
from .errors import ArtengineError, InputError, check_seed
from .gate import ENGINE, judge
from .hookspecs import HOOK_API_VERSION
from .io import LoadedImage, atomic_write_bytes, atomic_write_json, available_memory, encode_image, fsync_dir, \
    open_image, remove_stray_temps, sha256_file, usable_cores
from .journal import JOB_FILE, Journal, JobLock, JobState, start_job
from .plugins import Plugins, get_plugins
from .records import Finding

log = logging.getLogger("artengine.generation")

JOB_FORMAT = "artengine-job/1"
FOLDERS = ("approved", "quarantine", "pending")
#: Audits the pipeline satisfies itself, after the write (the manifest exists only then).
PIPELINE_AUDITS = ("provenance",)
#: Spec fields that define a job's output: a folder holding a job that differs in any of
#: them is refused.
DEFINING = ("format", "model", "seed", "count", "labels", "style_ref", "size", "watermark",
            "policy", "registries", "reference_data", "overrides", "created", "compress_level",
            "png_strategy", "png_filter")
DEFAULT_SIZE = 256
#: The largest output side: 8192 x 8192 stays under Pillow's decompression-bomb limit
#: (89.5 megapixels), which every written image's read-back meets.
MAX_SIZE = 8192
#: Memory a job keeps per image until its end, from the growth of its peak between 2,048
#: and 8,192 images (4.7 KB, policy ``publication``, 256 px; docs/generation.md, "Memory").
JOB_BYTES_PER_IMAGE = 5_000
COMPRESS_LEVEL = 1  # deflate level (ISA-L's 0-3; with zlib, level 1 was 2.3x faster than 3)
PNG_STRATEGY = "isal"  # ISA-L's deflate: 0.54 ms against zlib's 1.97 (level 1, RLE), files 3 % smaller
PNG_FILTER = "up"  # one row filter for the whole image: 2x faster than Pillow's adaptive choice
#: How a job's PNGs are encoded (job.json). A job resumed without them asked for keeps its
#: own, so a job begun by an older version (zlib, RLE) continues in the same bytes.
ENCODING = ("compress_level", "png_strategy", "png_filter")


# ----------------------------------------------------------------------------- options


@dataclass
class GenerateOptions:
    """What ``artengine generate`` asks for."""

    model: str  # run folder, weights file, or the name of a style a plugin provides
    count: int
    out: Path
    seed: int = 0
    labels: Sequence[str] = ()  # NAME or NAME:WEIGHT (class or style names)
    style_ref: Path | None = None
    policy: str = "default"
    registries: Sequence[str] = ()
    reference_data: str | None = None  # dataset name or folder the bias audit compares with
    overrides: Sequence[str] = ()
    size: int | None = None  # output side in pixels (default: 256, or the model's if larger)
    workers: int = 0  # producer processes or actors; 0: as suits the job (:func:`default_workers`)
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    keys_dir: str | None = None
    ledger: str | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    chunk: int = 32  # images per unit of work: the generator's own pass (models.GENERATION_CHUNK)
    # PNG encoding (see ENCODING); None: the job's own when resuming, else COMPRESS_LEVEL,
    # PNG_STRATEGY and PNG_FILTER.
    compress_level: int | None = None
    png_strategy: str | None = None
    png_filter: str | None = None
    progress: bool = True
    report_dir: Path | None = None  # default: OUT/report


@dataclass
class GenerateResult:
    """What a finished job produced."""

    out: Path
    count: int
    approved: int
    quarantined: int
    verdict: str
    exit_code: int
    report_json: Path
    report_html: Path
    resumed: int  # images already complete when this run started
    #: The job's count before this run, when this run gave it another ``--count``.
    count_before: int | None = None
    workers: int = 1  # producer processes (or Ray actors) this run used; 1: the one-worker pipeline
    #: Seconds spent per stage in this run (``generator`` and ``finishing`` summed over
    #: the one-worker pipeline's threads or process, ``writing``, ``batch`` for the
    #: end-of-job audits and report); the stages overlap, so they add up to more than
    #: the wall time.
    stage_seconds: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- models


def resolve_model_source(ref: str, plugins: Plugins) -> tuple[Path, Any]:
    """``(weights path, style or None)`` for a ``--model`` value: a path that exists, or
    the name of a style a loaded plugin provides."""
    path = Path(ref)
    if path.exists():
        return path, None
    styles = plugins.components("styles")
    if ref in styles:
        style = styles[ref]
        return Path(style.weights), style
    known = ", ".join(sorted(styles)) or "none installed"
    raise InputError(f"--model {ref}: no such run folder or weights file, and no style of that name "
                     f"(styles: {known})")


def parse_labels(values: Sequence[str], names: Sequence[str], model_name: str) -> list[tuple[str, float]]:
    """``NAME[:WEIGHT]`` values checked against the model's label names."""
    out: list[tuple[str, float]] = []
    for value in values:
        name, _, weight_text = value.partition(":")
        name = name.strip()
        if name not in names:
            known = ", ".join(names) if names else "none (the model is unconditional)"
            raise InputError(f"--label {value}: model {model_name!r} has no label {name!r} (labels: {known})")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise InputError(f"--label {value}: weight {weight_text!r} is not a number") from None
        if not weight > 0 or not np.isfinite(weight):
            raise InputError(f"--label {value}: weight must be a positive number")
        out.append((name, weight))
    return out


def label_for(index: int, seed: int, labels: Sequence[Sequence[Any]]) -> str | None:
    """The label of image ``index``: a weighted draw that depends only on (seed, index)."""
    if not labels:
        return None
    if len(labels) == 1:
        return str(labels[0][0])
    weights = np.array([float(w) for _, w in labels], dtype=np.float64)
    u = np.random.default_rng([int(seed), int(index), 0x1ABE1]).random()
    pick = int(np.searchsorted(np.cumsum(weights / weights.sum()), u, side="right"))
    return str(labels[min(pick, len(labels) - 1)][0])


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def _created_time() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            moment = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        except (ValueError, OverflowError):
            raise InputError(f"SOURCE_DATE_EPOCH={epoch}: not a Unix time in seconds") from None
    else:
        moment = _dt.datetime.now(_dt.timezone.utc)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------- job spec


def build_spec(options: GenerateOptions, plugins: Plugins) -> dict[str, Any]:
    """Resolve and check everything the job needs; the result goes to ``job.json``.

    Every check that can fail on bad input runs here, before any image is made.
    """
    from .models import load_model
    from .policy import load_policy, parse_override
    from .provenance import load_keys

    if options.count < 1:
        raise InputError("--count must be at least 1")
    check_seed(options.seed)
    if options.executor not in ("local", "ray"):
        raise InputError(f"--executor {options.executor}: use local or ray")
    source, style = resolve_model_source(options.model, plugins)
    model = load_model(source, plugins=plugins)
    info = model.info
    named = str(options.model)  # as the user gave it (a weights file's stored run name may be anything)
    if options.style_ref is not None and info.conditioning != "style":
        raise InputError(f"--style-ref {options.style_ref}: model {named!r} ({info.architecture}) "
                         "takes no style reference")
    names = model.label_names
    labels = parse_labels(options.labels, names, named)
    if info.conditioning == "none" and labels:
        raise InputError(f"--label: model {named!r} is unconditional")
    if info.conditioning != "none" and not labels and options.style_ref is None:
        labels = [(n, 1.0) for n in names]  # an even mix of every class or style
    style_ref = None
    if options.style_ref is not None:
        open_image(options.style_ref)  # unreadable reference: one line naming it, before any work
        style_ref = {"path": str(Path(options.style_ref).resolve()), "sha256": sha256_file(options.style_ref)}

    keys = load_keys(options.keys_dir)
    keys.require_signing()
    keys.require_watermark()
    schemes = plugins.components("watermarks")
    if not schemes:
        raise InputError("no watermark scheme is loaded (the built-in 'watermark' plugin is not allowed?)")
    scheme_name = "stdm" if "stdm" in schemes else sorted(schemes)[0]
    scheme_cls = schemes[scheme_name]
    size = int(options.size or max(DEFAULT_SIZE, info.image_size))
    if size > MAX_SIZE:
        raise InputError(f"--size {size}: at most {MAX_SIZE} px (each image is read back after it is "
                         "written, and larger ones pass the image reader's size limit)")
    if size < int(scheme_cls.min_side):
        raise InputError(f"--size {size}: the {scheme_name} watermark needs images of at least "
                         f"{scheme_cls.min_side} px")
    if size < info.image_size:
        raise InputError(f"--size {size}: smaller than the model's {info.image_size} px")

    policy = load_policy(options.policy, audits=plugins.components("audits"),
                         features=plugins.components("feature_extractors"))
    for text in options.overrides:
        parse_override(text)
    registries = [*policy.registries, *(str(Path(r).resolve()) for r in options.registries)]
    if style is not None and style.registry is not None:
        registries.append(str(Path(style.registry).resolve()))
    for reg in options.registries:
        if not Path(reg).exists():
            raise InputError(f"--registry {reg}: no such file")

    spec: dict[str, Any] = {
        "format": JOB_FORMAT,
        "model": {"ref": options.model, "path": str(source.resolve()), "style": style.name if style else None,
                  "name": info.name, "architecture": info.architecture, "image_size": info.image_size,
                  "conditioning": info.conditioning, "weights_sha256": info.weights_sha256,
                  # in the report's inputs; only when set, so jobs begun before it still resume
                  **({"pickle_opt_in": True} if info.pickle_opt_in else {})},
        "seed": int(options.seed),
        "count": int(options.count),
        "labels": [[n, w] for n, w in labels],
        "style_ref": style_ref,
        "size": size,
        "watermark": {"scheme": scheme_name, "version": int(scheme_cls.version), "signing_key": keys.key_id,
                      "keys": str(Path(keys.source).resolve())},
        "policy": {"path": str(policy.path), "sha256": sha256_file(policy.path), "name": policy.name},
        "registries": registries,
        "reference_data": _reference_data(options.reference_data, source),
        "overrides": list(options.overrides),
        "clip": {"model": options.clip_model, "pretrained": options.clip_pretrained},
        "ledger": str(Path(options.ledger).resolve()) if options.ledger else None,
        **_encoding(options),
        "created": _created_time(),
        "engine": {"version": __version__, "hook_api": HOOK_API_VERSION},
    }
    return spec


def _encoding(options: GenerateOptions) -> dict[str, Any]:
    """The job's PNG encoding (:data:`ENCODING`), checked (:func:`_check_encoding`)."""
    level = COMPRESS_LEVEL if options.compress_level is None else int(options.compress_level)
    strategy = PNG_STRATEGY if options.png_strategy is None else str(options.png_strategy)
    png_filter = PNG_FILTER if options.png_filter is None else str(options.png_filter)
    return _check_encoding({"compress_level": level, "png_strategy": strategy, "png_filter": png_filter})


def _check_encoding(encoding: dict[str, Any], where: str = "PNG encoding") -> dict[str, Any]:
    """``encoding`` unchanged if :func:`encode_image` takes it; else one line, before any work."""
    try:
        encode_image(Image.new("RGB", (1, 1)), compress_level=encoding["compress_level"],
                     strategy=encoding["png_strategy"], png_filter=encoding["png_filter"])
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: {exc}") from None
    return encoding


def _reference_data(given: str | None, source: Path) -> str | None:
    """What the bias audit compares with: the given dataset or folder, else the training
    data of the run that made the model."""
    if given:
        path = Path(given)
        return str(path.resolve()) if path.exists() else given
    if source.is_dir():
        from .runs import read_run_config

        data = read_run_config(source).get("data") or {}
        return data.get("spec") or data.get("name")
    return None


def job_id(spec: Mapping[str, Any]) -> str:
    """A job's identity: a hash of everything that defines its images."""
    defining = {k: spec.get(k) for k in DEFINING if k != "count"}
    return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------- producing


@dataclass
class Produced:
    """One finished image, made by a producer and handed to the single writer."""

    index: int
    name: str
    png: bytes
    manifest: dict[str, Any]
    findings: list[dict[str, Any]]
    meta: dict[str, Any]
    features: dict[str, Any] = field(default_factory=dict)  # what batch audits need
    #: None when the encoded bytes passed the provenance check (manifest, pixels, mark),
    #: else what failed; the writer then only has to store these exact bytes.
    provenance_error: str | None = None


def _finding_from_dict(doc: Mapping[str, Any]) -> Finding:
    return Finding(audit=doc["audit"], outcome=doc["outcome"], message=doc.get("message", ""),
                   item=doc.get("item"), details=dict(doc.get("details") or {}),
                   attachments=dict(doc.get("attachments") or {}))


@dataclass
class Restored:
    """A chunk some of whose images a run before made, to be audited again (see
    :class:`PixelSource`): ``marked`` holds, per index of the chunk, the pixels read back
    from its file (marked, as signed), or None where it is generated again; ``raw`` is
    the generator's output for the latter, in their order (None if there are none)."""

    marked: list[np.ndarray | None]
    raw: np.ndarray | None


def _read_back(path: str, sha256: str, size: int) -> np.ndarray | None:
    """The pixels of a job's image file, when it still holds exactly the bytes journaled
    (the ones checked against the signed pixels when they were written) in the job's own
    PNG layout at its size; None otherwise (gone, changed, another layout)."""
    from .io import decode_png_up

    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    decoded = decode_png_up(data)
    if decoded is None or decoded[0].shape != (size, size, 3):
        return None
    return decoded[0]


class PixelSource:
    """The generator side of a job: the model and its conditioning, turning image indices
    into uint8 pixels. Small enough to live in its own process (see :class:`_InProcess`).

    ``spec["read_back"]`` (index -> (path, sha256)) names images a run before made whose
    audits are to be made again (a registry they were checked against changed): their
    pixels are read back from their files, where these still hold the journaled bytes,
    instead of generated and marked again (the same pixels; :class:`Restored`)."""

    def __init__(self, spec: Mapping[str, Any], plugins: Plugins | None = None) -> None:
        from .models import load_model

        self.spec = dict(spec)
        self.read_back: Mapping[int, tuple[str, str]] = self.spec.pop("read_back", None) or {}
        model_spec = spec["model"]
        self.model = load_model(model_spec["path"], plugins=plugins or get_plugins())
        if self.model.info.weights_sha256 != model_spec["weights_sha256"]:
            raise InputError(f"{model_spec['path']}: weights changed since the job started "
                             f"(sha256 {self.model.info.weights_sha256[:12]}, job has "
                             f"{model_spec['weights_sha256'][:12]}); use a new --out folder")
        self.styles = None
        if spec.get("style_ref"):
            self.styles = self.model.style_from_image(open_image(spec["style_ref"]["path"]))

    def pixels(self, indices: Sequence[int]) -> np.ndarray | Restored:
        """Generator output for ``indices`` at the model's size, uint8 NHWC; a
        :class:`Restored` where some of them are read back instead."""
        if self.read_back and any(i in self.read_back for i in indices):
            size = int(self.spec["size"])
            marked = [_read_back(*entry, size) if (entry := self.read_back.get(i)) else None for i in indices]
            made = [i for i, pixels in zip(indices, marked) if pixels is None]
            return Restored(marked, self.generate(made) if made else None)
        return self.generate(indices)

    def generate(self, indices: Sequence[int]) -> np.ndarray:
        """Generator output for ``indices`` at the model's size, uint8 NHWC."""
        spec = self.spec
        latents = self.model.latents(spec["seed"], indices)
        labels = [label_for(i, spec["seed"], spec["labels"]) for i in indices]
        if self.styles is not None:
            return self.model.generate(latents, styles=self.styles)
        return self.model.generate(latents, labels=labels if labels and labels[0] is not None else None)


class Producer:
    """Makes finished images for a job: everything up to the PNG bytes. One per worker."""

    def __init__(self, spec: Mapping[str, Any], plugins: Plugins | None = None,
                 source: PixelSource | None = None, policy: Any = None, generates: bool = True) -> None:
        """``policy``: the job's policy, overrides applied, when the caller has loaded it
        already; otherwise it is loaded from the spec (as in worker processes).
        ``generates=False``: a producer that only finishes does not load the model."""
        from .auditor import AuditRunner
        from .policy import load_policy, parse_override
        from .provenance import job_secret, load_keys

        self.spec = dict(spec)
        self.plugins = plugins or get_plugins()
        # The model is loaded (and checked) now, before any work; None: this producer only finishes.
        self.source = source or (PixelSource(spec, self.plugins) if generates else None)
        keys = load_keys(spec["watermark"]["keys"])
        self.signing_key = keys.require_signing()
        self.scheme = self.plugins.components("watermarks")[spec["watermark"]["scheme"]](keys.require_watermark())
        self.secret = job_secret(keys.require_watermark(), spec["job_id"])
        if policy is None:
            policy = load_policy(spec["policy"]["path"], audits=self.plugins.components("audits"),
                                 features=self.plugins.components("feature_extractors"))
            policy = policy.with_overrides([parse_override(o) for o in spec.get("overrides", [])])
        self.policy = policy
        self.context = job_context(spec, self.policy.path, self.plugins)
        self.runner = AuditRunner(self.policy, self.plugins, self.context)
        for name in PIPELINE_AUDITS:
            self.runner.audits.pop(name, None)
        self.batch_features = sorted({f for a in self.runner.batch_audits for f in a.needs})
        self.engine = dict(spec["engine"])
        self.versions = self.plugins.versions()

    def meta(self, index: int) -> dict[str, Any]:
        spec = self.spec
        label = label_for(index, spec["seed"], spec["labels"])
        conditioning = spec["model"]["conditioning"]
        return {"index": index, "seed": spec["seed"], "model": spec["model"]["name"],
                "label": label if conditioning == "label" else None,
                "style": label if conditioning == "style" else (
                    Path(spec["style_ref"]["path"]).name if spec.get("style_ref") else None)}

    def pixels(self, indices: Sequence[int]) -> np.ndarray | Restored:
        """Generator output for ``indices`` at the model's size, uint8 NHWC (or
        :class:`Restored`: see :class:`PixelSource`)."""
        assert self.source is not None, "a producer built with generates=False does not generate"
        return self.source.pixels(indices)

    def mark(self, index: int, pixels: np.ndarray) -> tuple[Image.Image, np.ndarray, bytes]:
        """Image ``index``'s generator output upsampled to the job's size and marked: the
        marked image, its pixels (the array the mark returns: what is signed; the image the
        audits see is made from it once) and the mark's payload."""
        size = int(self.spec["size"])
        image = Image.fromarray(pixels, mode="RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        payload = self._payload(index)
        signed_pixels = self.scheme.embed_array(np.asarray(image), payload)
        return Image.fromarray(signed_pixels, mode="RGB"), signed_pixels, payload

    def _marked(self, indices: Sequence[int], raw: np.ndarray | Restored
                ) -> Iterator[tuple[int, tuple[Image.Image, np.ndarray, bytes]]]:
        """Each image of a chunk marked: made from the generator's output, or, for one
        read back from its file (:class:`Restored`), as it was signed."""
        if not isinstance(raw, Restored):
            for index, pixels in zip(indices, raw):
                yield index, self.mark(index, pixels)
            return
        generated = iter(raw.raw if raw.raw is not None else ())
        for index, signed_pixels in zip(indices, raw.marked):
            if signed_pixels is None:
                yield index, self.mark(index, next(generated))
            else:
                yield index, (Image.fromarray(signed_pixels, mode="RGB"), signed_pixels, self._payload(index))

    def _payload(self, index: int) -> bytes:
        """Image ``index``'s watermark payload."""
        from .provenance import derive_payload

        return derive_payload(self.secret, index, size=self.scheme.payload_bytes)

    def finish(self, indices: Sequence[int], raw: np.ndarray | Restored) -> list[Produced]:
        """Everything after the generator: upsample, mark, audit, sign, encode, and check
        the encoded bytes (manifest, pixels and mark must read back)."""
        from .provenance import MANIFEST_KEY, ProvenanceError, build_manifest, canonical_json, check_encoded, \
            pixels_sha256, sign_manifest

        spec = self.spec
        items: list[AuditItem] = []
        marked_images: list[tuple[Image.Image, np.ndarray]] = []
        payloads: list[bytes] = []
        for index, (marked, signed_pixels, payload) in self._marked(indices, raw):
            name = image_name(index)
            loaded = LoadedImage(path=name, rgb=marked, alpha=None, format="PNG", mode="RGB", text={})
            items.append(AuditItem(key=name, image=loaded, meta=self.meta(index)))
            marked_images.append((marked, signed_pixels))
            payloads.append(payload)
        results = self.runner.check_images(items)
        out: list[Produced] = []
        for index, item, (marked, signed_pixels), payload in zip(indices, items, marked_images, payloads):
            findings = results[item.key]
            verdict = judge(item.key, findings, self.policy)
            audits = {d.finding.audit: d.status for d in verdict.decisions}
            meta = item.meta
            manifest = build_manifest(
                payload=payload, created=spec["created"], pixels=pixels_sha256(signed_pixels), size=marked.size,
                scheme=self.scheme.name, scheme_version=self.scheme.version, engine=self.engine,
                plugins=self.versions,
                model={k: spec["model"][k] for k in ("name", "architecture", "weights_sha256", "style")},
                seed=spec["seed"], label=meta["label"], style=meta["style"],
                reference=spec["style_ref"]["sha256"] if spec.get("style_ref") else None,
                audits=audits, extra={"job": spec["job_id"], "index": index, "policy": spec["policy"]["name"]})
            signed = sign_manifest(manifest, self.signing_key)
            png = encode_image(signed_pixels, text={MANIFEST_KEY: canonical_json(signed).decode("utf-8")},
                               compress_level=int(spec["compress_level"]), strategy=spec["png_strategy"],
                               png_filter=spec["png_filter"])
            try:
                check_encoded(png, signed, scheme=self.scheme, name=item.key, pixels=signed_pixels)
                problem = None
            except (ProvenanceError, ArtengineError) as exc:
                problem = str(exc)
            out.append(Produced(index=index, name=item.key, png=png, manifest=signed,
                                findings=[f.as_dict() for f in findings], meta=meta,
                                features={f: _plain(item.features[f]) for f in self.batch_features
                                          if f in item.features},
                                provenance_error=problem))
        return out


def _plain(value: Any) -> Any:
    """Feature values travel between processes and into resume: keep them plain."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "numpy"):
        return value.numpy()
    return value


def features_key(spec: Mapping[str, Any], plugins: Plugins) -> str:
    """What made a job's journaled features: its CLIP and the plugins' versions. A resumed
    run reuses an earlier run's features only under the same key (a job may resume with
    another ``--clip-model``; its batch audits then measure every image again)."""
    made_by = {"clip": spec.get("clip"), "plugins": plugins.versions()}
    return hashlib.sha256(json.dumps(made_by, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _journal_feature(value: Any) -> dict[str, Any] | None:
    """A batch feature as the journal keeps it: arrays as base64 bytes with their dtype and
    shape (exact; a 128-value CLIP embedding in 684 characters), other JSON values as they
    are; None for anything else (recomputed from the file on resume)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            return None
        data = base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii")
        return {"ndarray": data, "dtype": value.dtype.str, "shape": list(value.shape)}
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return {"json": value}


def _journaled_features(record: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The batch features an earlier run journaled with ``record``, if made under ``key``."""
    stored = record.get("features")
    if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("values"), dict):
        return {}
    out: dict[str, Any] = {}
    for name, entry in stored["values"].items():
        try:
            if "ndarray" in entry:
                raw = base64.b64decode(entry["ndarray"], validate=True)
                out[name] = np.frombuffer(raw, dtype=np.dtype(entry["dtype"])).reshape(entry["shape"]).copy()
            else:
                out[name] = entry["json"]
        except (KeyError, TypeError, ValueError):  # damaged by hand: measured again
            continue
    return out


def job_context(spec: Mapping[str, Any], policy_path: str, plugins: Plugins) -> AuditContext:
    """The audit context of a job: registries, the style's reference distribution, keys."""
    reference_distribution = None
    style_name = spec["model"].get("style")
    if style_name:
        style = plugins.components("styles").get(style_name)
        if style is not None:
            reference_distribution = style.read_reference_distribution()
    run_dir = spec["model"]["path"] if Path(spec["model"]["path"]).is_dir() else None
    return AuditContext(
        policy_path=str(policy_path),
        registries=list(spec["registries"]),
        reference_data=spec.get("reference_data"),
        reference_distribution=reference_distribution,
        run_dir=run_dir,
        clip_model=spec["clip"]["model"],
        clip_pretrained=spec["clip"]["pretrained"],
        keys_dir=spec["watermark"]["keys"],
        ledger=spec.get("ledger"),
    )


# ----------------------------------------------------------------------------- executors

_WORKER: Producer | None = None
_PASSES: _Passes | None = None


class _Passes:
    """The generator passes under way in a job's forked worker processes, counted where
    the job's process can see them, so that its writer can sit them out (:meth:`wait`):
    on a machine whose cores the job keeps busy, a pass would otherwise share its core
    with the writer's work on the chunk just handed back (docs/generation.md, "Scale-out").

    Workers count under a lock; the one that ends the last pass under way writes a byte
    to a pipe, on which the writer sleeps (the writer only reads the count). A wait is
    bounded, so a worker that dies in a pass (its pool then breaks and the job stops)
    cannot hold the writer."""

    LONGEST_WAIT = 1.0  # seconds

    def __init__(self, context: Any) -> None:
        self.count = context.RawValue("i", 0)
        self.lock = context.Lock()
        self.woken, self.waker = os.pipe()  # read end: the job's process; write end: the workers
        os.set_blocking(self.woken, False)
        os.set_blocking(self.waker, False)

    def __enter__(self) -> None:
        with self.lock:
            self.count.value += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.count.value -= 1
            last = self.count.value == 0
        if last:
            self.wake()

    def wake(self) -> None:
        """Wake a waiting writer (it then looks again at what it waits for)."""
        if self.waker < 0:  # closed
            return
        try:
            os.write(self.waker, b"\0")
        except OSError:  # a full pipe (BlockingIOError) has wake-ups enough; a closed one, no writer
            pass

    def wait(self, enough: Callable[[], bool] = lambda: False) -> None:
        """Return once no pass is under way or ``enough()`` is true (checked again on every
        :meth:`wake`), or after ``LONGEST_WAIT`` seconds."""
        until = time.perf_counter() + self.LONGEST_WAIT
        while self.count.value > 0 and not enough():
            left = until - time.perf_counter()
            if left <= 0:
                return
            select.select([self.woken], [], [], left)
            try:
                while os.read(self.woken, 4096):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        """In the job's process, once its workers have ended."""
        for fd in (self.woken, self.waker):
            os.close(fd)
        self.woken = self.waker = -1


class _HeadStart:
    """The generator passes of a job's first chunks, run in a process forked as soon as the
    model is loaded, while the job's process goes on starting up: CLIP, the audits and the
    registries take it about 2 s on one core from the command line, with the other cores
    idle. :meth:`take` stops the head start and returns the pixels of the chunks it
    finished; the workers then only finish those chunks. They are the pixels the workers
    would have generated: the same model, the same chunks, one thread each (an image
    depends on its index only)."""

    #: Chunks the job's process waits for before it stops the head start (tests set it).
    AT_LEAST = 0
    #: Pixels held for the workers at most (the head start stops there).
    MAX_BYTES = 32 << 20

    @staticmethod
    def wanted() -> bool:
        """Where workers are forked: with a core to spare for it and a start-up ahead to
        overlap (:func:`_start_up_ahead`), unless ``ARTENGINE_HEAD_START=0`` (for comparisons)."""
        return (usable_cores() > 1 and _start_up_ahead()
                and os.environ.get("ARTENGINE_HEAD_START", "").strip() != "0")

    def __init__(self, source: PixelSource, chunks: Sequence[list[int]], context: Any) -> None:
        side = int(source.spec["model"]["image_size"])
        self.shape = (side, side, 3)
        per_image = side * side * 3
        room, held = max(1, self.MAX_BYTES // per_image), 0
        self.chunks: list[list[int]] = []
        for chunk in chunks:
            if held + len(chunk) > room or any(i in source.read_back for i in chunk):
                break  # (images read back from their files are the workers' to read)
            self.chunks.append(list(chunk))
            held += len(chunk)
        self.buffer: mmap.mmap | None = mmap.mmap(-1, max(1, held * per_image))  # shared with the fork
        self.done = context.RawValue("i", 0)  # chunks finished, in order
        self.times = context.RawArray("d", 2)  # their seconds: wall, CPU
        self.seconds = {"generator": 0.0, "generator cpu": 0.0}
        self.process = context.Process(target=_run_head_start, name="artengine-head-start", daemon=True,
                                       args=(source, self.chunks, self.shape, self.buffer, self.done, self.times))
        self.process.start()

    def take(self) -> dict[int, np.ndarray]:
        """Stop the head start. The pixels of the chunks it finished, by position."""
        least = min(self.AT_LEAST, len(self.chunks))
        while self.done.value < least and self.process.is_alive():
            time.sleep(0.01)
        self.close()
        view = np.frombuffer(self.buffer, dtype=np.uint8)
        out: dict[int, np.ndarray] = {}
        offset, per_image = 0, int(np.prod(self.shape))
        for position in range(self.done.value):
            count = len(self.chunks[position])
            out[position] = view[offset:offset + count * per_image].reshape(count, *self.shape).copy()
            offset += count * per_image
        self.seconds = {"generator": self.times[0], "generator cpu": self.times[1]}
        del view
        self.buffer.close()
        self.buffer = None
        return out

    def close(self) -> None:
        """End the head start where it is (a pass under way is not waited for); idempotent.
        Chunks count as finished only once all their pixels are in place."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()


def _start_up_ahead() -> bool:
    """Whether this process has yet to import CLIP (most of a job's start-up after the
    model). Where it has (a program that runs job after job), what is left takes tens of
    milliseconds, and a head start would only cost a fork: 0.1-0.2 s per job measured."""
    return "open_clip" not in sys.modules


def _run_head_start(source: PixelSource, chunks: Sequence[list[int]], shape: tuple[int, int, int],
                    buffer: Any, done: Any, times: Any) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # take() ends it so
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the job's process ends it
    _exit_with_parent()
    _one_thread_each()
    view = np.frombuffer(buffer, dtype=np.uint8)
    offset = 0
    for position, chunk in enumerate(chunks):
        begin, cpu = time.perf_counter(), time.thread_time()
        try:
            pixels = source.generate(chunk)
        except BaseException:  # noqa: BLE001 - the workers meet it again and report it
            return
        if pixels.shape != (len(chunk), *shape) or pixels.dtype != np.uint8:
            return  # not what the workers expect: they generate these chunks themselves
        times[0] += time.perf_counter() - begin
        times[1] += time.thread_time() - cpu
        view[offset:offset + pixels.size] = pixels.reshape(-1)
        offset += pixels.size
        done.value = position + 1


def _exit_with_parent() -> None:
    """A worker process ends when the job's process is gone (``kill -9`` included), rather
    than wait forever for work that will not come."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="artengine-parent-watch", daemon=True).start()


def _one_thread_each() -> None:
    """A worker process computes on one core: torch and the BLAS under numpy get one
    thread each (idle OpenBLAS threads spin, taking the cores the other stages need)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")


def _init_worker(spec: dict[str, Any]) -> None:
    global _WORKER
    _exit_with_parent()
    _one_thread_each()
    _WORKER = Producer(spec)


def _init_forked_worker(spec: dict[str, Any], plugins: Plugins, policy: Any, source: PixelSource,
                        passes: _Passes | None = None) -> None:
    """A ``--workers N`` process forked from the job's process: its own producer (its
    registries opened anew) from the job's plugins, policy and loaded model; ``passes``
    counts its generator passes for the job's writer."""
    global _WORKER, _PASSES
    _exit_with_parent()
    _one_thread_each()
    _WORKER = Producer(spec, plugins, source=source, policy=policy)
    _PASSES = passes


def default_workers(images: int, executor: str = "local", chunk: int = 32) -> int:
    """``--workers`` when it is not given: one local producer process per usable core
    (at most one per chunk) for a job of ``_InProcess.PROCESS_FROM_IMAGES`` images or
    more, where worker processes are forked (:func:`forks_workers`): each starts with the
    job's imports and model in place, and N processes that each generate and finish keep
    the cores busier than one process's overlapping stages, whose finisher threads share
    an interpreter lock (docs/generation.md, "Scale-out"). Otherwise 1: a short job, or
    where workers are spawned (seconds each to import torch and CLIP), runs the one-worker
    pipeline; Ray gets one actor unless asked for more."""
    if executor != "local" or images < _InProcess.PROCESS_FROM_IMAGES or not forks_workers():
        return 1
    return max(1, min(usable_cores(), -(-images // max(chunk, 1))))


def forks_workers() -> bool:
    """Whether worker processes (the generator's, the finishing one, ``--workers N``) are
    forked from the job's process (Linux; once the job has built a producer, they start
    with every import and the model in place) rather than spawned (each imports torch and
    CLIP and loads the model: seconds).
    ``ARTENGINE_WORKER_START=spawn`` forces spawning."""
    import multiprocessing

    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and os.environ.get("ARTENGINE_WORKER_START", "").strip() != "spawn")


def _work(indices: list[int], raw: np.ndarray | None = None) -> tuple[list[Produced], dict[str, float]]:
    """A chunk's finished images, and the seconds its generator and finishing took (the
    generator's also in CPU time: a pass that waits on a device computes little here).
    ``raw``: the chunk's pixels, generated already (:class:`_HeadStart`)."""
    assert _WORKER is not None
    begin, cpu = time.perf_counter(), time.thread_time()
    if raw is None:
        with _PASSES if _PASSES is not None else contextlib.nullcontext():
            raw = _WORKER.pixels(indices)
    generated, cpu = time.perf_counter(), time.thread_time() - cpu
    produced = _WORKER.finish(indices, raw)
    return produced, {"generator": generated - begin, "generator cpu": cpu,
                      "finishing": time.perf_counter() - generated}


_SOURCE: PixelSource | None = None


def _init_source(spec: dict[str, Any]) -> None:
    global _SOURCE
    _exit_with_parent()
    _one_thread_each()
    _SOURCE = PixelSource(spec)


def _init_forked_source(source: PixelSource) -> None:
    global _SOURCE
    _exit_with_parent()
    _one_thread_each()
    _SOURCE = source


def _warm_up() -> None:
    """A first pass in a new generator process: torch's one-off costs (kernel and layout
    choices, buffers) are paid while the parent is still starting up, not in the first
    chunk. Outputs depend on nothing but their own index, so this changes no image."""
    assert _SOURCE is not None
    _SOURCE.generate([0])


def start_generator_process(spec: Mapping[str, Any], source: PixelSource | None = None) -> ProcessPoolExecutor:
    """The generator's process for a ``--workers 1`` job, started (and warmed up) now.
    With the job's ``source`` (model loaded) it is forked from the job's process and ready
    at once; without, it is spawned, as early as possible, so that its start-up (Python,
    torch, the model: about 3 s) overlaps the parent's own (policy, audits, CLIP).
    :class:`_InProcess` takes it over."""
    import multiprocessing

    if source is not None:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_init_forked_source, initargs=(source,))
    else:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_source, initargs=(dict(spec),))
    pool.submit(_warm_up)  # starts the process; the job's first chunk queues behind it
    return pool


#: The finishing process's producer (see :class:`_InProcess`); None where it could not
#: be built (the job's process then finishes every chunk, as without it).
_FINISHER: Producer | None = None


def _init_finisher(spec: dict[str, Any], plugins: Plugins, policy: Any, nice: int) -> None:
    """In the forked finishing process: a producer of its own (its registries opened anew),
    from the job's plugins and policy, warmed up."""
    global _FINISHER
    _exit_with_parent()
    _one_thread_each()
    try:
        os.nice(nice)  # it fills what the job's own processes leave of the cores
    except OSError:
        pass
    try:
        producer = Producer(spec, plugins, policy=policy, generates=False)
        size = int(spec["size"])
        # One-off costs (CLIP's first pass, registry indexes) are paid now, not in a chunk.
        producer.finish([0], np.zeros((1, size, size, 3), np.uint8))
    except Exception as exc:
        log.info("finishing process cannot finish images (%s); not used", exc)
        return
    _FINISHER = producer


def _finisher_ready() -> bool:
    return _FINISHER is not None


def _finish_chunk(indices: list[int], raw: np.ndarray) -> tuple[list[Produced], float]:
    assert _FINISHER is not None
    begin = time.perf_counter()
    produced = _FINISHER.finish(indices, raw)
    return produced, time.perf_counter() - begin


def start_finishing_process(spec: Mapping[str, Any], plugins: Plugins,
                            policy: Any) -> tuple[ProcessPoolExecutor, Future] | None:
    """A process that finishes chunks beside the job's finisher threads (a ``--workers 1``
    job with a generator process), forked from the job's process once its producer is
    built: it has the same plugins, policy and imports already (a spawned process would
    spend seconds importing torch and CLIP again), and runs at a lower priority. Returns
    the pool and a future that says whether it is ready; None where workers are not forked
    (:func:`forks_workers`)."""
    import multiprocessing

    if not forks_workers():
        return None
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_finisher,
                               initargs=(dict(spec), plugins, policy, _InProcess.FINISHER_NICE))
    return pool, pool.submit(_finisher_ready)


def _timed_pixels(indices: list[int]) -> tuple[np.ndarray, float]:
    assert _SOURCE is not None
    start = time.perf_counter()
    pixels = _SOURCE.pixels(indices)
    return pixels, time.perf_counter() - start


def _lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's nice value by ``increment`` (Linux schedules threads
    one by one; elsewhere, or where it is refused, nothing changes)."""
    if sys.platform.startswith("linux") and hasattr(os, "setpriority"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        except OSError:
            pass


class _InProcess:
    """``--workers 1``: one producer, as a pipeline of stages that overlap.

    The generator runs chunk by chunk, a few chunks ahead; ``finishers`` threads finish
    each chunk (upsample, mark, audits, sign, encode, check); this thread writes, in
    order. For a long job the generator runs in a child process of its own, so it never
    waits for the finishers' share of the GIL (torch releases the GIL inside operators but
    needs it between them); for a short one, where starting a process would cost more than
    it saves, in a thread. ``ARTENGINE_GENERATOR_PROCESS`` = 1 or 0 forces either. The
    caller decides (:meth:`uses_process`) and hands over the process
    (:func:`start_generator_process`: forked once the job has built its producer, or,
    where processes are not forked, spawned before anything else).

    The finisher threads share one interpreter lock, so the parts of finishing that hold it
    (the audits' Python, manifests, small numpy steps) cannot keep the cores busy. A job
    with a generator process therefore also gets a finishing process
    (:func:`start_finishing_process`): a chunk goes to it when every finisher thread here
    is busy, once it is ready, up to ``PROCESS_CHUNKS`` at a time. Which process finished a
    chunk changes none of its bytes. ``ARTENGINE_FINISHING_PROCESS=0`` keeps all finishing
    here; ``always`` sends it every chunk, once it is ready (for tests).
    """

    LOOKAHEAD = 2  # chunks the generator may run ahead of the finishers
    FINISHER_NICE = 5  # finisher threads yield to the generator when the cores are short
    PROCESS_FROM_IMAGES = 64  # jobs of at least this many images get a generator process
    PROCESS_CHUNKS = 2  # chunks the finishing process holds at most (1: 0.20 of the finishing, 2: 0.31)

    def __init__(self, producer: Producer, spec: Mapping[str, Any], finishers: int | None = None,
                 generator_pool: ProcessPoolExecutor | None = None,
                 finishing: tuple[ProcessPoolExecutor, Future] | None = None) -> None:
        cores = usable_cores()
        self.producer = producer
        self.spec = dict(spec)
        self.finishers = finishers or int(os.environ.get("ARTENGINE_FINISHERS", "0")) or min(4, max(2, cores // 2))
        #: "finishing" sums the threads' and the finishing process's seconds; the second
        #: key is the process's part.
        self.seconds = {"generator": 0.0, "finishing": 0.0, "finishing in a process": 0.0}
        self.generator_pool = generator_pool  # from start_generator_process; None: a thread
        self.finishing = finishing  # from start_finishing_process; None: threads only
        self._losing = threading.Lock()  # the finishing process let go of once

    @staticmethod
    def finishing_process() -> str:
        """``ARTENGINE_FINISHING_PROCESS``: "0" (none), "always" (tests) or "" (as needed)."""
        return os.environ.get("ARTENGINE_FINISHING_PROCESS", "").strip()

    @classmethod
    def uses_process(cls, images: int) -> bool:
        """Whether a job of ``images`` runs its generator in a process of its own: with
        at least two cores this process may run on (a job held to one core, e.g. by
        ``taskset``, would only have the process compete with its own finishing)."""
        forced = os.environ.get("ARTENGINE_GENERATOR_PROCESS", "").strip()
        if forced in ("0", "1"):
            return forced == "1"
        return images >= cls.PROCESS_FROM_IMAGES and usable_cores() >= 2

    def run(self, chunks: Sequence[list[int]]) -> Iterator[list[Produced]]:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        import torch

        handed: queue.Queue = queue.Queue(maxsize=self.finishers + 1)  # backpressure on the generator
        stop = threading.Event()
        finish_pool = ThreadPoolExecutor(max_workers=self.finishers, thread_name_prefix="artengine-finisher",
                                         initializer=_lower_thread_priority, initargs=(self.FINISHER_NICE,))
        generator_pool = self.generator_pool

        def local_pixels(indices: list[int]) -> tuple[np.ndarray, float]:
            begin = time.perf_counter()
            pixels = self.producer.pixels(indices)
            return pixels, time.perf_counter() - begin

        def submit(indices: list[int]) -> Future:
            if generator_pool is not None:
                return generator_pool.submit(_timed_pixels, indices)
            future: Future = Future()
            future.set_result(local_pixels(indices))
            return future

        def finish(indices: list[int], raw: np.ndarray) -> list[Produced]:
            begin = time.perf_counter()
            try:
                return self.producer.finish(indices, raw)
            finally:
                self.seconds["finishing"] += time.perf_counter() - begin

        def put(item: tuple[str, Any]) -> bool:
            while not stop.is_set():
                try:
                    handed.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        here: list[Future] = []  # chunks handed to the finisher threads, not yet finished
        there: list[Future] = []  # chunks handed to the finishing process, not yet finished
        always = self.finishing_process() == "always"

        def to_process() -> bool:
            """Whether the next chunk goes to the finishing process."""
            finishing = self.finishing
            if finishing is None:
                return False
            ready = finishing[1]
            try:
                if always:
                    return bool(_unwrap(ready))
                if not ready.done() or not _unwrap(ready):
                    return False
            except _WorkerDied:  # it died before it was ready
                self._lose_finishing()
                return False
            here[:] = [f for f in here if not f.done()]
            there[:] = [f for f in there if not f.done()]
            return len(here) >= self.finishers and len(there) < self.PROCESS_CHUNKS

        def feed() -> None:
            nonlocal generator_pool
            try:
                todo = deque(chunks)
                running: deque = deque()
                while todo or running:
                    while todo and len(running) < (self.LOOKAHEAD if generator_pool is not None else 1):
                        indices = todo.popleft()
                        try:
                            running.append((indices, submit(indices)))
                        except BrokenProcessPool:  # the generator process died since its last pass
                            todo.appendleft(indices)
                            self._lose_generator(running, todo)
                            generator_pool = None
                    indices, future = running.popleft()
                    try:
                        raw, seconds = _unwrap(future)
                    except _WorkerDied:
                        running.appendleft((indices, future))  # first again, before those after it
                        self._lose_generator(running, todo)
                        generator_pool = None
                        continue
                    self.seconds["generator"] += seconds
                    item = self._to_finishing(indices, raw) if to_process() else None
                    if item is not None:
                        there.append(item)
                        handing = ("process", (item, indices, raw))
                    else:
                        item = finish_pool.submit(finish, indices, raw)
                        here.append(item)
                        handing = ("ok", item)
                    if stop.is_set() or not put(handing):
                        return
                put(("done", None))
            except BaseException as exc:  # handed on to the writer, which raises it
                put(("error", exc))

        from threadpoolctl import threadpool_limits

        # One thread each for torch and the BLAS under numpy: the stages are parallel across
        # images instead, and idle OpenBLAS threads would spin on the generator's core.
        threads_before = torch.get_num_threads()
        torch.set_num_threads(1)
        blas = threadpool_limits(limits=1, user_api="blas")
        feeder = threading.Thread(target=feed, name="artengine-generator", daemon=True)
        feeder.start()
        try:
            while True:
                kind, value = handed.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                if kind == "process":
                    future, indices, raw = value
                    try:
                        produced, seconds = _unwrap(future)
                    except _WorkerDied:  # the finishing process died: this chunk is finished here
                        self._lose_finishing()
                        yield finish(indices, raw)
                        continue
                    self.seconds["finishing"] += seconds
                    self.seconds["finishing in a process"] += seconds
                    yield produced
                    continue
                yield value.result()
        finally:
            stop.set()
            feeder.join()
            finish_pool.shutdown(wait=True, cancel_futures=True)
            self.close()
            torch.set_num_threads(threads_before)
            blas.restore_original_limits()

    def _lose_generator(self, running: Any, todo: Any) -> None:
        """The generator process died (killed, out of memory): the chunks it was given go
        back to the front of ``todo``, in order, and the job generates here from now on.
        A chunk's bytes depend on its indices alone."""
        for indices, _ in reversed(running):
            todo.appendleft(indices)
        running.clear()
        if self.generator_pool is not None:
            self.generator_pool.shutdown(wait=False, cancel_futures=True)
            self.generator_pool = None
        log.warning("the generator process died (out of memory or killed): the job generates in its own "
                    "process from here on")

    def _to_finishing(self, indices: list[int], raw: np.ndarray) -> Future | None:
        """The chunk handed to the finishing process, or None if it has died meanwhile."""
        finishing = self.finishing
        if finishing is None:
            return None
        try:
            return finishing[0].submit(_finish_chunk, indices, raw)
        except BrokenProcessPool:
            self._lose_finishing()
            return None

    def _lose_finishing(self) -> None:
        """The finishing process died: every chunk is finished here from now on (those it
        held, by the writer, as it meets them). The feeder and the writer may both meet
        the death: one of them says it."""
        with self._losing:
            finishing, self.finishing = self.finishing, None
        if finishing is not None:
            finishing[0].shutdown(wait=False, cancel_futures=True)
            log.warning("the finishing process died (out of memory or killed): the job finishes every "
                        "chunk in its own process from here on")

    def close(self) -> None:
        if self.generator_pool is not None:
            self.generator_pool.shutdown(wait=True, cancel_futures=True)
            self.generator_pool = None
        if self.finishing is not None:
            self.finishing[0].shutdown(wait=True, cancel_futures=True)
            self.finishing = None


class _LocalProcesses:
    """``--workers N``: N processes, each with its own producer. Given the job's own
    ``producer`` they are forked from this process (see :func:`forks_workers`), else
    spawned.

    Where forked workers take every core the job may use, they count their generator
    passes (:class:`_Passes`), and the job's writer sits them out (:meth:`pause`) unless
    it is behind: a pass then has a core to itself while the other cores run the other
    workers' finishing, instead of sharing one with the writer."""

    WRITER_WAITS = True  # False: the writer writes through generator passes (for comparisons)
    #: Times the workers are started again after one dies (killed, out of memory), as Ray
    #: actors are (:attr:`_Ray.RESTARTS`): a chunk's bytes depend on its indices alone.
    RESTARTS = 3

    def __init__(self, spec: dict[str, Any], workers: int, producer: Producer | None = None,
                 head_start: _HeadStart | None = None) -> None:
        self.head_start = head_start
        self.passes: _Passes | None = None
        self.seconds = {"generator": 0.0, "generator cpu": 0.0, "finishing": 0.0}  # summed over the processes
        self.spec, self.producer, self.workers = spec, producer, workers
        self.restarts = 0
        self.pool = self._start()
        self._pending: set[Future] = set()  # submitted chunks
        self._ready: list[Future] = []  # chunks finished, not yet handed to the writer
        self._chunks: dict[Future, list[int]] = {}  # each submitted chunk's indices

    def _start(self) -> ProcessPoolExecutor:
        import multiprocessing

        producer = self.producer
        if producer is None:
            return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(self.spec,))
        context = multiprocessing.get_context("fork")
        if self.WRITER_WAITS and self.workers >= usable_cores():
            if self.passes is not None:  # a worker that died in a pass may hold its lock: a new one
                self.passes.close()
            self.passes = _Passes(context)
            self.seconds.setdefault("writer waiting", 0.0)  # in the job's process
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=context, initializer=_init_forked_worker,
            initargs=(self.spec, producer.plugins, producer.policy, producer.source, self.passes))

    def run(self, chunks: Sequence[list[int]]) -> Iterator[list[Produced]]:
        todo = list(chunks)
        generated: dict[int, np.ndarray] = {}  # a head start's passes, by their chunk's first index
        if self.head_start is not None:
            generated = {todo[position][0]: raw for position, raw in self.head_start.take().items()}
            for stage, value in self.head_start.seconds.items():
                self.seconds[stage] += value
            self.seconds["head start"] = self.head_start.seconds["generator"]  # of "generator"
        while todo or self._pending or self._ready:
            # Two chunks per worker submitted and not finished: finished ones the writer has
            # not taken yet do not count, so that the workers do not run dry while it sits out
            # a pass; at most three per worker held in all.
            while todo and len(self._pending) - self._finished() < 2 * self.workers \
                    and len(self._pending) + len(self._ready) < 3 * self.workers:
                chunk = todo.pop(0)
                try:
                    future = self.pool.submit(_work, chunk, generated.pop(chunk[0], None))
                except BrokenProcessPool:  # a worker died since the pool was last looked at
                    todo[:0] = self._restart(also=[chunk])
                    continue
                self._chunks[future] = chunk
                if self.passes is not None:
                    future.add_done_callback(lambda _f, passes=self.passes: passes.wake())
                self._pending.add(future)
            if not self._ready:
                done, self._pending = wait(self._pending, return_when=FIRST_COMPLETED)
                self._ready = list(done)
            try:
                produced, seconds = _unwrap(self._ready[0])
            except _WorkerDied:
                todo[:0] = self._restart()
                continue
            del self._chunks[self._ready.pop(0)]
            for stage, value in seconds.items():
                self.seconds[stage] += value
            yield produced

    def _restart(self, also: Sequence[list[int]] = ()) -> list[list[int]]:
        """After a worker died: new workers (forked again from the job's process), and the
        chunks to run again (those that had not finished with a result, and ``also``); up to
        :attr:`RESTARTS` times, then the job stops (a worker killed for memory each time)."""
        if self.restarts >= self.RESTARTS:
            raise ArtengineError(f"a generation worker died (out of memory or killed) again, after "
                                 f"{self.RESTARTS} restart(s); run the same command again to resume")
        self.restarts += 1
        kept: list[Future] = []
        again: list[list[int]] = list(also)  # chunks not submitted yet, but taken from those to do
        for future in [*self._ready, *self._pending]:
            if future.done() and not future.cancelled() and future.exception() is None:
                kept.append(future)
            else:
                again.append(self._chunks.pop(future))
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = self._start()
        self._ready, self._pending = kept, set()
        log.warning("a generation worker died (out of memory or killed): workers started again (%d of %d "
                    "restarts), %d chunk(s) run again", self.restarts, self.RESTARTS, len(again))
        return sorted(again, key=lambda chunk: chunk[0])

    def _finished(self) -> int:
        return sum(future.done() for future in self._pending)

    def _behind(self) -> bool:
        """Whether a finished chunk per worker waits for the writer, besides the one it writes."""
        return len(self._ready) + self._finished() >= self.workers

    def pause(self) -> None:
        """Before the writer writes an image: while a worker runs a generator pass, wait
        for it to end, unless the writer is a round of chunks behind (then it goes on: it
        never falls behind to make way for the generator), or the passes so far have
        spent less than half their time computing (a generator that waits on a device
        leaves its core free for the writer; one that waits for a core, as beside other
        busy programs, gains little by it). The workers do not run dry
        meanwhile: each keeps two chunks submitted (see :meth:`run`)."""
        if (self.passes is not None and not self._behind()
                and self.seconds["generator cpu"] >= 0.5 * self.seconds["generator"]):
            begin = time.perf_counter()
            self.passes.wait(enough=self._behind)
            self.seconds["writer waiting"] += time.perf_counter() - begin

    def close(self) -> None:
        if self.head_start is not None:
            self.head_start.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.passes is not None:
            self.passes.close()
            self.passes = None


class _WorkerDied(ArtengineError):
    """A worker process of the job ended without its result (killed, out of memory)."""


def _unwrap(future: Future) -> Any:
    try:
        return future.result()
    except BrokenProcessPool:
        raise _WorkerDied("a generation worker died (out of memory or killed); run the same command "
                          "again to resume") from None


class _Ray:
    """``--executor ray``: the same producers as Ray actors (local instance or a cluster).

    An actor whose process dies (a node lost, a worker killed for memory) is started again
    and its chunk run again, up to :attr:`RESTARTS` times each: a chunk's bytes depend on
    its indices alone, so the job goes on with the same bytes. An error a chunk raises is
    not retried: it would raise again."""

    RESTARTS = 3

    def __init__(self, spec: dict[str, Any], workers: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise InputError("--executor ray needs Ray: pip install 'artengine[ray]'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            import signal
            import threading

            # Ray's driver takes SIGTERM for itself (a crash report, exit 1); the job's
            # process keeps the handler it had (the command line stops the job cleanly on it).
            terminate = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # a bad address or a cluster that is down
                raise InputError(f"--ray-address {address or '(local)'}: cannot start or reach Ray: "
                                 f"{' '.join(str(exc).split())[:300]}") from None
            finally:
                if terminate is not None:
                    signal.signal(signal.SIGTERM, terminate)
            self.started = True
        actor = ray.remote(num_cpus=1, max_restarts=self.RESTARTS, max_task_retries=self.RESTARTS)(_RayProducer)
        self.actors = [actor.remote(spec) for _ in range(max(workers, 1))]
        self.seconds = {"generator": 0.0, "generator cpu": 0.0, "finishing": 0.0}  # summed over the actors

    def run(self, chunks: Sequence[list[int]]) -> Iterator[list[Produced]]:
        ray = self.ray
        todo = list(chunks)
        free = list(self.actors)
        running: dict[Any, Any] = {}
        while todo or running:
            while todo and free:
                actor = free.pop()
                running[actor.produce.remote(todo.pop(0))] = actor
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                free.append(running.pop(ref))
                try:
                    produced, seconds = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise ArtengineError(f"a Ray worker failed: {' '.join(str(exc).split())[:400]}") from None
                for stage, value in seconds.items():
                    self.seconds[stage] += value
                yield produced

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()


class _RayProducer:
    def __init__(self, spec: dict[str, Any]) -> None:
        _init_worker(spec)

    def produce(self, indices: list[int]) -> tuple[list[Produced], dict[str, float]]:
        return _work(indices)


# ----------------------------------------------------------------------------- writing


class Writer:
    """The single writer: files (read back and compared), sidecars, ledger, journal."""

    def __init__(self, out: Path, spec: Mapping[str, Any], plugins: Plugins, policy: Any, staged: bool) -> None:
        from .provenance import Ledger, default_ledger_path

        self.out = out
        self.spec = spec
        self.policy = policy
        self.staged = staged  # batch audits can still block: images wait in pending/
        self.ledger = Ledger(spec.get("ledger") or default_ledger_path())
        self.journal = Journal(out)
        self.features_key = features_key(spec, plugins)

    def close(self) -> None:
        self.journal.close()
        self.ledger.close()

    def commit(self, items: Sequence[Produced],
               pause: Callable[[], None] | None = None) -> list[tuple[dict[str, Any], bytes]]:
        """Write a chunk of finished images and journal them (a group commit: every file is
        fsynced, then each folder once, then the ledger and the journal once each).
        Returns each image's journal record with its line. ``pause()`` is called before
        each image and before the group commit (see :meth:`_LocalProcesses.pause`).

        A failure part-way (a full disk) still journals the images completely written
        before it, then raises: nothing already written is lost.
        """
        done: list[tuple[Produced, Path, dict[str, Any]]] = []
        lines: list[bytes] = []
        folders: set[Path] = set()
        try:
            for item in items:
                if pause is not None:
                    pause()
                path, record = self._write(item)
                folders.add(path.parent)
                done.append((item, path, record))
            if pause is not None and done:
                pause()
        finally:
            for folder in folders:
                fsync_dir(folder)
            if done:
                self.ledger.record_many([(item.manifest, str(path)) for item, path, _ in done])
                lines = self.journal.append_many([record for _, _, record in done])  # the commit point
        return [(record, line) for (_, _, record), line in zip(done, lines)]

    def _write(self, item: Produced) -> tuple[Path, dict[str, Any]]:
        from .provenance import sidecar_path

        findings = [_finding_from_dict(f) for f in item.findings]
        if item.provenance_error is None:
            provenance = Finding(audit="provenance", outcome="pass", item=item.name,
                                 message="verified: mark and signed manifest read back from the saved bytes",
                                 details={"status": "verified", "payload": item.manifest["watermark"]["payload"]})
        else:
            provenance = Finding(audit=ENGINE, outcome="error", item=item.name, message=item.provenance_error,
                                 details={"status": "tampered"})
        if "provenance" in self.policy.audits or provenance.audit == ENGINE:
            findings.append(provenance)
        verdict = judge(item.name, findings, self.policy)
        blocked = verdict.status in ("block", "error")
        folder = "quarantine" if blocked else ("pending" if self.staged else "approved")
        path = self.out / folder / item.name
        atomic_write_bytes(path, item.png, sync_dir=False)
        digest = hashlib.sha256(item.png).hexdigest()
        if path.read_bytes() != item.png:  # the bytes checked are the bytes stored
            findings.append(Finding(audit=ENGINE, outcome="error", item=item.name,
                                    message=f"{path}: the file reads back different from the bytes written",
                                    details={"status": "tampered"}))
            verdict = judge(item.name, findings, self.policy)
            if folder != "quarantine":
                target = self.out / "quarantine" / item.name
                os.replace(path, target)
                fsync_dir(path.parent)
                path, folder = target, "quarantine"
        atomic_write_bytes(sidecar_path(path), json.dumps(item.manifest, indent=2, sort_keys=True,
                                                          ensure_ascii=False).encode("utf-8") + b"\n",
                           sync_dir=False)
        record = {"type": "image", "index": item.index, "name": item.name, "folder": folder,
                  "sha256": digest, "verdict": verdict.status,
                  "payload": item.manifest["watermark"]["payload"], "meta": item.meta,
                  "findings": [f.as_dict() for f in findings]}
        if journaled := {name: entry for name, value in item.features.items()
                         if (entry := _journal_feature(value)) is not None}:
            # A resumed run's batch audits read them back instead of measuring the image again.
            record["features"] = {"key": self.features_key, "values": journaled}
        return path, record


def _missing_placed(out: Path, done: Mapping[int, Mapping[str, Any]]) -> list[int]:
    """Journaled images whose file or sidecar is no longer where the job put it (a
    pending one may have been placed by an interrupted finish): a folder listing each, not
    a lookup per image."""
    from .provenance import SIDECAR_SUFFIX

    present = {folder: set(os.listdir(out / folder)) if (out / folder).is_dir() else set() for folder in FOLDERS}

    def found(name: str, folders: Sequence[str]) -> bool:
        return any(name in present[folder] for folder in folders)

    gone = []
    for index, record in done.items():
        # A pending image and its sidecar are moved one after the other: a finish
        # interrupted in between leaves them in two folders, which it completes.
        folders = FOLDERS if record["folder"] == "pending" else (record["folder"],)
        if not (found(record["name"], folders) and found(record["name"] + SIDECAR_SUFFIX, folders)):
            gone.append(index)
    return sorted(gone)


class _AuditedAgainst:
    """What a job's images were audited against, where that can change between runs (a
    reference registry that grows): the versions their findings name
    (``details["versions"]``), and which of them have moved on since
    (:meth:`Audit.versions_now`, each audit asked once for all its names)."""

    def __init__(self, plugins: Plugins) -> None:
        from .audit import Audit

        self.classes = plugins.components("audits")
        self.seen: set[tuple[str, str, str | None]] = set()  # (audit, name, version)
        self.failed: dict[str, str] = {}  # audit -> why its versions_now raised
        #: Audits with inputs that can change (their class answers versions_now): a finding
        #: of one that names no versions was made before they were recorded (stop 45).
        self.versioned = {name for name, cls in self.classes.items()
                          if getattr(cls.versions_now, "__func__", None) is not Audit.versions_now.__func__}
        self.unrecorded = False  # such a finding among those noted

    @staticmethod
    def versions(finding: Mapping[str, Any]) -> Mapping[str, str | None] | None:
        """What a journaled finding says it was checked against, if anything."""
        return (finding.get("details") or {}).get("versions")

    def note(self, record: Mapping[str, Any]) -> None:
        for finding in record["findings"]:
            versions = self.versions(finding)
            if versions and finding["audit"] in self.classes:
                self.seen.update((finding["audit"], name, version) for name, version in versions.items())
            elif versions is None and finding["audit"] in self.versioned:
                self.unrecorded = True

    def now(self) -> dict[str, Mapping[str, str | None]]:
        names: dict[str, set[str]] = {}
        for audit, name, _ in self.seen:
            names.setdefault(audit, set()).add(name)
        now: dict[str, Mapping[str, str | None]] = {}
        for audit, asked in names.items():
            try:
                now[audit] = self.classes[audit].versions_now(sorted(asked))
            except Exception as exc:  # a plugin that cannot tell: as if nothing could be read
                now[audit] = dict.fromkeys(asked)
                self.failed[audit] = f"{type(exc).__name__}: {exc}"
        return now

    def unreadable(self, now: Mapping[str, Mapping[str, str | None]]) -> str | None:
        """A line naming an input images were audited against that cannot be read now (a
        registry moved away, a disk not mounted), if any: such a job is refused, rather than
        its images made again with errors."""
        for audit, name, version in sorted(self.seen, key=str):
            if version is not None and name in now.get(audit, {}) and now[audit][name] is None:
                why = f" ({self.failed[audit]})" if audit in self.failed else ""
                return f"{audit}: {name} cannot be read now{why}; the job's images were audited against it"
        return None

    def moved(self, now: Mapping[str, Mapping[str, str | None]]) -> bool:
        """Whether a version seen has moved on; the ones that have not are kept."""
        current = {(a, n, v) for a, n, v in self.seen if now.get(a, {}).get(n, v) == v}
        moved, self.seen = current != self.seen, current
        return moved

    def stale(self, records: Iterable[tuple[int, Mapping[str, Any]]],
              now: Mapping[str, Mapping[str, str | None]]) -> tuple[list[int], str, bool]:
        """The images among ``records`` audited against a version that has moved on, or
        against versions not recorded (by a run before they were), a line naming the first
        change, and whether that first is an unrecorded one."""
        stale: list[int] = []
        first, unrecorded = "", False
        for index, record in records:
            for finding in record["findings"]:
                versions = self.versions(finding)
                if versions is None and finding["audit"] in self.versioned:
                    stale.append(index)
                    if not first:
                        first, unrecorded = f"{finding['audit']}: a run before stop 45", True
                    break
                current = now.get(finding["audit"])
                if not versions or current is None:
                    continue
                changed = [name for name, then in versions.items() if current.get(name, then) != then]
                if changed:
                    stale.append(index)
                    name = changed[0]
                    first = first or (f"{finding['audit']}: {name} was {versions[name] or 'unreadable'}, "
                                      f"is {current[name] or 'unreadable'} now")
                    break
        return sorted(stale), first, unrecorded


def _replaced(out: Path, old: Path, now: Mapping[str, Any]) -> None:
    """Remove an image's file and sidecar from where they were (``old``) once its new
    record (audited again) is journaled, unless the new ones took their place. A crash
    before this leaves them to :func:`_clean_unjournaled`, or to the final placement,
    which moves a pending image last."""
    from .provenance import sidecar_path

    if old == out / now["folder"] / now["name"]:
        return
    for path in (old, sidecar_path(old)):
        path.unlink(missing_ok=True)


def _clean_unjournaled(out: Path, done: Mapping[int, Mapping[str, Any]]) -> int:
    """Remove temporaries and files written but never journaled (a crash in between)."""
    from .provenance import SIDECAR_SUFFIX

    removed = 0
    for folder in FOLDERS:
        root = out / folder
        removed += remove_stray_temps(root, recursive=False)
        if not root.is_dir():
            continue
        for path in root.iterdir():
            name = path.name.removesuffix(SIDECAR_SUFFIX)
            stem = name.removesuffix(".png")
            if not stem.isdigit():
                continue
            record = done.get(int(stem))
            # A pending image may already have been moved by an interrupted finish.
            if record is None or record["folder"] not in (folder, "pending"):
                path.unlink()
                removed += 1
    return removed


# ----------------------------------------------------------------------------- the job


class _FrozenHeap:
    """Python's collector kept off what a job has loaded once it is loaded (``gc.freeze``).

    A job's process holds some 400,000 tracked objects once torch, CLIP and the model are
    in; each full collection walked all of them (about 0.2 s), in the job's process and
    again in every process forked from it, about once per thousand images each. Frozen
    before the workers are forked, they are left out of every collection (and forked
    processes stop touching the pages they share with this one). :meth:`thaw` puts them
    back when the job ends, so a long-lived process that runs many jobs still collects
    what a finished job leaves behind. Nothing is frozen where something else in the
    process already froze objects: that freeze is its owner's to undo.
    """

    def __init__(self) -> None:
        self.frozen = False

    def freeze(self) -> None:
        if not self.frozen and gc.get_freeze_count() == 0:
            gc.freeze()
            self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            gc.unfreeze()
            self.frozen = False


def generate(options: GenerateOptions, plugins: Plugins | None = None,
             on_image: Callable[[dict[str, Any]], None] | None = None) -> GenerateResult:
    """Run (or resume) a generation job. See the module docstring."""
    heap = _FrozenHeap()
    lock = JobLock(Path(options.out))
    try:
        return _generate(options, plugins, on_image, heap, lock)
    finally:
        lock.release()
        heap.thaw()


def _generate(options: GenerateOptions, plugins: Plugins | None,
              on_image: Callable[[dict[str, Any]], None] | None, heap: _FrozenHeap, lock: JobLock) -> GenerateResult:
    from tqdm import tqdm

    from .policy import load_policy, parse_override

    plugins = plugins or get_plugins()
    out = Path(options.out)
    created = _missing_folders(out)
    _check_writable(out)
    try:
        spec = build_spec(options, plugins)
        existing = out / "job.json"
        if existing.exists():  # resume: the job's time and id are the stored ones, and its encoding
            try:
                stored = json.loads(existing.read_text())
                spec["created"] = stored.get("created", spec["created"])
                for key in ENCODING:
                    if getattr(options, key) is None and key in stored:
                        spec[key] = stored[key]
            except (OSError, ValueError, AttributeError):
                pass
            _check_encoding(spec, where=f"{existing}: PNG encoding")
        spec["job_id"] = job_id(spec)
        _check_job_memory(int(spec["count"]))
    except ArtengineError:
        for folder in created:  # refused before the job began: no folder of ours left behind
            try:
                folder.rmdir()
            except OSError:  # not empty (or not ours to remove): it stays, and so do its parents
                break
        raise
    # The count is not part of what an image is (image i depends on the model, the seed,
    # i and the conditioning only), so a job may be given a new --count: it grows, or
    # shrinks as long as no image at or past the new count is made.
    # Before the journal is read (out exists: _check_writable): a run already working here refuses this one.
    lock.acquire()
    state = start_job(out, spec, compare=(*(key for key in DEFINING if key != "count"), "job_id"))
    count_before = _recount(out, state, int(spec["count"]))
    spec = state.spec
    for folder in FOLDERS:
        (out / folder).mkdir(parents=True, exist_ok=True)
    gone = _missing_placed(out, state.done)
    if gone:  # deleted or moved away since: made again (the same bytes), not reported from the journal
        log.warning("%d journaled image(s) no longer in %s (first: %s): making them again",
                    len(gone), out, state.done[gone[0]]["name"])
        for index in gone:
            del state.done[index]
    against = _AuditedAgainst(plugins)
    for record in state.done.values():
        against.note(record)
    now = against.now()
    problem = against.unreadable(now)
    if problem is not None:
        raise InputError(f"{problem}: make it readable again, or use a new --out folder")
    changed, first, unrecorded = (against.stale(state.done.items(), now) if against.moved(now) or against.unrecorded
                                  else ([], "", False))
    # Audited again: their files stay until their new ones are journaled (a crash before
    # finds them still stale), and are read back, where they hold the bytes journaled,
    # instead of made again.
    stale = {index: state.done.pop(index) for index in changed}
    again = {index: _placed(out, record) for index, record in stale.items()}  # where their files are
    read_back = {index: (str(again[index]), record["sha256"])
                 for index, record in stale.items() if record.get("sha256")}
    if changed:
        log.warning("%d journaled image(s) were audited against %s (%s): auditing them again", len(changed),
                    "what was not recorded" if unrecorded else "what has changed since", first)
    removed = _clean_unjournaled(out, {**state.done, **stale})
    if removed:
        log.info("removed %d stray or unjournaled file(s) from an interrupted run", removed)

    todo = [i for i in range(spec["count"]) if i not in state.done]
    workers = options.workers or default_workers(len(todo), options.executor, options.chunk)
    in_process = workers <= 1 and options.executor == "local"
    runs = bool(todo)  # False: nothing left to produce, only the report
    chunks = [todo[s:s + options.chunk] for s in range(0, len(todo), options.chunk)]
    generator_pool = finishing = head_start = None
    if read_back:  # to every process that makes pixels (PixelSource), not to job.json
        spec = {**spec, "read_back": read_back}
    generator_process = in_process and runs and _InProcess.uses_process(len(todo))
    if generator_process and not forks_workers():
        generator_pool = start_generator_process(spec)  # spawned now: its start-up overlaps the job's
    try:
        policy = load_policy(spec["policy"]["path"], audits=plugins.components("audits"),
                             features=plugins.components("feature_extractors"))
        policy = policy.with_overrides([parse_override(o) for o in spec.get("overrides", [])])
        # The job's producer: the one-worker pipeline's, or what local workers are forked from.
        forked = workers > 1 and options.executor == "local" and runs and forks_workers()
        source = None
        if forked and _HeadStart.wanted():  # the first chunks' passes start while the rest loads
            import multiprocessing

            source = PixelSource(spec, plugins)
            head_start = _HeadStart(source, chunks, multiprocessing.get_context("fork"))
        producer = Producer(spec, plugins, source=source, policy=policy) if runs and (in_process or forked) else None
        heap.freeze()  # everything loaded: before any process is forked from this one
        if generator_process and producer is not None and generator_pool is None:
            generator_pool = start_generator_process(spec, producer.source)  # forked, the model loaded
        if generator_pool is not None and _InProcess.finishing_process() != "0":
            finishing = start_finishing_process(spec, plugins, policy)
        batch_audits = producer.runner.batch_audits if producer else _batch_audit_names(policy, plugins)
        writer = Writer(out, spec, plugins, policy, staged=bool(batch_audits))
    except BaseException:
        for pool in (generator_pool, finishing[0] if finishing else None):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        if head_start is not None:
            head_start.close()
        raise

    resumed = spec["count"] - len(todo)
    # Until the finish, each image is held as its journal line: about 2 KB, against about
    # 9.5 KB as Python objects (docs/generation.md, "Memory").
    records: dict[int, bytes] = {index: state.lines[index] for index in state.done}
    batch_features = {index: found for index, record in state.done.items()
                      if (found := _journaled_features(record, writer.features_key))}
    counts = {"approved": 0, "quarantined": 0}
    for record in state.done.values():
        counts["quarantined" if record["folder"] == "quarantine" else "approved"] += 1
    state.done.clear()
    seconds = {"writing": 0.0}
    if runs:
        if in_process:
            assert producer is not None
            executor: Any = _InProcess(producer, spec, generator_pool=generator_pool, finishing=finishing)
        elif options.executor == "ray":
            executor = _Ray(spec, workers, options.ray_address)
        else:
            executor = _LocalProcesses(spec, workers, producer=producer, head_start=head_start)
        bar = tqdm(total=spec["count"], initial=resumed, desc="generating", unit="img",
                   disable=None if options.progress else True)
        try:
            for produced in executor.run(chunks):
                begin = time.perf_counter()
                committed = writer.commit(produced, pause=getattr(executor, "pause", None))
                seconds["writing"] += time.perf_counter() - begin
                for item, (record, line) in zip(produced, committed):
                    if item.index in again:  # its new file journaled: the one it replaces goes
                        _replaced(out, again.pop(item.index), record)
                    records[item.index] = line
                    against.note(record)
                    batch_features[item.index] = item.features
                    counts["quarantined" if record["folder"] == "quarantine" else "approved"] += 1
                    bar.set_postfix(counts, refresh=False)
                    bar.update(1)
                    if on_image is not None:
                        on_image(record)
        finally:
            bar.close()
            executor.close()
            seconds.update(getattr(executor, "seconds", {}))
            seconds["writing"] -= seconds.get("writer waiting", 0.0)  # that is counted on its own
    now = against.now()
    if against.moved(now):  # a registry changed while the job ran: said, and left to the next run
        moved, first, _ = against.stale(((i, json.loads(line)) for i, line in records.items()), now)
        log.warning("%d image(s) were audited against what changed while the job ran (%s): the same "
                    "command audits them again", len(moved), first)
    try:
        begin = time.perf_counter()
        result = _finish(out, spec, options, plugins, policy, records, batch_features, writer, resumed)
        seconds["batch"] = time.perf_counter() - begin
        result.stage_seconds = seconds
        result.workers = workers
        result.count_before = count_before
        return result
    finally:
        writer.close()


def _batch_audit_names(policy: Any, plugins: Plugins) -> list[str]:
    from .audit import Audit

    names = []
    classes = plugins.components("audits")
    for name, rule in policy.audits.items():
        cls = classes.get(name)
        if rule.enabled and cls is not None and (not cls.per_image or cls.check_batch is not Audit.check_batch):
            names.append(name)
    return names


def _check_job_memory(count: int) -> None:
    """Refuse, before anything is written, a job whose count cannot be held to its end: a
    job keeps about :data:`JOB_BYTES_PER_IMAGE` per image (its journal line, its batch
    features, its report entry), so an absurd ``--count`` would otherwise run out of
    memory, after hours or at once."""
    available = available_memory()
    if available is not None and count * JOB_BYTES_PER_IMAGE > available:
        raise InputError(f"--count {count}: a job keeps about {JOB_BYTES_PER_IMAGE / 1000:.0f} KB per image until "
                         f"its end (the report lists every image), about {count * JOB_BYTES_PER_IMAGE / 1e9:.1f} GB; "
                         f"{available / 1e9:.1f} GB is available: split it into jobs of at most about "
                         f"{available // JOB_BYTES_PER_IMAGE} images")


def _recount(out: Path, state: JobState, count: int) -> int | None:
    """Give a resumed job the ``count`` asked for now, in ``job.json`` before anything
    else is written; refused when images at or past it are already made (a job's images
    are never dropped). Returns the count it had, when it changes."""
    before = int(state.spec["count"])
    if count == before:
        return None
    made = max(state.done, default=-1)
    if made >= count:
        can = "only grow" if made + 1 >= before else f"grow, or shrink to {made + 1} at least"
        raise InputError(f"--count {count}: {out} holds a job of {before} images, made up to "
                         f"{image_name(made)}; its --count can {can}")
    state.spec["count"] = count
    atomic_write_json(out / JOB_FILE, state.spec)
    log.info("%s: the job's --count goes from %d to %d", out, before, count)
    return before


def _missing_folders(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist yet, innermost first: what
    ``_check_writable`` creates."""
    missing = []
    path = out.absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: folder is not writable")


def _finish(out: Path, spec: Mapping[str, Any], options: GenerateOptions, plugins: Plugins, policy: Any,
            records: dict[int, bytes], batch_features: dict[int, dict[str, Any]], writer: Writer,
            resumed: int) -> GenerateResult:
    """Batch audits, final placement, report. Re-entrant: a resumed job redoes what the
    crash interrupted. ``records`` holds each image's journal line; they are read one at a
    time, so the job's images are held at once only as the report's entries."""
    from .auditor import AuditRunner
    from .gate import disabled_findings
    from .report import ImageEntry, build_report, write_report

    runner = AuditRunner(policy, plugins, job_context(spec, policy.path, plugins))
    for name in PIPELINE_AUDITS:
        runner.audits.pop(name, None)
    ordered = [records[i] for i in sorted(records)]
    batch_findings: list[Finding] = []
    if runner.batch_audits:
        items, findings = _batch_items(out, ordered, batch_features, runner)
        batch_findings = runner.check_batch(items, findings)
        del items, findings
    batch_findings += disabled_findings(policy)
    batch = judge(None, batch_findings, policy)
    batch_blocks = batch.status in ("block", "error")

    # Final placement: pending images go to approved/ unless the batch verdict blocks. The
    # report's entries are made as it takes them.
    thumbnailed: list[tuple[str, Path]] = []
    tally = {"approved": 0, "quarantined": 0}

    def entries() -> Iterator[ImageEntry]:
        for line in ordered:
            record = json.loads(line)
            folder = record["folder"]
            if folder == "pending":  # placed by the batch verdict: from pending/, or from where
                # an earlier finish of the job placed it (a job given a larger --count may
                # now have a batch verdict of the other way)
                folder = "quarantine" if batch_blocks else "approved"
                other = "approved" if batch_blocks else "quarantine"
                # pending/ last: a file there is the latest made (an image audited again
                # whose earlier file a crash left in the other folder)
                for source in (other, "pending"):
                    _move_with_sidecar(out / source / record["name"], out / folder / record["name"])
            path = out / folder / record["name"]
            tally["approved" if folder == "approved" else "quarantined"] += 1
            verdict = judge(record["name"], [_finding_from_dict(f) for f in record["findings"]], policy)
            if verdict.status != "pass" or len(thumbnailed) < 240:
                thumbnailed.append((record["name"], path))
            yield ImageEntry(key=record["name"], path=str(path), verdict=verdict, meta=record["meta"],
                             location=folder)

    run = _run_section(spec)
    doc = build_report(kind="generate", images=entries(), batch=batch, policy=policy.as_dict(),
                       engine=dict(spec["engine"]), plugins=plugins.versions(),
                       inputs={"model": spec["model"], "seed": spec["seed"], "count": spec["count"],
                               "labels": spec["labels"], "style_ref": spec["style_ref"], "size": spec["size"],
                               "registries": spec["registries"], "job": spec["job_id"], "out": str(out)},
                       run=run)
    if not any((out / "pending").iterdir()):
        (out / "pending").rmdir()
    thumbs = _thumbnails(thumbnailed)
    report_dir = options.report_dir or out / "report"
    json_path, html_path = write_report(report_dir, doc, thumbs)
    approved, quarantined = tally["approved"], tally["quarantined"]
    writer.journal.append({"type": "finished", "verdict": doc["verdict"], "batch": batch.status,
                           "approved": approved, "quarantined": quarantined})
    plugins.hook.artengine_report_written(json_path=str(json_path), html_path=str(html_path), report=doc)
    plugins.hook.artengine_batch_finished(summary={**doc["summary"], "verdict": doc["verdict"],
                                                   "report": str(json_path), "out": str(out)})
    return GenerateResult(out=out, count=len(ordered), approved=approved, quarantined=quarantined,
                          verdict=doc["verdict"], exit_code=doc["exit_code"], report_json=json_path,
                          report_html=html_path, resumed=resumed)


def _thumbnails(files: Sequence[tuple[str, Path]]) -> dict[str, str]:
    """The report's thumbnails of ``files`` (name, path), in order, made on one thread per
    core: decoding, resizing and JPEG encoding release the GIL (240 thumbnails: 2.5 against
    4.4 ms each on 2 cores; the end of a 1,024-image job 0.90 against 1.02 s). A file that
    cannot be read gets none."""
    from .report import thumbnail_uri

    def one(path: Path) -> str | None:
        try:
            return thumbnail_uri(open_image(path).rgb)
        except ArtengineError:
            return None

    if not files:
        return {}
    with ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="artengine-thumbnails") as pool:
        made = list(pool.map(one, [path for _, path in files]))
    return {name: uri for (name, _), uri in zip(files, made) if uri is not None}


def _move_with_sidecar(source: Path, target: Path) -> None:
    from .provenance import sidecar_path

    if source.exists():
        os.replace(source, target)
    if sidecar_path(source).exists():
        os.replace(sidecar_path(source), sidecar_path(target))


def _batch_items(out: Path, lines: Sequence[bytes], features: Mapping[int, Mapping[str, Any]],
                 runner: Any) -> tuple[list[AuditItem], list[Finding]]:
    """Items for batch audits, from the images' journal lines: features made during this
    run, recomputed from the files for images a previous (interrupted) run made (only those
    the batch audits need). With them, the images' findings of the batch audits."""
    needed = {f for audit in runner.batch_audits for f in audit.needs}
    names = {audit.name for audit in runner.batch_audits}
    items: list[AuditItem] = []
    findings: list[Finding] = []
    missing: list[tuple[AuditItem, Path]] = []
    for line in lines:
        record = json.loads(line)
        findings += [_finding_from_dict(f) for f in record["findings"] if f["audit"] in names]
        item = AuditItem(key=record["name"], image=None, meta=dict(record["meta"]))
        known = features.get(int(record["index"]))
        if known and needed <= known.keys():
            item.features.update(known)
        else:
            missing.append((item, _placed(out, record)))
        items.append(item)
    for start in range(0, len(missing), 32):  # decoded 32 at a time
        chunk = missing[start:start + 32]
        for item, path in chunk:
            item.image = open_image(path)
        runner.features([item for item, _ in chunk], names=needed)
        for item, _ in chunk:
            item.image = None
    return items, findings


def _placed(out: Path, record: Mapping[str, Any]) -> Path:
    """Where a journaled image is now: its folder, or, for a pending one that a finish
    interrupted after its move (or a finished job run again) placed, approved/ or quarantine/."""
    path = out / record["folder"] / record["name"]
    if record["folder"] == "pending" and not path.exists():
        for folder in ("approved", "quarantine"):
            if (out / folder / record["name"]).exists():
                return out / folder / record["name"]
    return path


def _run_section(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    path = Path(spec["model"]["path"])
    if not path.is_dir():
        return None
    try:
        from .runs import run_summary

        return run_summary(path)
    except (OSError, ValueError, KeyError, ArtengineError):
        return None
