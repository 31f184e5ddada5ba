"""The ``artengine`` command line.

One click group, one function per command. Commands parse options and call the library;
errors a user can fix (:class:`artengine.ArtengineError`, OS errors such as a full disk)
become one line on stderr and exit code 2, never a traceback. Exit codes: 0 pass,
1 a policy blocked something, 2 usage or input error.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import ArtengineError
from .hookspecs import HOOK_API_VERSION
from .plugins import COMPONENT_HOOKS, Plugins, get_plugins


class CLIError(click.ClickException):
    """A one-line error with exit code 2 (click's default for its own exceptions is 1)."""

    exit_code = 2


def _os_error_line(exc: OSError) -> str:
    where = exc.filename or ""
    what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what


class ArtengineGroup(click.Group):
    """Turns user-fixable errors from any command into one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ArtengineError as exc:
            raise CLIError(str(exc)) from None
        except OSError as exc:
            raise CLIError(_os_error_line(exc)) from None


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("artengine")
    if not any(getattr(h, "_artengine", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handler._artengine = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def load_plugins() -> Plugins:
    """The plugin set for a command that does work: refuses to start if any is broken."""
    plugins = get_plugins()
    plugins.raise_if_refused()
    return plugins


@click.group(cls=ArtengineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="artengine")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """artengine: train GANs, generate images, and audit them before publication."""
    _setup_logging(verbose)


# ----------------------------------------------------------------------------- plugins


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
def plugins(as_json: bool) -> None:
    """List plugins, their distributions, versions and components.

    Refused plugins are listed with the reason; the exit code is then 2.
    """
    found = get_plugins()
    infos = sorted(found.infos.values(), key=lambda i: i.name)
    if as_json:
        doc = {
            "artengine": __version__,
            "hook_api": HOOK_API_VERSION,
            "plugins": [i.as_dict() for i in infos],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(f"artengine {__version__} (hook API {HOOK_API_VERSION})")
        for info in infos:
            where = f"{info.distribution} {info.version}" if info.distribution else info.module
            if not info.loaded:
                click.echo(f"  {info.name:<16} REFUSED  {where}: {info.error}")
                continue
            click.echo(f"  {info.name:<16} {where}")
            for kind in COMPONENT_HOOKS:
                names = info.components.get(kind)
                if names:
                    click.echo(f"      {kind.replace('_', ' ')}: {', '.join(sorted(names))}")
    if found.refused:
        for info in found.refused:
            click.echo(f"plugin {info.name} refused: {info.error}", err=True)
        sys.exit(2)


# ----------------------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Inspect datasets (built-in or image folders)."""


@data.command("preview")
@click.argument("source")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG file to write the sample sheet to.")
@click.option("--count", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--image-size", type=click.Choice(["32", "64"]), default="64", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def data_preview(source: str, out: Path, count: int, image_size: str, seed: int) -> None:
    """Write a sample sheet of SOURCE (a dataset name such as `shapes`, or a folder)."""
    from .data import image_grid, open_dataset
    from .io import atomic_save_image

    plugins = load_plugins()
    dataset = open_dataset(source, image_size=int(image_size), seed=seed,
                           datasets=plugins.components("datasets"))
    n = min(count, len(dataset))
    samples = [dataset[i] for i in range(n)]
    if not out.parent.exists():
        raise ArtengineError(f"{out.parent}: folder does not exist")
    atomic_save_image(out, image_grid([s.image for s in samples]))
    click.echo(f"{len(dataset)} images; wrote {n} to {out}")
    for s in samples[: min(4, n)]:
        if s.caption:
            click.echo(f"  {s.caption}")


# ----------------------------------------------------------------------------- audit


def _versions(plugins: Plugins) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({"version": __version__, "hook_api": HOOK_API_VERSION}, plugins.versions())


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--policy", "policy_spec", required=True,
              help="Policy file, or the name of a shipped policy (default, publication).")
@click.option("--registry", "registries", multiple=True, type=click.Path(path_type=Path),
              help="Reference registry (repeatable); added to the policy's registries.")
@click.option("--reference-data", help="Dataset name or folder the images are compared with (bias).")
@click.option("--run", "run_dir", type=click.Path(path_type=Path),
              help="Training run that produced the images (curves and samples in the report).")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=Path("artengine-report"),
              show_default=True, help="Folder for report.json and report.html.")
@click.option("--override", "overrides", multiple=True, metavar="AUDIT=REASON",
              help="Allow publication despite an error, unknown or disabled AUDIT; recorded in the report.")
@click.option("--clip-model", help="open_clip model name or local checkpoint (default: shipped tiny CLIP).")
@click.option("--clip-pretrained", help="open_clip pretrained tag for --clip-model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
def audit(folder: Path, policy_spec: str, registries: tuple[Path, ...], reference_data: str | None,
          run_dir: Path | None, report_dir: Path, overrides: tuple[str, ...], clip_model: str | None,
          clip_pretrained: str | None, as_json: bool) -> None:
    """Audit every image in FOLDER against a policy and write the report.

    Works on any folder of images, not only artengine's. Exit 0 when everything may be
    published, 1 when the policy blocked something, 2 on bad input.
    """
    from .audit import AuditContext
    from .auditor import AuditRunner, audit_folder
    from .policy import load_policy, parse_override
    from .report import build_report, write_report

    plugins = load_plugins()
    policy = load_policy(policy_spec, audits=plugins.components("audits"),
                         features=plugins.components("feature_extractors"))
    policy = policy.with_overrides([parse_override(o) for o in overrides])
    for reg in registries:
        if not reg.exists():
            raise ArtengineError(f"--registry {reg}: no such file")
    context = AuditContext(
        policy_path=policy.path,
        registries=[*policy.registries, *(str(r) for r in registries)],
        reference_data=reference_data,
        run_dir=str(run_dir) if run_dir else None,
        clip_model=clip_model,
        clip_pretrained=clip_pretrained,
    )
    runner = AuditRunner(policy, plugins, context)
    outcome = audit_folder(folder, runner, exclude=[report_dir], progress=not as_json)
    engine, versions = _versions(plugins)
    doc = build_report(
        kind="audit", images=outcome.images, batch=outcome.batch, policy=policy.as_dict(),
        engine=engine, plugins=versions,
        inputs={"folder": str(folder), "registries": context.registries,
                "reference_data": reference_data, "run": context.run_dir},
    )
    json_path, html_path = write_report(report_dir, doc, outcome.thumbnails)
    plugins.hook.artengine_report_written(json_path=str(json_path), html_path=str(html_path), report=doc)
    plugins.hook.artengine_batch_finished(summary={**doc["summary"], "verdict": doc["verdict"],
                                                   "report": str(json_path)})
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        s = doc["summary"]
        click.echo(f"{doc['verdict'].upper()}: {s['images']} images, {s['publishable']} publishable "
                   f"({s['pass']} pass, {s['warn']} warn, {s['block']} blocked, {s['error']} errors; "
                   f"batch {s['batch']})")
        for entry in doc["images"]:
            if entry["verdict"] in ("block", "error"):
                click.echo(f"  {entry['verdict']:<5} {entry['key']}: {'; '.join(entry['reasons'])}")
        for reason in outcome.batch.reasons:
            click.echo(f"  batch {reason}")
        click.echo(f"report: {html_path}")
    sys.exit(doc["exit_code"])


# ----------------------------------------------------------------------------- clip


@cli.group()
def clip() -> None:
    """The CLIP layer: the shipped tiny CLIP, other open_clip models, zero-shot checks."""


@clip.command("info")
@click.option("--clip-model", help="open_clip model name or checkpoint folder/file (default: shipped tiny CLIP).")
@click.option("--clip-pretrained", help="open_clip pretrained tag or .safetensors file for --clip-model.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
def clip_info(clip_model: str | None, clip_pretrained: str | None, as_json: bool) -> None:
    """Load a CLIP model and print what identifies it (name, weights sha256, sizes)."""
    from .clip import load_clip

    model = load_clip(clip_model, clip_pretrained)
    info = {**model.describe(), "weights_path": model.weights_path,
            "parameters": sum(p.numel() for p in model.model.parameters()), "logit_scale": model.logit_scale}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        click.echo(f"{key}: {value}")


@clip.command("train")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write (open_clip layout: open_clip_config.json + open_clip_model.safetensors).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Training steps (default: the shipped recipe).")
@click.option("--samples", type=click.IntRange(64), default=None, help="Distinct training images to render.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-images", type=click.IntRange(0), default=600, show_default=True,
              help="Held-out images for the zero-shot check afterwards (0: skip).")
def clip_train(out: Path, steps: int | None, samples: int | None, seed: int, eval_images: int) -> None:
    """Train the tiny CLIP on the built-in shapes and write it to OUT.

    With the defaults this re-creates the model shipped in artengine/models/tiny_clip.
    Use it with --clip-model OUT.
    """
    from dataclasses import replace

    from .clip import clip_from_module
    from .clip_train import TrainConfig, describe, save_tiny_clip, train_tiny_clip, zero_shot_accuracy

    load_plugins()
    if out.exists() and any(out.iterdir()):
        raise ArtengineError(f"--out {out}: folder exists and is not empty")
    config = TrainConfig(seed=seed)
    if steps is not None:
        config = replace(config, steps=steps)
    if samples is not None:
        config = replace(config, samples=samples)
    model, record = train_tiny_clip(config, progress=lambda msg: click.echo(msg, err=True))
    if eval_images:
        result = zero_shot_accuracy(clip_from_module(model, name="trained"), images=eval_images)
        record["zero_shot"] = {"accuracy": result.accuracy, "images": result.images, "seed": result.seed,
                               "prompts": result.prompts, "confusion": result.confusion}
        click.echo(describe(result))
    save_tiny_clip(model, out, record)
    click.echo(f"wrote {out} ({record['parameters'] / 1e6:.1f} M parameters, "
               f"trained {record['train_seconds']:.0f} s on {record['threads']} threads)")


@clip.command("eval")
@click.option("--clip-model", help="open_clip model name or checkpoint folder/file (default: shipped tiny CLIP).")
@click.option("--clip-pretrained", help="open_clip pretrained tag or .safetensors file for --clip-model.")
@click.option("--images", type=click.IntRange(1), default=600, show_default=True)
@click.option("--seed", type=int, default=20_261_125, show_default=True,
              help="shapes seed of the held-out images (the tiny CLIP trains on seed 0).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
def clip_eval(clip_model: str | None, clip_pretrained: str | None, images: int, seed: int, as_json: bool) -> None:
    """Zero-shot colour and shape accuracy on held-out shapes, with prompts unlike the
    training captions."""
    from dataclasses import asdict

    from .clip import load_clip
    from .clip_train import describe, zero_shot_accuracy

    load_plugins()
    model = load_clip(clip_model, clip_pretrained)
    result = zero_shot_accuracy(model, images=images, seed=seed)
    if as_json:
        click.echo(json.dumps({"model": model.describe(), **asdict(result)}, indent=2))
    else:
        click.echo(f"{model.name}")
        click.echo(describe(result))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="artengine")
