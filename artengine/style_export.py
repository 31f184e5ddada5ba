"""Style export: a trained run becomes a pip-installable style plugin package.

``export_style(run, name=..., out=...)`` writes a source tree that installs with pip::

    OUT/
      pyproject.toml                  distribution artengine-style-NAME, entry point in the
                                      ``artengine`` group, depends on artengine
      artengine_style_NAME/
        __init__.py                   ARTENGINE_HOOK_API and the ``artengine_styles`` hook
        data/
          weights.safetensors         the EMA generator (``artengine export``)
          style.json                  what the style is: architecture, size, conditioning,
                                      class/style names, training data spec, checksums
          registry.sqlite             perceptual hashes of every training image
          registry.sqlite.index       its search index, built once here
          reference_distribution.json training attribute -> value -> probability
          LICENCE                     the licence text given at export
          MODEL_CARD.md               what the style is, was trained on, and is for

The training images are re-materialised from the run's own record (``training_data.json``):
a procedural dataset is opened again with the recorded seed, length and label attribute and
must reproduce the recorded attribute counts; a folder dataset is read file by file and
every file must still have the sha256 recorded at training time. Anything else is an
:class:`~artengine.errors.InputError`, because a registry of the wrong images would let
copies of the real ones through the near-duplicate audit.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import open_dataset
from .errors import InputError
from .hookspecs import HOOK_API_VERSION
from .io import atomic_write_json, atomic_write_text, sha256_file
from .models import export_generator, load_model
from .plugins import Plugins, get_plugins
from .registry import AddSummary, ReferenceRegistry
from .runs import TRAINING_DATA, read_run_config

#: Style names: what ``--model NAME`` takes; also the distribution and module suffix.
STYLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: Files inside the package's ``data/`` folder.
WEIGHTS, CONFIG, REGISTRY = "weights.safetensors", "style.json", "registry.sqlite"
DISTRIBUTION, LICENCE, MODEL_CARD = "reference_distribution.json", "LICENCE", "MODEL_CARD.md"
STYLE_FORMAT = "artengine-style/1"
#: Used when the exporter gives no licence: says so rather than implying one.
NO_LICENCE = ("No licence was given when this style was exported. Ask its authors before "
              "using the style or its outputs.")


@dataclass
class StyleExport:
    """What :func:`export_style` wrote."""

    name: str
    distribution: str  # pip name: artengine-style-NAME
    module: str  # import name: artengine_style_NAME
    out: Path
    weights: Path
    registry: Path
    references: int  # training images hashed into the registry
    reference_distribution: Path | None  # None when the dataset carries no attributes
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``--json``)."""
        return {
            "name": self.name, "distribution": self.distribution, "module": self.module,
            "out": str(self.out), "weights": str(self.weights), "registry": str(self.registry),
            "references": self.references,
            "reference_distribution": str(self.reference_distribution) if self.reference_distribution else None,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def export_style(run: str | Path, *, name: str, out: str | Path, licence: str = "", description: str = "",
                 version: str = "0.1.0", plugins: Plugins | None = None) -> StyleExport:
    """Write the plugin package of the style ``name`` trained in ``run`` to the folder ``out``.

    ``out`` must not exist or be empty. ``licence`` is the licence text (written to
    ``LICENCE``; its first line becomes ``Style.licence``). The package is assembled in a
    temporary sibling folder and renamed into place, so a failed export leaves nothing.
    """
    plugins = plugins or get_plugins()
    if not STYLE_NAME.match(name):
        raise InputError(f"--name {name!r}: a style name is lower-case letters, digits, '-' or '_', "
                         "starting with a letter (at most 63 characters)")
    run_dir, target = Path(run), Path(out)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a training run folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"--out {target}: exists and is not an empty folder")
    if not target.absolute().parent.is_dir():
        raise InputError(f"--out {target}: folder {target.absolute().parent} does not exist")
    run_config = read_run_config(run_dir)
    training = _read_training_record(run_dir)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.absolute().parent))
    try:
        written = _write_package(work, run_dir, run_config, training, name=name, licence=licence,
                                 description=description, version=version, plugins=plugins)
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    written.out = target
    written.weights = target / written.weights.relative_to(work)
    written.registry = target / written.registry.relative_to(work)
    if written.reference_distribution is not None:
        written.reference_distribution = target / written.reference_distribution.relative_to(work)
    return written


def _write_package(target: Path, run_dir: Path, run_config: dict[str, Any], training: dict[str, Any], *,
                   name: str, licence: str, description: str, version: str, plugins: Plugins) -> StyleExport:
    module = "artengine_style_" + name.replace("-", "_")
    data_dir = target / module / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    weights = export_generator(run_dir, data_dir / WEIGHTS, plugins=plugins)
    model = load_model(weights, plugins=plugins)  # proves the exported file loads on its own
    registry_path = data_dir / REGISTRY
    summary, counts = _build_registry(registry_path, run_dir, run_config, training, name, plugins)
    distribution = _write_distribution(data_dir / DISTRIBUTION, counts, training)
    licence_text = licence.strip() or NO_LICENCE
    atomic_write_text(data_dir / LICENCE, licence_text + "\n")
    description = description.strip() or (
        f"{model.info.architecture} style trained on {training['spec']} "
        f"({training['length']} images, {model.info.image_size}px)")
    config = {
        "format": STYLE_FORMAT,
        "name": name,
        "description": description,
        "licence": licence_text.splitlines()[0],
        "model": {k: v for k, v in model.info.as_dict().items() if k not in ("path", "source")},
        "weights_sha256": sha256_file(weights),
        "registry": {"references": summary.added + summary.unchanged, "sha256": sha256_file(registry_path)},
        "training_data": {k: v for k, v in training.items() if k not in ("files", "skipped")},
        "exported_from": str(run_dir.resolve()),
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hook_api": HOOK_API_VERSION,
    }
    atomic_write_json(data_dir / CONFIG, config)
    atomic_write_text(data_dir / MODEL_CARD, _model_card(config, counts, licence_text))
    atomic_write_text(target / module / "__init__.py", _module_source(name, description, config["licence"],
                                                                    distribution is not None))
    atomic_write_text(target / "pyproject.toml", _pyproject(name, module, description, version))
    return StyleExport(name=name, distribution=f"artengine-style-{name}", module=module, out=target,
                       weights=weights, registry=registry_path, references=summary.added + summary.unchanged,
                       reference_distribution=distribution, skipped=summary.skipped)


# ----------------------------------------------------------------------------- training data


def _read_training_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRAINING_DATA
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: the run's training-data record cannot be read ({exc})") from None
    if not isinstance(record, dict) or "spec" not in record:
        raise InputError(f"{path}: not a training-data record (no 'spec')")
    return record


def _build_registry(path: Path, run_dir: Path, run_config: dict[str, Any], training: dict[str, Any],
                    name: str, plugins: Plugins) -> tuple[AddSummary, dict[str, dict[str, int]]]:
    """Hash every training image into a new registry; return the attribute counts seen."""
    source = f"training data of style {name} (run {run_dir.name}, {training['spec']})"
    counts: dict[str, dict[str, int]] = {}
    with ReferenceRegistry(path, create=True) as registry:
        if "files" in training:  # a folder: the original files, as they were at training time
            summary = registry.add(_training_files(training), source=source)
            counts = training.get("attribute_counts") or {}
        else:  # procedural: the same samples again, from the recorded seed and options
            summary = AddSummary()
            options = {"length": training["length"]}
            if run_config.get("options", {}).get("label_attribute"):
                options["label_attribute"] = run_config["options"]["label_attribute"]
            imageset = open_dataset(training["spec"], image_size=int(training["image_size"]),
                                    seed=int(training["seed"]), datasets=plugins.components("datasets"),
                                    **options)
            if len(imageset) != training["length"]:
                raise InputError(f"{run_dir / TRAINING_DATA}: dataset {training['spec']} now has "
                                 f"{len(imageset)} images, the run trained on {training['length']}")
            for i in range(len(imageset)):
                sample = imageset[i]
                registry.add_image(sample.image, source_path=sample.source or f"{training['spec']}:{i}",
                                   source=source, summary=summary)
                for attribute, value in sample.attributes.items():
                    bucket = counts.setdefault(attribute, {})
                    bucket[value] = bucket.get(value, 0) + 1
            if training.get("attribute_counts") and counts != training["attribute_counts"]:
                raise InputError(f"{run_dir / TRAINING_DATA}: dataset {training['spec']} no longer "
                                 "produces the images this run trained on (attribute counts differ)")
        if summary.skipped:
            first, reason = summary.skipped[0]
            raise InputError(f"{first}: training image cannot be hashed ({reason}); "
                             f"{len(summary.skipped)} skipped in all")
        if registry.count() == 0:
            raise InputError(f"{run_dir}: no training images to hash into the registry")
        registry.index()
    # Package data may be installed read-only; a WAL-mode database needs a writable folder
    # for its shared-memory file, so the shipped copy uses a rollback journal.
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()
    return summary, counts


def _training_files(training: dict[str, Any]) -> list[Path]:
    """The recorded training files, each checked against its recorded sha256."""
    root = Path(training.get("root", "."))
    files = []
    for entry in training["files"]:
        path = Path(entry["path"]) if Path(entry["path"]).is_absolute() else root / entry["path"]
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise InputError(f"{path}: training image cannot be read ({exc.strerror or exc})") from None
        if digest != entry.get("sha256"):
            raise InputError(f"{path}: training image changed since the run (sha256 differs from the record)")
        files.append(path)
    return files


def _write_distribution(path: Path, counts: dict[str, dict[str, int]], training: dict[str, Any]) -> Path | None:
    """attribute -> value -> probability over the training images; values the dataset
    declares but never drew get probability 0, so the bias audit sees them."""
    if not counts:
        return None
    declared = training.get("attributes") or {}
    attributes: dict[str, dict[str, float]] = {}
    for attribute, seen in sorted(counts.items()):
        total = sum(seen.values())
        values = list(declared.get(attribute, [])) + sorted(v for v in seen if v not in declared.get(attribute, []))
        attributes[attribute] = {v: seen.get(v, 0) / total for v in values}
    atomic_write_json(path, {"source": training["spec"], "images": training["length"], "attributes": attributes})
    return path


# ----------------------------------------------------------------------------- package text


def _module_source(name: str, description: str, licence: str, has_distribution: bool) -> str:
    distribution = f'_DATA / "{DISTRIBUTION}"' if has_distribution else "None"
    return f'''"""Style plugin {name!r} for artengine, written by `artengine style export`."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from artengine import Style, hookimpl

ARTENGINE_HOOK_API = "{HOOK_API_VERSION}"

# pip installs packages as plain folders, so the package data are real files.
_DATA = Path(str(resources.files(__name__) / "data"))


@hookimpl
def artengine_styles() -> list[Style]:
    """The style this package ships."""
    config = json.loads((_DATA / "{CONFIG}").read_text(encoding="utf-8"))
    return [
        Style(
            name={name!r},
            weights=_DATA / "{WEIGHTS}",
            description={description!r},
            licence={licence!r},
            model_card=_DATA / "{MODEL_CARD}",
            registry=_DATA / "{REGISTRY}",
            reference_distribution={distribution},
            extra={{"config": str(_DATA / "{CONFIG}"), "model": config["model"],
                    "weights_sha256": config["weights_sha256"]}},
        )
    ]
'''


def _pyproject(name: str, module: str, description: str, version: str) -> str:
    major = HOOK_API_VERSION.split(".")[0]
    # setuptools>=61 reads [project]; no licence metadata field, because the SPDX form needs
    # setuptools>=77 and the text ships as package data (LICENCE) and in the model card.
    return f'''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "artengine-style-{name}"
version = "{version}"
description = {json.dumps(description)}
readme = "{module}/data/{MODEL_CARD}"
requires-python = ">=3.11"
# Hook API {HOOK_API_VERSION}: any artengine of the same major hook API version.
dependencies = ["artengine>=0.1,<{int(major) + 1}"]

[project.entry-points.artengine]
style_{name.replace("-", "_")} = "{module}"

[tool.setuptools]
packages = ["{module}"]

[tool.setuptools.package-data]
{module} = ["data/*"]
'''


def _model_card(config: dict[str, Any], counts: dict[str, dict[str, int]], licence: str) -> str:
    model, data = config["model"], config["training_data"]
    lines = [
        f"# Style `{config['name']}`", "",
        config["description"], "",
        "## Model", "",
        f"- architecture: {model['architecture']} ({model['conditioning']} conditioning)",
        f"- image size: {model['image_size']} px; latent size {model['z_dim']}",
        f"- training steps: {model['step']}",
        f"- weights sha256: `{config['weights_sha256']}`",
    ]
    if model["class_names"]:
        lines.append(f"- labels: {', '.join(model['class_names'])}")
    if model["style_names"]:
        lines.append(f"- styles: {', '.join(model['style_names'])}")
    lines += ["", "## Training data", "",
              f"- source: {data['spec']} ({data['length']} images, seed {data['seed']})",
              f"- every training image is in the shipped reference registry "
              f"({config['registry']['references']} images); the near-duplicate audit checks "
              "each output of this style against it"]
    if counts:
        lines += ["- attribute distribution (the bias audit's reference):", ""]
        for attribute, seen in sorted(counts.items()):
            total = sum(seen.values())
            shares = ", ".join(f"{v} {100 * c / total:.0f} %" for v, c in sorted(seen.items(), key=lambda kv: -kv[1]))
            lines.append(f"  - {attribute}: {shares}")
    else:
        lines.append("- the dataset records no attributes, so no bias reference ships with this style")
    lines += ["", "## Use", "",
              "```", f"artengine generate --model {config['name']} --count 16 --out OUT", "```", "",
              "Outputs are audited against this style's registry and attribute distribution "
              "without further flags.", "",
              "## Licence", "", licence, ""]
    return "\n".join(lines)
