"""The publication gate: findings plus a policy give verdicts, fail-closed.

Per finding, the gate decides:

* ``pass``  — the audit checked and found nothing;
* ``warn`` or ``block`` — the audit checked and found a problem; the policy's ``severity``
  for that audit says which;
* ``error`` — the audit could not check (it raised, returned nothing, timed out, reported
  ``error``, or is required but disabled); ``unknown`` outcomes (evidence too weak) give
  ``block``. Either becomes ``warn`` only through an explicit override, recorded in the
  report.

An image's verdict is its worst decision (pass < warn < block < error); the batch verdict
is the worst over images and batch-level findings. An image is publishable only when its
verdict is pass or warn and no batch-level decision blocks.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .policy import AuditRule, Policy
from .records import Finding

STATUSES: tuple[str, ...] = ("pass", "warn", "block", "error")
_RANK = {s: i for i, s in enumerate(STATUSES)}


def worst(statuses: Iterable[str]) -> str:
    """The most severe of ``statuses`` (``pass`` for none)."""
    return max(statuses, key=_RANK.__getitem__, default="pass")


@dataclass
class Decision:
    """One finding as the gate judged it."""

    finding: Finding
    status: str  # pass | warn | block | error
    reason: str
    overridden: str | None = None  # the override's reason, when one applied

    def as_dict(self) -> dict[str, Any]:
        return {**self.finding.as_dict(), "decision": self.status, "reason": self.reason,
                "overridden": self.overridden}


@dataclass
class Verdict:
    """The gate's verdict on one image (``item``) or on the batch (``item`` None)."""

    item: str | None
    decisions: list[Decision] = field(default_factory=list)

    @property
    def status(self) -> str:
        return worst(d.status for d in self.decisions)

    @property
    def reasons(self) -> list[str]:
        return [f"{d.finding.audit}: {d.finding.message}" for d in self.decisions
                if d.status in ("block", "error")]

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "status": self.status,
                "decisions": [d.as_dict() for d in self.decisions]}


def decide(finding: Finding, rule: AuditRule, policy: Policy) -> Decision:
    """Judge one finding under the policy rule of its audit."""
    if finding.outcome == "pass":
        return Decision(finding, "pass", "checked, nothing found")
    if finding.outcome == "fail":
        return Decision(finding, rule.severity, f"check failed; policy severity is {rule.severity}")
    status = "error" if finding.outcome == "error" else "block"
    why = "the audit could not check" if finding.outcome == "error" else "the audit could not decide"
    override = policy.overridden(finding.audit)
    if override is not None:
        return Decision(finding, "warn", f"{why}; allowed by override", overridden=override.reason)
    return Decision(finding, status, f"{why}; publication is blocked (fail-closed)")


def disabled_findings(policy: Policy) -> list[Finding]:
    """Batch-level error findings for required audits the policy disables: they block the
    whole batch unless overridden."""
    return [
        Finding(audit=rule.name, outcome="error", item=None,
                message="required audit is disabled in the policy")
        for rule in policy.audits.values() if rule.required and not rule.enabled
    ]


#: Audit name of findings the engine itself makes (an unreadable image, a failed write).
#: They are errors no override can lift: there is nothing to publish.
ENGINE = "artengine"


def judge(item: str | None, findings: Sequence[Finding], policy: Policy) -> Verdict:
    """The verdict for one image or the batch from its findings."""
    verdict = Verdict(item=item)
    for finding in findings:
        rule = policy.audits.get(finding.audit)
        if rule is None:
            verdict.decisions.append(Decision(finding, "error" if finding.outcome != "pass" else "pass",
                                              "engine check" if finding.audit == ENGINE else "not in the policy"))
        else:
            verdict.decisions.append(decide(finding, rule, policy))
    return verdict


def exit_code(batch_status: str) -> int:
    """0 when everything may be published, 1 when the policy blocked something."""
    return 0 if batch_status in ("pass", "warn") else 1
