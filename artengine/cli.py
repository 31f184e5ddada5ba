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


# ----------------------------------------------------------------------------- training


def _parse_settings(pairs: tuple[str, ...]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ArtengineError(f"--set {pair}: expected KEY=VALUE")
        settings[key.strip()] = value.strip()
    return settings


@cli.command()
@click.option("--arch", help="Architecture: dcgan, cgan, stylegan, or one a plugin provides.")
@click.option("--data", "data_spec", help="Dataset name (shapes) or a folder of images (class subfolders).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder (created; must be new unless --resume).")
@click.option("--steps", type=click.IntRange(0), default=5000, show_default=True,
              help="Total generator steps (a resumed run continues up to this).")
@click.option("--image-size", type=click.Choice(["32", "64"]), help="Image size (default 32).")
@click.option("--batch-size", type=click.IntRange(1), help="Global batch size (default: the architecture's).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest good checkpoint.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, help="Seed of weights, noise and data order (default 0).")
@click.option("--preset", help="Named recipe of the architecture, e.g. 'demo' (short CPU budgets).")
@click.option("--lr-g", type=float, help="Generator learning rate.")
@click.option("--lr-d", type=float, help="Discriminator learning rate.")
@click.option("--loss", type=click.Choice(["ns", "hinge"]), help="Adversarial loss.")
@click.option("--augment", help="DiffAugment policy, e.g. 'color,translation,cutout' ('' for none).")
@click.option("--r1-gamma", type=float, help="R1 penalty weight (0: off).")
@click.option("--ema-kimg", type=float, help="EMA half-life in thousands of images.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other setting of the architecture (e.g. ngf=32); repeatable.")
@click.option("--data-length", type=click.IntRange(1), help="Procedural datasets: number of training images.")
@click.option("--label-attribute", help="Procedural datasets: attribute used as class/style label (shapes: shape, colour, background).")
@click.option("--sample-every", type=click.IntRange(1), default=500, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--keep-checkpoints", type=click.IntRange(1), default=3, show_default=True)
@click.option("--log-every", type=click.IntRange(1), default=50, show_default=True)
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this much training time (with a checkpoint).")
@click.option("--threads", type=click.IntRange(1),
              help="torch threads per process (default: torch's choice; 1 is faster on a busy machine).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def train(arch: str | None, data_spec: str | None, out: Path, steps: int, image_size: str | None,
          batch_size: int | None, resume: bool, device: str, seed: int | None, preset: str | None,
          lr_g: float | None, lr_d: float | None, loss: str | None, augment: str | None,
          r1_gamma: float | None, ema_kimg: float | None, settings: tuple[str, ...], data_length: int | None,
          label_attribute: str | None, sample_every: int, checkpoint_every: int, keep_checkpoints: int,
          log_every: int, max_seconds: float | None, threads: int | None, as_json: bool) -> None:
    """Train a GAN (or resume one) into a run folder.

    Checkpoints (safetensors), samples, metrics.jsonl and loss_curve.svg land in --out.
    Multi-process: `torchrun --nproc-per-node 2 -m artengine train ...`. Ctrl-C or SIGTERM
    stops at the next step with a checkpoint (exit 130); --resume continues exactly.
    """
    from .training import TrainingInterrupted, TrainOptions
    from .training import train as run_training

    overrides: dict[str, object] = dict(_parse_settings(settings))
    for key, value in (("lr_g", lr_g), ("lr_d", lr_d), ("loss", loss), ("augment", augment),
                       ("r1_gamma", r1_gamma), ("ema_kimg", ema_kimg)):
        if value is not None:
            overrides[key] = value
    options = TrainOptions(
        out=out, arch=arch, data=data_spec, steps=steps, image_size=int(image_size) if image_size else None,
        batch_size=batch_size, seed=seed, resume=resume, device=device, preset=preset, settings=overrides,
        data_length=data_length, label_attribute=label_attribute, sample_every=sample_every,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=log_every,
        max_seconds=max_seconds, threads=threads, progress=not as_json,
    )
    plugins = load_plugins()
    try:
        result = run_training(options, plugins)
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    if int(__import__("os").environ.get("RANK", "0")) != 0:
        return
    doc = {"run": str(result.run_dir), "step": result.step,
           "checkpoint": str(result.checkpoint) if result.checkpoint else None, "metrics": result.metrics}
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        m = result.metrics
        losses = f" (loss_d {m['loss_d']:.3f}, loss_g {m['loss_g']:.3f})" if "loss_d" in m else ""
        click.echo(f"{result.run_dir}: step {result.step}{losses}; checkpoint {result.checkpoint}")


@cli.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(10), default=5000, show_default=True,
              help="Generated images, and real images in each of the two real halves.")
@click.option("--features", default="clip", show_default=True,
              help="Feature extractor: clip, classifier, or a feature-extractor plugin's name.")
@click.option("--seed", type=int, default=12345, show_default=True, help="Latent seed of the generated images.")
@click.option("--clip-model", help="open_clip model name or local checkpoint (default: shipped tiny CLIP).")
@click.option("--clip-pretrained", help="open_clip pretrained tag for --clip-model.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def evaluate(run: Path, count: int, features: str, seed: int, clip_model: str | None,
             clip_pretrained: str | None, as_json: bool) -> None:
    """Measure a training run: Fréchet distance beside its real-vs-real floor, KID, and label
    accuracy of conditional and style models. Writes RUN/evaluation.json."""
    from .evaluation import EvaluationOptions, evaluate_run

    plugins = load_plugins()
    results = evaluate_run(EvaluationOptions(run=run, count=count, features=features, seed=seed,
                                             clip_model=clip_model, clip_pretrained=clip_pretrained), plugins)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    click.echo(f"{run} (step {results['step']}, {results['count']} images, features {results['features']})")
    click.echo(f"  FD  {results['fd']:.4g}   floor (real vs real) {results['fd_floor']:.4g}   "
               f"ratio {results['fd_ratio']:.2f}")
    click.echo(f"  KID {results['kid']:.4g} +- {results['kid_std']:.2g}   floor {results['kid_floor']:.4g}")
    if "classifier" in results:
        click.echo(f"  label classifier: {results['classifier']['held_out_accuracy']:.1%} on held-out real images")
    if "label_accuracy" in results:
        click.echo(f"  label accuracy of generated images: {results['label_accuracy']:.1%}")
    if "reference_label_accuracy" in results:
        click.echo(f"  label accuracy with styles from reference images: {results['reference_label_accuracy']:.1%}")


@cli.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-pickle", is_flag=True,
              help="Accept a pickle checkpoint as SOURCE (runs code from the file; only for trusted files).")
def export(source: Path, out: Path, allow_pickle: bool) -> None:
    """Write the EMA generator of SOURCE (run folder or checkpoint) as standalone safetensors."""
    from .models import export_generator

    plugins = load_plugins()
    path = export_generator(source, out, allow_pickle=allow_pickle, plugins=plugins)
    click.echo(f"wrote {path}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="artengine")
