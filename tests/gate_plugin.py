"""A real plugin used by the gate tests: small audits with known behaviour, registered
through the plugin manager like any other plugin (no mocks)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from artengine import Audit, FeatureExtractor, Finding, Setting, hookimpl

ARTENGINE_HOOK_API = "1.0"
COMPUTED: list[str] = []  # keys the shared feature was computed for
THREADS: set[int] = set()  # threads it was computed on


class MeanBrightness(FeatureExtractor):
    """Mean luminance of the pixels, 0..255."""

    name = "brightness"

    def compute(self, items):
        COMPUTED.extend(item.key for item in items)
        THREADS.add(threading.get_ident())
        return [float(np.asarray(item.image.rgb.convert("L")).mean()) for item in items]


class TooBright(Audit):
    """Fails images brighter than a threshold."""

    name = "too_bright"
    needs = frozenset({"brightness"})
    settings_schema = {"max_mean": Setting(float, 200.0, "largest allowed mean luminance")}

    def check_image(self, item):
        mean = item.features["brightness"]
        outcome = "fail" if mean > self.settings["max_mean"] else "pass"
        return Finding(audit=self.name, outcome=outcome, item=item.key,
                       message=f"mean luminance {mean:.0f}", details={"mean": mean})


class TooDark(Audit):
    """Fails images darker than a threshold (shares the brightness feature)."""

    name = "too_dark"
    needs = frozenset({"brightness"})
    settings_schema = {"min_mean": Setting(float, 20.0)}

    def check_image(self, item):
        mean = item.features["brightness"]
        return Finding(audit=self.name, outcome="fail" if mean < self.settings["min_mean"] else "pass",
                       item=item.key, message=f"mean luminance {mean:.0f}")


class Raises(Audit):
    name = "raises"

    def check_image(self, item):
        raise RuntimeError("model file vanished")


class ReturnsNone(Audit):
    name = "returns_none"

    def check_image(self, item):
        return None


class Hangs(Audit):
    name = "hangs"

    def check_image(self, item):
        time.sleep(30)


class Unsure(Audit):
    name = "unsure"

    def check_image(self, item):
        return Finding(audit=self.name, outcome="unknown", item=item.key, message="low confidence")


class BrightShare(Audit):
    """Batch statistic: fails when more than ``max_share`` of images are bright."""

    name = "bright_share"
    per_image = False
    needs = frozenset({"brightness"})
    settings_schema = {"max_share": Setting(float, 0.5)}

    def check_batch(self, items, findings):
        share = float(np.mean([i.features["brightness"] > 128 for i in items])) if items else 0.0
        return [Finding(audit=self.name, outcome="fail" if share > self.settings["max_share"] else "pass",
                        message=f"{share:.0%} bright images",
                        details={"chart": {"title": "bright share", "bars": [
                            {"label": "bright", "value": share, "low": max(0, share - 0.1),
                             "high": min(1, share + 0.1), "reference": self.settings["max_share"]}]}})]


class MarkerFile(Audit):
    """Passes every image, checked against a file whose text is its version: an outside
    input that can change between runs of a job, as a reference registry can."""

    name = "marker_file"
    settings_schema = {"path": Setting(str, "", "the file checked against")}

    def check_image(self, item):
        path = str(Path(self.settings["path"]).resolve())
        return Finding(audit=self.name, outcome="pass", item=item.key, message="checked",
                       details={"versions": self.versions_now([path])})

    @classmethod
    def versions_now(cls, names):
        # A missing file raises (FileNotFoundError); a file saying so cannot be read (None).
        return {name: None if (text := Path(name).read_text()) == "unreadable" else text for name in names}


@hookimpl
def artengine_feature_extractors():
    return [MeanBrightness]


@hookimpl
def artengine_audits():
    return [TooBright, TooDark, Raises, ReturnsNone, Hangs, Unsure, BrightShare, MarkerFile]
