"""Records that cross module boundaries: one vocabulary for plugins, the gate and reports."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: What an audit saw for an image or a batch.
#: ``pass``: checked and fine; ``fail``: checked and found a problem; ``error``: could not
#: check (the audit raised, an input was missing or corrupt); ``unknown``: checked but the
#: evidence is too weak to say (for example a low-confidence watermark read).
Outcome = Literal["pass", "fail", "error", "unknown"]
OUTCOMES: tuple[str, ...] = ("pass", "fail", "error", "unknown")


@dataclass
class Finding:
    """One audit's result for one image (``item`` set) or for the batch (``item`` None).

    ``details`` must be JSON-serialisable; it is copied into the report as is. Paths of
    images a reviewer should see (a matched reference, a plot) go in ``attachments``.
    """

    audit: str
    outcome: Outcome
    message: str
    item: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    attachments: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"finding outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    def as_dict(self) -> dict[str, Any]:
        # dataclasses.asdict would do, but it deep-copies every leaf through copy.deepcopy:
        # 116 us against 13 us for a near-duplicate finding, once per image and audit in a
        # generation job. Details are JSON data, so copying the containers is enough.
        return {"audit": self.audit, "outcome": self.outcome, "message": self.message, "item": self.item,
                "details": _copy_json(self.details), "attachments": dict(self.attachments)}


def _copy_json(value: Any) -> Any:
    """A copy of JSON-like data: new dicts, lists and tuples; leaves shared (immutable)."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    if type(value) is tuple:
        return tuple(_copy_json(v) for v in value)
    return value
