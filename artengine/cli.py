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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="artengine")
