"""The audit API: what audit plugins implement, and the features they share.

An audit plugin subclasses :class:`Audit`, declares its policy settings and the shared
features it ``needs``, and returns :class:`artengine.Finding` objects. The engine computes
each needed feature once per image with the registered :class:`FeatureExtractor` and puts
it in ``AuditItem.features`` before any audit runs. The gate, not the audit, decides what a
finding means for publication (warn or block), from the policy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import PolicyError
from .io import LoadedImage
from .records import Finding

_REQUIRED = object()


@dataclass(frozen=True)
class Setting:
    """One policy setting of an audit (or feature extractor): its type, default and help."""

    type: type | tuple[type, ...]
    default: Any = _REQUIRED
    help: str = ""
    choices: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def validate_settings(
    schema: Mapping[str, Setting], values: Mapping[str, Any], *, source: str, prefix: str
) -> dict[str, Any]:
    """Check ``values`` against ``schema``; fill defaults. Errors name ``source`` (the
    policy file) and the dotted field (``prefix.field``)."""
    out: dict[str, Any] = {}
    for key in values:
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            raise PolicyError(source, f"{prefix}.{key}", f"unknown field (known: {known})")
    for key, setting in schema.items():
        if key not in values:
            if setting.required:
                raise PolicyError(source, f"{prefix}.{key}", "required field is missing")
            out[key] = setting.default
            continue
        value = values[key]
        expected = setting.type if isinstance(setting.type, tuple) else (setting.type,)
        ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)
        if not ok and float in expected and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            names = " or ".join(t.__name__ for t in expected)
            raise PolicyError(source, f"{prefix}.{key}",
                              f"expected {names}, got {type(value).__name__} {value!r}")
        if setting.choices is not None and value not in setting.choices:
            raise PolicyError(source, f"{prefix}.{key}",
                              f"must be one of {', '.join(map(repr, setting.choices))}, got {value!r}")
        out[key] = value
    return out


@dataclass
class AuditContext:
    """Run-wide inputs the CLI collected for audits and feature extractors.

    An audit that needs one of these and finds it missing returns an ``error`` finding
    (which blocks), never a ``pass``.
    """

    policy_path: str = ""
    #: Reference registries (SQLite) of copyrighted training images: from --registry, the
    #: policy, and the styles whose outputs are audited.
    registries: list[str] = field(default_factory=list)
    #: Dataset name or folder the outputs are compared with (--reference-data).
    reference_data: str | None = None
    #: Attribute -> value -> probability, declared or measured on the training data.
    reference_distribution: dict[str, dict[str, float]] | None = None
    #: The training run (or style) that produced the images, when known.
    run_dir: str | None = None
    #: CLIP model chosen by the user (None: the shipped offline tiny CLIP).
    clip_model: str | None = None
    clip_pretrained: str | None = None
    #: Provenance: folder of signing/watermark keys and the ledger database.
    keys_dir: str | None = None
    ledger: str | None = None
    #: Anything else a plugin-provided CLI option or policy section adds.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditItem:
    """One image under audit, with everything computed for it once."""

    key: str  # stable identifier: the path relative to the audited folder, or the job index
    #: The pixels. ``None`` in ``check_batch``: pixels are not kept for a whole batch, so
    #: batch statistics work from ``features`` and ``meta``.
    image: LoadedImage | None
    #: What is known about the image: for artengine outputs "index", "seed", "label" (class
    #: name), "style", "model", and "manifest" (the embedded manifest dict), when present.
    meta: dict[str, Any] = field(default_factory=dict)
    #: Filled by feature extractors before audits run, e.g. "hashes" (algorithm -> uint64
    #: array) and "clip" (L2-normalised float32 embedding).
    features: dict[str, Any] = field(default_factory=dict)


class FeatureExtractor:
    """Computes one named feature for a batch of images, once, for every consumer.

    Subclasses set ``name`` and implement :meth:`compute`. ``settings`` come from the
    policy's ``[features.<name>]`` table, validated against ``settings_schema``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    settings_schema: ClassVar[Mapping[str, Setting]] = {}

    def __init__(self, settings: Mapping[str, Any], context: AuditContext) -> None:
        self.settings = dict(settings)
        self.context = context

    def compute(self, items: Sequence[AuditItem]) -> list[Any]:
        """Return one feature value per item, in order."""
        raise NotImplementedError


class Audit:
    """Base class of audit plugins.

    Subclasses set ``name`` (the policy's ``[audits.<name>]`` table), ``description``,
    ``needs`` (feature names), ``settings_schema``, and implement :meth:`check_image`
    (``per_image = True``) and/or :meth:`check_batch`. ``context`` carries run-wide inputs
    the CLI collected (registries, reference data, models); an audit that needs one that is
    missing returns an ``error`` finding, never a ``pass``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    per_image: ClassVar[bool] = True
    settings_schema: ClassVar[Mapping[str, Setting]] = {}

    def __init__(self, settings: Mapping[str, Any], context: AuditContext) -> None:
        self.settings = dict(settings)
        self.context = context

    def check_image(self, item: AuditItem) -> Finding:
        """Audit one image; return exactly one :class:`Finding` with ``item=item.key``."""
        raise NotImplementedError(f"audit {self.name!r} has no per-image check")

    def check_batch(self, items: Sequence[AuditItem], findings: Sequence[Finding]) -> list[Finding]:
        """Audit the batch as a whole (statistics); ``findings`` are the per-image ones."""
        return []

    @classmethod
    def versions_now(cls, names: Sequence[str]) -> dict[str, str | None]:
        """The current versions of inputs this audit checks against, which may change
        between runs (a reference registry that grows).

        A per-image finding names the versions it was checked against in
        ``details["versions"]`` (input name -> version; every finding of an audit that
        answers this method, or its image is audited again at each run). A job run again
        asks for the versions of those names now, and audits again every journaled image
        whose finding names one that differs (its pixels read back from its file); one
        that cannot be read now (None), or this method raising, refuses the run in one
        line. Names left out of the result count as unchanged; the default is an audit
        with no such inputs.
        """
        return {}
