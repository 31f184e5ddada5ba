"""min_resolution: fails images smaller than the studio's delivery size.

A complete audit plugin. Package it with an entry point in the ``artengine`` group
(see docs/plugins.md) and enable it in a policy::

    [audits.min_resolution]
    min_side = 512
"""
from __future__ import annotations

from artengine import Audit, Finding, Setting, hookimpl

ARTENGINE_HOOK_API = "1.0"


class MinResolutionAudit(Audit):
    """Fails images whose shorter side is below ``min_side`` pixels."""

    name = "min_resolution"
    description = "fails images smaller than the delivery size"
    settings_schema = {"min_side": Setting(int, 512, "smallest allowed width and height, in pixels")}

    def check_image(self, item):
        if item.image is None:  # nothing to measure is an error, never a pass
            return Finding(audit=self.name, outcome="error", item=item.key, message="no image")
        width, height = item.image.size
        side = min(width, height)
        outcome = "fail" if side < self.settings["min_side"] else "pass"
        return Finding(audit=self.name, outcome=outcome, item=item.key,
                       message=f"{width}x{height} (minimum side {self.settings['min_side']})",
                       details={"width": width, "height": height})


@hookimpl
def artengine_audits():
    """The audits of this plugin."""
    return [MinResolutionAudit]
