"""blank_image: an artengine audit that fails blank and near-uniform images.

GAN training that collapses, a render that failed, or an over-aggressive filter produce
images that are (almost) one flat colour. They pass every copyright and bias check, so a
separate audit catches them. Two measurements, both on the RGB pixels:

* RMS contrast: the standard deviation of luma (0-255). A flat image has 0.
* dominant share: the fraction of pixels whose colour, quantised to 32 levels per channel,
  is the most common one. A logo on a flat background is legitimately high, so the
  default threshold only catches images that are almost entirely one colour.
"""
from __future__ import annotations

import numpy as np

from artengine import Audit, Finding, Setting, hookimpl

ARTENGINE_HOOK_API = "1.0"


class BlankImageAudit(Audit):
    """Fails images whose contrast is too low or that are almost one colour."""

    name = "blank_image"
    description = "fails blank and near-uniform images (low RMS contrast, one dominant colour)"
    settings_schema = {
        "min_contrast": Setting(float, 6.0, "RMS contrast (std of luma, 0-255) below this fails"),
        "max_dominant_share": Setting(float, 0.98, "share of pixels in the most common colour above this fails"),
    }

    def check_image(self, item):
        if item.image is None:  # never a pass when there was nothing to check
            return Finding(audit=self.name, outcome="error", item=item.key, message="no pixels to check")
        pixels = np.asarray(item.image.rgb, dtype=np.uint8)
        luma = pixels @ np.array([0.299, 0.587, 0.114])
        contrast = float(luma.std())
        # Quantise to 32 levels per channel, so noise on a flat colour still counts as flat.
        codes = (pixels >> 3).astype(np.int32)
        packed = (codes[..., 0] << 10) | (codes[..., 1] << 5) | codes[..., 2]
        dominant = float(np.bincount(packed.ravel()).max() / packed.size)
        details = {"contrast": round(contrast, 2), "dominant_share": round(dominant, 4)}
        problems = []
        if contrast < self.settings["min_contrast"]:
            problems.append(f"RMS contrast {contrast:.1f} < {self.settings['min_contrast']:g}")
        if dominant > self.settings["max_dominant_share"]:
            problems.append(f"{100 * dominant:.1f} % of pixels are one colour "
                            f"(> {100 * self.settings['max_dominant_share']:g} %)")
        if problems:
            return Finding(audit=self.name, outcome="fail", item=item.key, message="; ".join(problems),
                           details=details)
        return Finding(audit=self.name, outcome="pass", item=item.key,
                       message=f"RMS contrast {contrast:.1f}, dominant colour {100 * dominant:.1f} %",
                       details=details)


@hookimpl
def artengine_audits():
    """The audits this plugin provides."""
    return [BlankImageAudit]
