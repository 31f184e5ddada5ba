"""The built-in ``provenance`` audit: is each image's watermark and signed manifest intact?

It runs :func:`artengine.verify_image` on every image with the run's keys (``keys_dir`` from
the audit context, else the default keys folder) and ledger (``ledger`` from the context,
else the default ledger when it exists). The gate then sees:

* ``pass``: verified (trusted signature, pixels match, the mark agrees); also a
  watermark-only image when ``require_manifest = false``;
* ``fail``: tampered pixels or manifest; no mark and no manifest when either is required;
  metadata stripped when a manifest is required; a copy of an image the ledger says was
  audited again since it was signed, with a verdict that blocks it;
* ``unknown``: a mark read with low confidence, a signature by an untrusted key, a mark
  that cannot be read with this key, or a mark without a ledger record. Never a pass;
* ``error``: no keys to check with.
"""
from __future__ import annotations

from typing import Any

from artengine import (
    Audit,
    AuditItem,
    Finding,
    Ledger,
    Setting,
    default_ledger_path,
    get_plugins,
    hookimpl,
    load_keys,
    verify_image,
)

ARTENGINE_HOOK_API = "1.0"


class ProvenanceAudit(Audit):
    """Checks each image's invisible watermark and signed manifest (see module docstring)."""

    name = "provenance"
    description = "watermark and signed manifest intact: verified passes; tampered, stripped or unmarked fails"
    per_image = True
    settings_schema = {
        "require_watermark": Setting(bool, True, "an image with neither mark nor manifest fails"),
        "require_manifest": Setting(bool, True, "an image whose manifest was stripped fails (otherwise a "
                                    "mark that leads to a ledger record passes)"),
        "min_confidence": Setting(float, 0.3, "mark reads below this confidence are 'unknown'"),
        "search": Setting(bool, True, "look for cropped or rotated marks (slower on unmarked images)"),
    }

    def __init__(self, settings: Any, context: Any) -> None:
        super().__init__(settings, context)
        self._keys = None
        self._ledger = None
        self._problem = ""
        try:
            self._keys = load_keys(context.keys_dir)
            if self._keys.watermark_key is None and not self._keys.trusted:
                self._problem = (f"no provenance keys in {self._keys.source}; run `artengine keys init` "
                                 "or point the audit at the studio's keys folder")
            ledger_path = context.ledger or default_ledger_path()
            if context.ledger or ledger_path.exists():
                self._ledger = Ledger(ledger_path, create=False)
        except Exception as exc:  # an unusable key or ledger is reported per image, as error
            self._problem = str(exc)
        self._schemes = get_plugins().components("watermarks")

    def check_image(self, item: AuditItem) -> Finding:
        if self._problem:
            return Finding(audit=self.name, outcome="error", item=item.key, message=self._problem)
        result = verify_image(item.image, keys=self._keys, schemes=self._schemes, ledger=self._ledger,
                              manifest=item.meta.get("manifest"),
                              min_confidence=self.settings["min_confidence"], search=self.settings["search"])
        # An image whose trusted manifest records a verdict that blocked it was quarantined
        # when it was made (or audited again since): never a pass, whatever else holds.
        outcome = "fail" if result.blocking else self._outcome(result.code)
        details = {"status": result.status, "code": result.code, "manifest_source": result.manifest_source,
                   "signature": result.signature, "pixels_match": result.pixels_match, "blocking": result.blocking}
        if result.reading is not None:
            details.update(payload=result.reading.payload_hex, confidence=round(result.reading.confidence, 3))
        return Finding(audit=self.name, outcome=outcome, item=item.key,
                       message=f"{result.status}: {result.message}", details=details)

    def _outcome(self, code: str) -> str:
        if code == "verified":
            return "pass"
        if code in ("pixels-edited", "manifest-invalid", "mark-mismatch", "audited-again", "audit-blocked"):
            return "fail"
        if code == "metadata-stripped":
            return "fail" if self.settings["require_manifest"] else "pass"
        if code == "no-provenance":
            required = self.settings["require_watermark"] or self.settings["require_manifest"]
            return "fail" if required else "pass"
        if code == "unreadable-image":
            return "error"
        return "unknown"


@hookimpl
def artengine_audits() -> list[type[Audit]]:
    return [ProvenanceAudit]
