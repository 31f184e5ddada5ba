"""The artengine hook API: every hook a plugin can implement, in one module.

A plugin is a module (or object) named by an entry point in the ``artengine`` group of its
distribution's metadata::

    [project.entry-points.artengine]
    my_plugin = "my_package.plugin"

Inside, implement hooks as functions named ``artengine_<hook>``, decorated with
``artengine.hookimpl``. Arguments must be a subset of the spec's arguments (by name);
a function named ``artengine_*`` that matches no hook below is refused at start-up, so a
typo never goes unnoticed. A plugin may declare the hook API it was written for with a
module attribute ``ARTENGINE_HOOK_API = "1.0"``; it is refused when the major version
differs from :data:`HOOK_API_VERSION`, or when its minor version is newer than ours.

Hooks come in two kinds:

* registration hooks (first section) return components, the engine owns the loop and
  calls them. Each returns a list; component names must be unique across plugins.
* event hooks (later sections) tell observers what happened. Their return value is
  ignored, and an exception raised in one stops the operation that fired it.
"""
from __future__ import annotations

from typing import Any

import pluggy

#: Version of this hook API. Major: incompatible changes. Minor: additions.
HOOK_API_VERSION = "1.0"

hookspec = pluggy.HookspecMarker("artengine")


# --------------------------------------------------------------------------------------
# Registration: components a plugin provides
# --------------------------------------------------------------------------------------


@hookspec
def artengine_datasets() -> list[Any]:
    """Return the datasets this plugin provides, as :class:`artengine.Dataset` objects.

    Called once at start-up. A dataset has a unique ``name`` (used as ``--data NAME``),
    a ``description``, and an ``open(source, image_size=..., seed=..., ...)`` callable that
    returns an :class:`artengine.ImageSet`: a sized, indexable collection of
    :class:`artengine.Sample` (RGB image of ``image_size`` x ``image_size``, optional class
    label, caption, attributes). Set ``handles_paths=True`` if the dataset opens folders
    given as ``--data PATH``. ``open`` must be deterministic for a given seed and must
    report unreadable inputs rather than crash.
    """


@hookspec
def artengine_architectures() -> list[Any]:
    """Return the GAN architectures this plugin provides, as
    :class:`artengine.Architecture` objects.

    Called once at start-up. An architecture has a unique ``name`` (``--arch NAME``), a
    ``conditioning`` kind (``"none"``, ``"label"`` or ``"style"``) and factories that build
    the generator and discriminator from a plain config dict. The engine's trainer owns
    the loop, losses, EMA, augmentation and checkpoints; the architecture provides
    networks and its preferred defaults.
    """


@hookspec
def artengine_audits() -> list[Any]:
    """Return the audits this plugin provides, as subclasses of :class:`artengine.Audit`.

    Called once at start-up. The policy file names audits by their ``name`` and passes
    each its settings table. An audit declares the shared features it ``needs`` (for
    example ``"hashes"`` or ``"clip"``), so that work is computed once per image for all
    audits. It returns :class:`artengine.Finding` objects per image and, optionally, per
    batch. An audit that raises, returns nothing or times out blocks publication.
    """


@hookspec
def artengine_feature_extractors() -> list[Any]:
    """Return shared feature extractors, as subclasses of
    :class:`artengine.FeatureExtractor`.

    Called once at start-up. A feature extractor computes one named feature (for example
    perceptual ``"hashes"`` or ``"clip"`` embeddings) for a batch of images, once, for
    every audit and metric that declares it in ``needs``.
    """


@hookspec
def artengine_styles() -> list[Any]:
    """Return trained styles shipped by this plugin, as :class:`artengine.Style` objects.

    Called once at start-up. A style is a trained model a studio can generate from by
    name (``--model NAME``): weights (safetensors), architecture and config, plus what a
    studio needs to trust it: the licence, a model card, the perceptual-hash registry of
    its training images and their attribute distribution. The near-duplicate and bias
    audits pick these up automatically for outputs of the style.
    """


@hookspec
def artengine_watermarks() -> list[Any]:
    """Return invisible watermark schemes, as subclasses of :class:`artengine.Watermark`.

    Called once at start-up. A scheme has a unique ``name`` (recorded in manifests) and is
    instantiated with a secret key: ``scheme = cls(key)``. It embeds a fixed-length payload
    into RGB pixels (``embed_rgb``) and detects it again (``detect_rgb``), returning an
    :class:`artengine.WatermarkReading`: whether a payload passed the scheme's integrity
    check, the payload and a confidence. The base class handles alpha, size limits and
    payload lengths. The provenance step uses the payload as the key of the ledger record.
    """


# --------------------------------------------------------------------------------------
# Events: training
# --------------------------------------------------------------------------------------


@hookspec
def artengine_checkpoint_saved(run_dir: str, step: int, path: str, metrics: dict) -> None:
    """Called after the trainer has written a checkpoint atomically.

    ``run_dir`` is the run folder, ``step`` the training step the checkpoint holds,
    ``path`` the checkpoint file and ``metrics`` the latest logged values (losses, it/s).
    Use it to copy checkpoints elsewhere or to feed an experiment tracker.
    """


# --------------------------------------------------------------------------------------
# Events: generation and audit
# --------------------------------------------------------------------------------------


@hookspec
def artengine_image_written(record: Any, path: str) -> None:
    """Called after an image has been written (atomically) to ``approved/`` or
    ``quarantine/``.

    ``record`` is the :class:`artengine.ImageRecord` with the image's key, seed,
    conditioning, verdict and findings; ``path`` is where the file now lives. Observers
    must not modify the file.
    """


@hookspec
def artengine_batch_finished(summary: dict) -> None:
    """Called once when a generation or audit batch is complete, before the process exits.

    ``summary`` holds counts (approved, quarantined, errors), the batch verdict and the
    paths of the report files.
    """


@hookspec
def artengine_report_written(json_path: str, html_path: str, report: dict) -> None:
    """Called after a policy report has been written atomically.

    ``report`` is the JSON document (see the report schema); ``json_path`` and
    ``html_path`` are the files. Use it to publish reports or notify a reviewer.
    """
