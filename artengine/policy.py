"""Policies: what may be published, as a TOML file.

A policy names the audits to run, whether each is required, what a failed check means
(``severity``: warn or block), per-audit settings (validated against the audit's own
``settings_schema``), the shared feature settings, reference registries, and explicit
overrides. Every problem in a policy file is one :class:`~artengine.errors.PolicyError`
naming the file and the dotted field.

Schema (version 1)::

    [policy]
    name = "publication"          # required
    version = 1                   # schema version; required
    description = "..."

    [audits.<audit name>]         # one table per audit; the name must be a loaded audit
    enabled = true                # default true
    required = true               # default true: disabled or missing => blocks
    severity = "block"            # what outcome "fail" means: "warn" or "block"
    timeout_seconds = 120         # per image (per batch for batch audits)
    # ... any other key is the audit's own setting, checked against its schema

    [features.<extractor name>]   # settings of shared feature extractors (e.g. clip)

    registries = ["refs.db"]      # top-level: reference registries, relative to the file

    [[overrides]]                 # explicit, recorded in every report
    audit = "near_duplicate"
    reason = "registry rebuilt nightly; reviewed by legal 2026-11-20"
"""
from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .audit import Setting, validate_settings
from .errors import PolicyError

SCHEMA_VERSION = 1
SEVERITIES = ("warn", "block")
#: Keys of an ``[audits.X]`` table that belong to the gate, not to the audit.
GATE_KEYS: dict[str, Setting] = {
    "enabled": Setting(bool, True, "run this audit"),
    "required": Setting(bool, True, "a disabled, erroring or missing audit blocks publication"),
    "severity": Setting(str, "block", "what a failed check means", choices=SEVERITIES),
    "timeout_seconds": Setting(float, 120.0, "time limit per image (per batch for batch checks)"),
}
_TOP_KEYS = {"policy", "audits", "features", "registries", "overrides"}
_POLICY_KEYS = {"name": Setting(str), "version": Setting(int),
                "description": Setting(str, "")}


@dataclass(frozen=True)
class AuditRule:
    """How the gate treats one audit, plus the audit's own validated settings."""

    name: str
    enabled: bool
    required: bool
    severity: str
    timeout_seconds: float
    settings: dict[str, Any]


@dataclass(frozen=True)
class Override:
    """An explicit permission to publish despite an audit error, unknown or disabled
    audit. Recorded in every report."""

    audit: str
    reason: str
    source: str  # "policy" or "command line"


@dataclass(frozen=True)
class Policy:
    """A validated policy file."""

    path: str
    name: str
    description: str
    audits: dict[str, AuditRule]
    features: dict[str, dict[str, Any]]
    registries: list[str]
    overrides: list[Override]
    sha256: str
    raw: dict[str, Any] = field(repr=False)

    def with_overrides(self, extra: list[Override]) -> "Policy":
        known = set(self.audits)
        for o in extra:
            if o.audit not in known:
                raise PolicyError(self.path, f"--override {o.audit}",
                                  f"no audit of that name in this policy (audits: {', '.join(sorted(known))})")
        return Policy(self.path, self.name, self.description, self.audits, self.features,
                      self.registries, [*self.overrides, *extra], self.sha256, self.raw)

    def overridden(self, audit: str) -> Override | None:
        return next((o for o in self.overrides if o.audit == audit), None)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "description": self.description,
                "sha256": self.sha256, "content": self.raw,
                "overrides": [o.__dict__ for o in self.overrides]}


def shipped_policy(name: str) -> Path:
    """Path of a policy shipped with artengine (``default``, ``publication``, ...)."""
    base = resources.files("artengine.policies")
    candidate = base / f"{name}.toml"
    if not candidate.is_file():
        names = sorted(p.name.removesuffix(".toml") for p in base.iterdir() if p.name.endswith(".toml"))
        raise PolicyError(name, "", f"no such shipped policy (shipped: {', '.join(names)})")
    return Path(str(candidate))


def resolve_policy_path(spec: str | Path) -> Path:
    """A policy file path, or the name of a shipped policy (``publication``)."""
    path = Path(spec)
    if path.exists() or path.suffix == ".toml" or "/" in str(spec):
        return path
    return shipped_policy(str(spec))


def load_policy(spec: str | Path, *, audits: Mapping[str, Any],
                features: Mapping[str, Any] | None = None) -> Policy:
    """Read and validate a policy. ``audits`` and ``features`` are the loaded audit and
    feature-extractor classes by name (from the plugin registry)."""
    path = resolve_policy_path(spec)
    where = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(where, "", "policy file not found") from None
    except OSError as exc:
        raise PolicyError(where, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(where, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(where, "", f"not valid TOML: {exc}") from None

    for key in raw:
        if key not in _TOP_KEYS:
            raise PolicyError(where, key, f"unknown field (known: {', '.join(sorted(_TOP_KEYS))})")
    head = _table(raw, "policy", where, required=True)
    head = validate_settings(_POLICY_KEYS, head, source=where, prefix="policy")
    if head["version"] != SCHEMA_VERSION:
        raise PolicyError(where, "policy.version",
                          f"schema version {head['version']} is not supported (this artengine reads {SCHEMA_VERSION})")

    rules: dict[str, AuditRule] = {}
    audit_tables = _table(raw, "audits", where, required=True)
    if not audit_tables:
        raise PolicyError(where, "audits", "a policy must configure at least one audit")
    for name, table in audit_tables.items():
        prefix = f"audits.{name}"
        if not isinstance(table, dict):
            raise PolicyError(where, prefix, f"expected a table, got {type(table).__name__}")
        if name not in audits:
            raise PolicyError(where, prefix,
                              f"unknown audit (loaded audits: {', '.join(sorted(audits)) or 'none'}); "
                              "is its plugin installed and allowed?")
        gate = validate_settings(GATE_KEYS, {k: v for k, v in table.items() if k in GATE_KEYS},
                                 source=where, prefix=prefix)
        if gate["timeout_seconds"] <= 0:
            raise PolicyError(where, f"{prefix}.timeout_seconds", "must be positive")
        own = {k: v for k, v in table.items() if k not in GATE_KEYS}
        schema = getattr(audits[name], "settings_schema", {})
        settings = validate_settings(schema, own, source=where, prefix=prefix)
        rules[name] = AuditRule(name=name, settings=settings, **gate)

    feature_settings: dict[str, dict[str, Any]] = {}
    for name, table in _table(raw, "features", where).items():
        prefix = f"features.{name}"
        if features is not None and name not in features:
            raise PolicyError(where, prefix, f"unknown feature extractor (loaded: {', '.join(sorted(features))})")
        if not isinstance(table, dict):
            raise PolicyError(where, prefix, f"expected a table, got {type(table).__name__}")
        schema = getattr(features[name], "settings_schema", {}) if features else {}
        feature_settings[name] = validate_settings(schema, table, source=where, prefix=prefix)

    registries = raw.get("registries", [])
    if not isinstance(registries, list) or not all(isinstance(r, str) for r in registries):
        raise PolicyError(where, "registries", "expected a list of file paths")
    registries = [str((path.parent / r).resolve()) if not Path(r).is_absolute() else r for r in registries]

    overrides = []
    raw_overrides = raw.get("overrides", [])
    if not isinstance(raw_overrides, list):
        raise PolicyError(where, "overrides", "expected an array of tables ([[overrides]])")
    for i, entry in enumerate(raw_overrides):
        prefix = f"overrides[{i}]"
        if not isinstance(entry, dict):
            raise PolicyError(where, prefix, "expected a table with audit and reason")
        entry = validate_settings({"audit": Setting(str), "reason": Setting(str)}, entry,
                                  source=where, prefix=prefix)
        if entry["audit"] not in rules:
            raise PolicyError(where, f"{prefix}.audit", f"no audit {entry['audit']!r} in this policy")
        if not entry["reason"].strip():
            raise PolicyError(where, f"{prefix}.reason", "an override needs a reason")
        overrides.append(Override(audit=entry["audit"], reason=entry["reason"], source="policy"))

    return Policy(path=where, name=head["name"], description=head["description"], audits=rules,
                  features=feature_settings, registries=registries, overrides=overrides,
                  sha256=hashlib.sha256(data).hexdigest(), raw=raw)


def parse_override(text: str) -> Override:
    """``AUDIT=REASON`` from the command line."""
    audit, sep, reason = text.partition("=")
    if not sep or not audit.strip() or not reason.strip():
        raise PolicyError("--override", text, "expected AUDIT=REASON with a non-empty reason")
    return Override(audit=audit.strip(), reason=reason.strip(), source="command line")


def _table(raw: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> dict[str, Any]:
    if key not in raw:
        if required:
            raise PolicyError(where, key, "required table is missing")
        return {}
    value = raw[key]
    if not isinstance(value, dict):
        raise PolicyError(where, key, f"expected a table, got {type(value).__name__}")
    return value
