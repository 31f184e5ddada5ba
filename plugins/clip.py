"""The built-in ``clip`` feature: one CLIP image embedding per image, for every consumer.

The bias audit, semantic checks and Fréchet distances all read ``AuditItem.features["clip"]``
(a float32, L2-normalised vector), so each image goes through CLIP once per run. The model
is the shipped tiny CLIP unless the command line (``--clip-model``/``--clip-pretrained``) or
the policy's ``[features.clip]`` table names another; it is loaded when the run starts, so a
model that cannot be loaded stops the run with one clear line before any work.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from artengine import AuditContext, AuditItem, FeatureExtractor, Setting, hookimpl

ARTENGINE_HOOK_API = "1.0"


class ClipFeature(FeatureExtractor):
    """CLIP image embeddings (``features["clip"]``: float32 ``(D,)``, unit length)."""

    name = "clip"
    description = "CLIP image embedding (open_clip; offline default: the shipped tiny CLIP)"
    settings_schema = {
        "model": Setting(str, "", "open_clip model name, or a checkpoint folder / .safetensors file; "
                                  "empty: the shipped tiny CLIP (--clip-model wins)"),
        "pretrained": Setting(str, "", "open_clip pretrained tag or .safetensors file for `model`"),
        "device": Setting(str, "cpu", "torch device: cpu, cuda, cuda:1, ..."),
        "batch_size": Setting(int, 32, "images per CLIP forward pass"),
    }

    def __init__(self, settings: Mapping[str, Any], context: AuditContext) -> None:
        super().__init__(settings, context)
        from artengine import clip_for_context

        # Loaded now, not on the first batch: an unavailable model is a start-up error.
        self.clip = clip_for_context(context, self.settings)

    def compute(self, items: Sequence[AuditItem]) -> list[Any]:
        if not items:
            return []
        images = [item.image.rgb for item in items]
        embeddings = self.clip.encode_images(images, batch_size=max(1, int(self.settings.get("batch_size", 32))))
        return list(embeddings)


@hookimpl
def artengine_feature_extractors() -> list[type[FeatureExtractor]]:
    return [ClipFeature]
