"""artengine: a plugin-based generative art engine with publication audits.

This module is the public API. Plugins, built-in or third-party, import only what is
exported here.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from .architecture import TRAINER_DEFAULTS, Architecture, ClassHeadDiscriminator, deferred_builder, minibatch_std
from .audit import Audit, AuditContext, AuditItem, FeatureExtractor, Setting, validate_settings
from .bias import (
    AttributeSpec,
    MeasuredReference,
    ReferenceDistribution,
    class_embeddings,
    classify,
    compare_distribution,
    distribution_chart,
    holm,
    load_reference_distribution,
    measure_reference,
    parse_attributes,
    reference_distribution_document,
    reference_store_path,
)
from .data import Dataset, ImageSet, Sample, open_dataset
from .errors import (
    ArtengineError,
    ImageLoadError,
    InputError,
    ModelLoadError,
    PluginError,
    PolicyError,
)
from .hashing import MIN_RELIABLE_QUALITY, STRAIGHTENED, TRIMMED, ImageHashes, query_hashes, query_hashes_many, reference_hashes
from .hookspecs import HOOK_API_VERSION
from .io import (
    ALLOWED_FORMATS,
    LoadedImage,
    atomic_save_image,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    iter_image_files,
    open_image,
    remove_stray_temps,
    restore_alpha,
    safe_crop,
    sha256_file,
    to_rgb,
    usable_cores,
)
from .plugins import Plugins, get_plugins, hookimpl
from .provenance import (
    Keys,
    Ledger,
    ProvenanceError,
    Verification,
    default_keys_dir,
    default_ledger_path,
    load_keys,
    verify_image,
)
from .records import Finding, Outcome
from .styles import Style
from .registry import (
    Match,
    Reference,
    ReferenceRegistry,
    RegistryError,
    open_registries,
    registry_version,
    search_registries,
)
from .watermark import Watermark, WatermarkReading

#: Exported lazily: importing them loads torch and open_clip (seconds), which commands that
#: never touch CLIP should not pay for.
_LAZY = {
    "ClipModel": "clip",
    "load_clip": "clip",
    "clip_for_context": "clip",
    "fill_template": "clip",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'artengine' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


try:
    __version__ = _version("artengine")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ALLOWED_FORMATS",
    "ArtengineError",
    "AttributeSpec",
    "Architecture",
    "Audit",
    "AuditContext",
    "AuditItem",
    "ClassHeadDiscriminator",
    "deferred_builder",
    "ClipModel",
    "Dataset",
    "FeatureExtractor",
    "Finding",
    "HOOK_API_VERSION",
    "ImageHashes",
    "ImageLoadError",
    "ImageSet",
    "InputError",
    "Keys",
    "Ledger",
    "LoadedImage",
    "MeasuredReference",
    "MIN_RELIABLE_QUALITY",
    "Match",
    "ModelLoadError",
    "Outcome",
    "PluginError",
    "Plugins",
    "PolicyError",
    "ProvenanceError",
    "Reference",
    "ReferenceDistribution",
    "ReferenceRegistry",
    "RegistryError",
    "Sample",
    "Setting",
    "STRAIGHTENED",
    "TRIMMED",
    "Style",
    "Verification",
    "Watermark",
    "WatermarkReading",
    "TRAINER_DEFAULTS",
    "__version__",
    "atomic_save_image",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "class_embeddings",
    "classify",
    "clip_for_context",
    "compare_distribution",
    "distribution_chart",
    "fill_template",
    "default_keys_dir",
    "default_ledger_path",
    "get_plugins",
    "holm",
    "hookimpl",
    "iter_image_files",
    "load_clip",
    "load_reference_distribution",
    "measure_reference",
    "minibatch_std",
    "open_dataset",
    "open_image",
    "parse_attributes",
    "reference_distribution_document",
    "reference_store_path",
    "load_keys",
    "open_registries",
    "registry_version",
    "query_hashes",
    "query_hashes_many",
    "reference_hashes",
    "remove_stray_temps",
    "restore_alpha",
    "safe_crop",
    "search_registries",
    "sha256_file",
    "to_rgb",
    "usable_cores",
    "validate_settings",
    "verify_image",
]
