"""Styles: trained models that plugins ship, usable by name (``--model NAME``).

A style bundles exported generator weights with what a studio needs to trust them: the
licence, a model card, the perceptual-hash registry of the training images and their
attribute distribution. Generation and the audits pick the registry and distribution up
without further flags.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError


@dataclass(frozen=True)
class Style:
    """A trained style a plugin provides through ``artengine_styles``."""

    name: str
    #: Exported generator weights (safetensors written by ``artengine export``).
    weights: Path
    description: str = ""
    licence: str = ""
    #: Model card (Markdown): what the style was trained on and what it is for.
    model_card: Path | None = None
    #: Reference registry (SQLite) of the training images' perceptual hashes.
    registry: Path | None = None
    #: JSON: attribute -> value -> probability measured on the training images.
    reference_distribution: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def read_reference_distribution(self) -> dict[str, dict[str, float]] | None:
        """The stored training attribute distribution, or None when the style has none."""
        if self.reference_distribution is None:
            return None
        try:
            data = json.loads(Path(self.reference_distribution).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.reference_distribution}: style {self.name!r} reference distribution "
                             f"cannot be read: {exc}") from None
        return data.get("attributes", data) if isinstance(data, dict) else None
