"""The ``artengine`` command line.

One click group, one function per command. Commands parse options and call the library;
errors a user can fix (:class:`artengine.ArtengineError`, OS errors such as a full disk)
become one line on stderr and exit code 2, never a traceback. Exit codes: 0 pass,
1 a policy blocked something, 2 usage or input error.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import SEED_MAX, ArtengineError, InputError
from .hookspecs import HOOK_API_VERSION
from .plugins import COMPONENT_HOOKS, Plugins, get_plugins


#: Every command's ``--seed``: a whole number from 0 to what torch's generators take.
SEED = click.IntRange(0, SEED_MAX)


#: What click (8.2 and later) raises for a group named without a command, to show its help.
_NO_ARGS: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


class CLIError(click.ClickException):
    """A one-line error with exit code 2 (click's default for its own exceptions is 1)."""

    exit_code = 2


class CLIInterrupted(click.ClickException):
    """Ctrl-C (and, for a job or an audit, SIGTERM): one line and exit code 130 (128 + SIGINT, as a
    shell reports it; ``train`` exits so too), not click's "Aborted!" and 1, which says the
    policy blocked something."""

    exit_code = 130

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Any:
    """SIGTERM (a CI job cancelled, ``docker stop``, a scheduler) stops a job as Ctrl-C
    does: its workers with it, one line, exit 130, as ``train`` stops on it. Processes the
    job forks keep the handler; in them it ends the process as the signal would."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def terminated(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _command_name(ctx: click.Context) -> str:
    """The command as typed ("artengine generate"), for a line about it."""
    return " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))


def _os_error_line(exc: OSError) -> str:
    where = exc.filename or ""
    what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what


class ArtengineGroup(click.Group):
    """Turns user-fixable errors from any command, and click's own for a bad option or
    command, into one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ArtengineError as exc:
            raise CLIError(str(exc)) from None
        except _NO_ARGS:  # a group named without a command: its help, as click shows it
            raise
        except click.UsageError as exc:
            raise _usage_line(exc, ctx.command_path) from None
        except OSError as exc:
            raise CLIError(_os_error_line(exc)) from None
        except KeyboardInterrupt:
            raise CLIInterrupted(f"{_command_name(ctx)}: interrupted") from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            # A fault of artengine's or a library's, not of the input: its traceback, for a
            # report, then exit 2 ("error"), never Python's 1, which says the policy blocked something.
            import traceback

            traceback.print_exc()
            raise CLIError(f"{_command_name(ctx)}: internal error ({type(exc).__name__}: {exc}); the traceback above is for a "
                           "bug report") from None

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _NO_ARGS:
            raise
        except click.UsageError as exc:  # the top-level options
            raise _usage_line(exc, info_name or self.name or "artengine") from None


def _usage_line(exc: click.UsageError, fallback: str) -> CLIError:
    """Click's error for a bad option value or name, a missing argument or an unknown
    command, as one line naming the command, without the usage text."""
    where = exc.ctx.command_path if exc.ctx is not None else fallback
    return CLIError(f"{where}: {exc.format_message()} (see {where} --help)")


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
@click.option("--seed", type=SEED, default=0, show_default=True)
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


# ----------------------------------------------------------------------------- registry


@cli.group()
def registry() -> None:
    """Reference registries: copyrighted training images, by perceptual hash."""


@registry.command("add")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--licence", default="", help="Licence of these images (stored with each).")
@click.option("--source", default="", help="Where these images come from (stored with each).")
def registry_add(db: Path, paths: tuple[Path, ...], licence: str, source: str) -> None:
    """Hash reference images (files, or folders recursively) into the registry DB.

    Creates DB if needed. Re-adding an image already present changes nothing.
    Unreadable files are reported and skipped; if no file given can be read, that is an
    error (exit 2), and a DB this command created is removed again.
    """
    from .registry import add_to_registry

    load_plugins()
    existed = db.exists()
    summary, info = add_to_registry(db, paths, licence=licence, source=source)
    if not summary.added and not summary.unchanged:  # nothing given could be used: a mistake
        if not existed:  # the empty registry this command made goes again
            for made in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.index")):
                made.unlink(missing_ok=True)
        if summary.skipped:
            path, reason = summary.skipped[0]
            raise InputError(f"registry add: none of the {len(summary.skipped)} file(s) given could be read "
                             f"(first: {path}: {reason}); nothing added to {db}")
        raise InputError(f"registry add: no image files in {', '.join(map(str, paths))}; nothing added to {db}")
    click.echo(f"{db}: added {summary.added}, already present {summary.unchanged}, "
               f"skipped {len(summary.skipped)} unreadable; {info['references']} references in total")
    for path, reason in summary.skipped[:20]:
        click.echo(f"  skipped {path}: {reason}", err=True)
    if len(summary.skipped) > 20:
        click.echo(f"  ... and {len(summary.skipped) - 20} more skipped", err=True)
    if summary.low_quality:
        click.echo(f"  {len(summary.low_quality)} added image(s) have too little detail for a reliable "
                   f"hash, e.g. {summary.low_quality[0]}", err=True)


@registry.command("upgrade")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
def registry_upgrade(db: Path) -> None:
    """Upgrade a registry made by an earlier artengine to the current schema, in place.

    Schema 1 registries gain each reference's colour signature, measured on its stored
    thumbnail; schema 1 and 2 registries gain band hashes and equalised pHashes, computed
    from each reference's source file when it is unchanged, else from its thumbnail. The
    stored pHash and dHash are kept.
    """
    from .registry import SCHEMA_VERSION, upgrade_registry

    before, info = upgrade_registry(db)
    if before == SCHEMA_VERSION:
        click.echo(f"{db}: already at schema version {SCHEMA_VERSION}; nothing to do")
    else:
        click.echo(f"{db}: upgraded from schema version {before} to {SCHEMA_VERSION} "
                   f"({info['references']} references)")


@registry.command("info")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
def registry_info(db: Path, as_json: bool) -> None:
    """Show what a registry holds: counts, hash algorithms, library versions, size."""
    from .registry import ReferenceRegistry

    with ReferenceRegistry(db) as reg:
        info = reg.info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info['path']}: {info['references']} references, {info['hashes']} hashes "
               f"({', '.join(info['algorithms'])}; {info['variants_per_reference']} variants each)")
    click.echo(f"  scheme {info['hash_scheme']}, schema {info['schema_version']}, "
               f"generation {info['generation']}, created {info['created_at']}")
    click.echo("  versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    click.echo(f"  size {info['size_bytes'] / 1e6:.2f} MB; low-quality references: "
               f"{info['low_quality_references']}")
    for licence, count in info["licences"].items():
        click.echo(f"  licence {licence or '(none)'}: {count}")


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
@click.option("--reference-distribution", "reference_distribution", type=click.Path(path_type=Path),
              help="JSON attribute distribution to compare with (bias), e.g. a style's stored one "
                   "(artengine bias reference writes it).")
@click.option("--style", "style_name", metavar="NAME",
              help="Installed style the images came from: its training-set registry and attribute "
                   "distribution are used by the near-duplicate and bias audits.")
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
          reference_distribution: Path | None, style_name: str | None, run_dir: Path | None, report_dir: Path,
          overrides: tuple[str, ...], clip_model: str | None,
          clip_pretrained: str | None, as_json: bool) -> None:
    """Audit every image in FOLDER against a policy and write the report.

    Works on any folder of images, not only artengine's. Exit 0 when everything may be
    published, 1 when the policy blocked something, 2 on bad input.
    """
    from .audit import AuditContext
    from .auditor import AuditRunner, audit_folder
    from .bias import load_reference_distribution
    from .policy import load_policy, parse_override
    from .report import build_report, write_report

    plugins = load_plugins()
    policy = load_policy(policy_spec, audits=plugins.components("audits"),
                         features=plugins.components("feature_extractors"))
    policy = policy.with_overrides([parse_override(o) for o in overrides])
    for reg in registries:
        if not reg.exists():
            raise ArtengineError(f"--registry {reg}: no such file")
    style = plugins.component("styles", style_name) if style_name else None
    context = AuditContext(
        policy_path=policy.path,
        registries=[*policy.registries, *(str(r) for r in registries),
                    *([str(style.registry)] if style is not None and style.registry else [])],
        reference_data=reference_data,
        reference_distribution=(load_reference_distribution(reference_distribution) if reference_distribution
                                else style.read_reference_distribution() if style is not None else None),
        run_dir=str(run_dir) if run_dir else None,
        clip_model=clip_model,
        clip_pretrained=clip_pretrained,
    )
    runner = AuditRunner(policy, plugins, context)
    with _terminate_as_interrupt():  # a cancelled CI job: one line and 130, as for a job
        outcome = audit_folder(folder, runner, exclude=[report_dir], progress=not as_json)
    engine, versions = _versions(plugins)
    doc = build_report(
        kind="audit", images=outcome.images, batch=outcome.batch, policy=policy.as_dict(),
        engine=engine, plugins=versions,
        inputs={"folder": str(folder), "registries": context.registries,
                "reference_data": reference_data,
                "reference_distribution": str(reference_distribution) if reference_distribution else None,
                "style": style_name, "run": context.run_dir},
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

# ----------------------------------------------------------------------------- provenance


_KEYS_HELP = "Keys folder (default: $ARTENGINE_KEYS, else ~/.config/artengine/keys)."
_LEDGER_HELP = "Provenance ledger (default: $ARTENGINE_LEDGER, else ~/.local/share/artengine/ledger.sqlite)."


@cli.group()
def keys() -> None:
    """Create and inspect provenance keys: an Ed25519 signing key pair and a watermark key."""


@keys.command("init")
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path), help=_KEYS_HELP)
@click.option("--force", is_flag=True, help="Replace existing keys (images signed with them become unverifiable).")
def keys_init(keys_dir: Path | None, force: bool) -> None:
    """Create the keys (private files with mode 0600); never overwrites without --force."""
    from .provenance import init_keys

    made = init_keys(keys_dir, force=force)
    click.echo(f"created keys in {made.source} (signing key id {made.key_id})")
    click.echo("  keep signing.key and watermark.key secret and backed up; share signing.pub with verifiers")


@keys.command("show")
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path), help=_KEYS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
def keys_show(keys_dir: Path | None, as_json: bool) -> None:
    """Show which keys are present and the signing key id."""
    from .provenance import load_keys

    found = load_keys(keys_dir)
    doc = {"source": found.source, "key_id": found.key_id, "signing_key": found.signing_key is not None,
           "watermark_key": found.watermark_key is not None, "trusted": sorted(found.trusted)}
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"keys: {found.source}")
    click.echo(f"  signing key: {'yes' if doc['signing_key'] else 'no'} (key id {found.key_id or '-'})")
    click.echo(f"  watermark key: {'yes' if doc['watermark_key'] else 'no'}")
    click.echo(f"  trusted signers: {', '.join(doc['trusted']) or 'none'}")


def _scheme(plugins: Plugins, name: str, key: bytes) -> Any:
    return plugins.component("watermarks", name)(key)


@cli.group()
def watermark() -> None:
    """Embed and detect the invisible watermark (mark only; `artengine sign` adds the manifest)."""


@watermark.command("embed")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--payload", required=True, help="The payload: 12 hex digits (48 bits).")
@click.option("--key", "key_path", type=click.Path(path_type=Path),
              help="Watermark key file, or a keys folder (default: the keys folder).")
@click.option("--scheme", default="stdm", show_default=True, help="Watermark scheme (see `artengine plugins`).")
def watermark_embed(source: Path, target: Path, payload: str, key_path: Path | None, scheme: str) -> None:
    """Write TARGET: SOURCE with PAYLOAD embedded (alpha kept; format from the suffix)."""
    from .provenance import load_keys, parse_payload, watermark_file

    plugins = load_plugins()
    marker = _scheme(plugins, scheme, load_keys(key_path).require_watermark())
    psnr = watermark_file(source, target, scheme=marker, payload=parse_payload(payload, marker.payload_bytes))
    click.echo(f"wrote {target} (payload {payload.lower()}, PSNR {psnr:.2f} dB)")


@watermark.command("detect")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--key", "key_path", type=click.Path(path_type=Path),
              help="Watermark key file, or a keys folder (default: the keys folder).")
@click.option("--scheme", default="stdm", show_default=True, help="Watermark scheme (see `artengine plugins`).")
@click.option("--no-search", is_flag=True, help="Read images as they stand; skip crop/rotation resynchronisation.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
def watermark_detect(images: tuple[Path, ...], key_path: Path | None, scheme: str, no_search: bool,
                     as_json: bool) -> None:
    """Read the payload of each image. Exit 0 when every image carries a readable mark, 1 otherwise."""
    from .errors import ImageLoadError
    from .io import iter_image_files, open_image
    from .provenance import load_keys
    from .watermark import WatermarkReading

    plugins = load_plugins()
    marker = _scheme(plugins, scheme, load_keys(key_path).require_watermark())
    results = []
    for path in iter_image_files(images):
        try:
            reading = marker.detect(open_image(path).rgb, search=not no_search)
        except ImageLoadError as exc:
            reading = WatermarkReading(False, None, 0.0, reason=f"unreadable image: {exc.reason}")
        results.append({"path": str(path), **reading.as_dict()})
        if not as_json:
            if reading.detected:
                click.echo(f"detected   {path}: payload {reading.payload_hex} (confidence {reading.confidence:.2f})")
            else:
                click.echo(f"not found  {path}: {reading.reason}")
    if as_json:
        click.echo(json.dumps({"scheme": scheme, "images": results}, indent=2))
    sys.exit(0 if results and all(r["detected"] for r in results) else 1)


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--payload", help="12 hex digits (default: random). The ledger refuses a payload already used.")
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path), help=_KEYS_HELP)
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), help=_LEDGER_HELP)
@click.option("--label", help="Recorded in the manifest: the class label or subject.")
@click.option("--style", help="Recorded in the manifest: the style.")
@click.option("--note", help="Recorded in the manifest: free text (e.g. the author).")
@click.option("--scheme", default="stdm", show_default=True, help="Watermark scheme (see `artengine plugins`).")
def sign(source: Path, target: Path, payload: str | None, keys_dir: Path | None, ledger_path: Path | None,
         label: str | None, style: str | None, note: str | None, scheme: str) -> None:
    """Mark SOURCE, sign its manifest and record it: TARGET (PNG) plus TARGET.manifest.json."""
    import secrets

    from .provenance import Ledger, default_ledger_path, load_keys, parse_payload, sign_file, utc_now

    plugins = load_plugins()
    found = load_keys(keys_dir)
    marker = _scheme(plugins, scheme, found.require_watermark())
    value = parse_payload(payload, marker.payload_bytes) if payload else secrets.token_bytes(marker.payload_bytes)
    engine, versions = _versions(plugins)
    with Ledger(ledger_path or default_ledger_path()) as ledger:
        stamped = sign_file(source, target, scheme=marker, signing_key=found.require_signing(), ledger=ledger,
                            payload=value, created=utc_now(), engine={"name": "artengine", **engine},
                            plugins=versions, label=label, style=style,
                            extra={"note": note} if note else None)
    click.echo(f"wrote {target} and {target.name}.manifest.json (payload {value.hex()}, "
               f"key {stamped.manifest['signature']['key_id']}); recorded in {ledger.path}")


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path), help=_KEYS_HELP)
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), help=_LEDGER_HELP)
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Mark reads below this confidence are not trusted.")
@click.option("--no-search", is_flag=True, help="Skip crop/rotation resynchronisation of the mark.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
def verify(images: tuple[Path, ...], keys_dir: Path | None, ledger_path: Path | None, min_confidence: float,
           no_search: bool, as_json: bool) -> None:
    """Check each image's provenance: verified, watermark-only, tampered or unknown.

    Exit 0 when every image is verified, 1 otherwise.
    """
    from .io import iter_image_files
    from .provenance import Ledger, default_ledger_path, load_keys, verify_image

    plugins = load_plugins()
    found = load_keys(keys_dir)
    path = ledger_path or default_ledger_path()
    ledger = Ledger(path, create=False) if ledger_path or path.exists() else None
    results = []
    try:
        for image in iter_image_files(images):
            result = verify_image(image, keys=found, schemes=plugins.components("watermarks"), ledger=ledger,
                                  min_confidence=min_confidence, search=not no_search)
            results.append(result)
            if not as_json:
                # verified provenance, yet an audit verdict blocks it: the code says which kind
                label = result.code if result.status == "verified" and not result.verified else result.status
                click.echo(f"{label:<14} {image}: {result.message}")
    finally:
        if ledger is not None:
            ledger.close()
    if as_json:
        click.echo(json.dumps({"images": [r.as_dict() for r in results]}, indent=2))
    sys.exit(0 if results and all(r.verified for r in results) else 1)
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
@click.option("--init", "init", metavar="SOURCE",
              help="Start a new run from trained networks: a run folder, a checkpoint, a file from "
                   "`export --for-training`, or a shipped starting point (shapes-cgan32). Its architecture, "
                   "settings, image size and data are the defaults.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=SEED, help="Seed of weights, noise and data order (default 0).")
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
@click.option("--label-attribute", help="Procedural datasets: attribute used as class/style label "
              "(shapes: shape, colour, background, or several joined with +, e.g. shape+colour).")
@click.option("--sample-every", type=click.IntRange(1),
              help="Steps between sample grids (default 500; on --resume, the run's own).")
@click.option("--checkpoint-every", type=click.IntRange(1),
              help="Steps between checkpoints (default 1000; on --resume, the run's own).")
@click.option("--keep-checkpoints", type=click.IntRange(1),
              help="Newest checkpoints kept (default 3; on --resume, the run's own).")
@click.option("--log-every", type=click.IntRange(1),
              help="Steps between metrics lines (default 50; on --resume, the run's own).")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this much training time (with a checkpoint).")
@click.option("--threads", type=click.IntRange(1),
              help="torch threads per process (default: torch's choice; 1 is faster on a busy machine).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def train(arch: str | None, data_spec: str | None, out: Path, steps: int, image_size: str | None,
          batch_size: int | None, resume: bool, init: str | None, device: str, seed: int | None, preset: str | None,
          lr_g: float | None, lr_d: float | None, loss: str | None, augment: str | None,
          r1_gamma: float | None, ema_kimg: float | None, settings: tuple[str, ...], data_length: int | None,
          label_attribute: str | None, sample_every: int | None, checkpoint_every: int | None,
          keep_checkpoints: int | None, log_every: int | None, max_seconds: float | None, threads: int | None,
          as_json: bool) -> None:
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
        max_seconds=max_seconds, threads=threads, progress=not as_json, init=init,
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
@click.option("--seed", type=SEED, default=12345, show_default=True, help="Latent seed of the generated images.")
@click.option("--classifier-steps", type=click.IntRange(1), default=600, show_default=True,
              help="Training steps of the label classifier that judges label accuracy.")
@click.option("--clip-model", help="open_clip model name or local checkpoint (default: shipped tiny CLIP).")
@click.option("--clip-pretrained", help="open_clip pretrained tag for --clip-model.")
@click.option("--checkpoint", type=click.IntRange(0), metavar="STEP",
              help="Judge the kept checkpoint of this step instead of the newest one "
                   "(results go to RUN/evaluation-step-<STEP>.json).")
@click.option("--all-checkpoints", is_flag=True,
              help="Judge every kept checkpoint and name the best (results in RUN/evaluation-checkpoints.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def evaluate(run: Path, count: int, features: str, seed: int, classifier_steps: int, clip_model: str | None,
             clip_pretrained: str | None, checkpoint: int | None, all_checkpoints: bool, as_json: bool) -> None:
    """Measure a training run: Fréchet distance beside its real-vs-real floor, KID, and label
    accuracy of conditional and style models. Writes RUN/evaluation.json."""
    from .evaluation import EvaluationOptions, evaluate_run

    if all_checkpoints and checkpoint is not None:
        raise InputError("--all-checkpoints and --checkpoint: give one of them")
    plugins = load_plugins()
    options = EvaluationOptions(run=run, count=count, features=features, seed=seed,
                                classifier_steps=classifier_steps, clip_model=clip_model,
                                clip_pretrained=clip_pretrained, checkpoint=checkpoint)
    if all_checkpoints:
        _evaluate_all(options, plugins, as_json)
        return
    results = evaluate_run(options, plugins)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    click.echo(f"{run} (step {results['step']}, {results['count']} images, features {results['features']})")
    click.echo(f"  FD  {results['fd']:.4g}   floor (real vs real) {results['fd_floor']:.4g}   "
               f"ratio {results['fd_ratio']:.2f}")
    click.echo(f"  KID {results['kid']:.4g} +- {results['kid_std']:.2g}   floor {results['kid_floor']:.4g}")
    if "classifier" in results:
        click.echo(f"  label classifier: {results['classifier']['held_out_accuracy']:.1%} on held-out real images")
    if "label_accuracy_unavailable" in results:
        click.echo(f"  label accuracy: unavailable ({results['label_accuracy_unavailable']})")
    elif "label_accuracy" in results:
        click.echo(f"  label accuracy of generated images: {results['label_accuracy']:.1%}")
    if results.get("label_accuracy_per_part"):
        click.echo(f"  label accuracy per part:{_per_part_text(results)}")
    if results.get("reference_label_accuracy") is not None:
        click.echo(f"  label accuracy with styles from reference images: {results['reference_label_accuracy']:.1%}")


def _per_part_text(row: dict) -> str:
    """Joint labels: each part's accuracy, or why the judge cannot give it."""
    judge = (row.get("classifier") or {}).get("held_out_accuracy_per_part", {})
    texts = []
    for name, accuracy in row["label_accuracy_per_part"].items():
        if accuracy is not None:
            texts.append(f"{name} {accuracy:.1%}")
        elif name in judge:
            texts.append(f"{name} unavailable (judge {judge[name]:.1%} on real images)")
        else:
            texts.append(f"{name} unavailable")
    return " " + " / ".join(texts)


def _per_label_text(per: dict[str, float]) -> str:
    """Each label's accuracy, or with many labels (joint ones: 24 or 96) the three lowest."""
    if not per:
        return ""
    if len(per) <= 6:
        return " (" + " / ".join(f"{name} {v:.0%}" for name, v in per.items()) + ")"
    lowest = sorted(per.items(), key=lambda kv: kv[1])[:3]
    return " (lowest: " + " / ".join(f"{name} {v:.0%}" for name, v in lowest) + ")"


def _evaluate_all(options, plugins, as_json: bool) -> None:
    """``evaluate --all-checkpoints``: one line per kept checkpoint as it is judged, then the best."""
    from .evaluation import JUDGE_MIN_ACCURACY, evaluate_checkpoints

    def line(row: dict, reused: bool) -> None:
        if as_json:
            return
        accuracy = row.get("label_accuracy")
        label = "" if accuracy is None else f"   label accuracy {accuracy:6.1%}"
        if "label_accuracy_unavailable" in row:
            label = f"   label accuracy unavailable (judge below {JUDGE_MIN_ACCURACY:.0%} on real images)"
        detail = _per_label_text(row.get("label_accuracy_per_label") or {})
        if row.get("label_accuracy_per_part"):
            detail += f";{_per_part_text(row)}"
        click.echo(f"  step {row['step']:>7}   FD ratio {row['fd_ratio']:8.2f}{label}{detail}"
                   f"{'   (stored)' if reused else ''}")

    def header(kept: int) -> None:  # after the run and options are checked: no header above an error
        if not as_json:
            click.echo(f"{options.run}: {kept} kept checkpoints, features {options.features}, "
                       f"{options.count} images")

    summary = evaluate_checkpoints(options, plugins, on_result=line, on_start=header)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"best ({summary['rule']}): step {summary['best']['step']}: {summary['best']['checkpoint']}")


# ----------------------------------------------------------------------------- generate


@cli.command()
@click.option("--model", required=True,
              help="Training run folder, exported weights (.safetensors), or the name of an installed style.")
@click.option("--count", type=click.IntRange(1), required=True, help="Number of images.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Job folder: approved/, quarantine/, report/, job.json, journal.jsonl.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of latents and the label mix.")
@click.option("--label", "labels", multiple=True, metavar="NAME[:WEIGHT]",
              help="Class or style name, optionally weighted (repeatable; default: an even mix of all).")
@click.option("--style-ref", type=click.Path(dir_okay=False, path_type=Path),
              help="Reference image whose style a style model copies.")
@click.option("--policy", "policy_spec", default="default", show_default=True,
              help="Policy file, or the name of a shipped policy (default, publication).")
@click.option("--registry", "registries", multiple=True, type=click.Path(path_type=Path),
              help="Reference registry (repeatable); added to the policy's and the style's.")
@click.option("--reference-data", help="Dataset name or folder the bias audit compares with (default: the run's training data).")
@click.option("--override", "overrides", multiple=True, metavar="AUDIT=REASON",
              help="Allow publication despite an error, unknown or disabled AUDIT; recorded in the report.")
@click.option("--size", type=click.IntRange(1), help="Output side in pixels (default 256: the watermark's minimum).")
@click.option("--workers", type=click.IntRange(1),
              help="Producer processes (local) or actors (ray). Default: one process per core for a job of 64 "
                   "images or more on Linux (forked, the model loaded once), else 1.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", help="Address of an existing Ray cluster (default: start a local one).")
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path), help=_KEYS_HELP)
@click.option("--ledger", type=click.Path(dir_okay=False, path_type=Path), help=_LEDGER_HELP)
@click.option("--clip-model", help="open_clip model name or local checkpoint (default: shipped tiny CLIP).")
@click.option("--clip-pretrained", help="open_clip pretrained tag for --clip-model.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def generate(model: str, count: int, out: Path, seed: int, labels: tuple[str, ...], style_ref: Path | None,
             policy_spec: str, registries: tuple[Path, ...], reference_data: str | None, overrides: tuple[str, ...], size: int | None,
             workers: int | None, executor: str, ray_address: str | None, keys_dir: Path | None, ledger: Path | None,
             clip_model: str | None, clip_pretrained: str | None, as_json: bool) -> None:
    """Generate, watermark, sign, audit and gate a batch of images.

    Each image lands in approved/ or quarantine/ with its signed manifest; the report goes
    to OUT/report. Killed at any point, the same command resumes where it stopped. Exit 0
    when everything was approved, 1 when the policy blocked something, 2 on bad input.
    """
    from .generation import GenerateOptions, generate as run_job

    plugins = load_plugins()
    options = GenerateOptions(
        model=model, count=count, out=out, seed=seed, labels=labels, style_ref=style_ref, policy=policy_spec,
        registries=[str(r) for r in registries], reference_data=reference_data, overrides=overrides, size=size, workers=workers or 0,
        executor=executor, ray_address=ray_address, keys_dir=str(keys_dir) if keys_dir else None,
        ledger=str(ledger) if ledger else None, clip_model=clip_model, clip_pretrained=clip_pretrained,
        progress=not as_json,
    )
    try:
        with _terminate_as_interrupt():
            result = run_job(options, plugins)
    except KeyboardInterrupt:
        from .journal import iter_records

        done = len({r["index"] for r in iter_records(out) if r.get("type") == "image"})
        kept = f"{done} of {count} images are done and kept in {out}" if done else "no image was done yet"
        raise CLIInterrupted(f"artengine generate: interrupted; {kept}; the same command resumes") from None
    if as_json:
        click.echo(json.dumps({"out": str(result.out), "count": result.count, "approved": result.approved,
                               "quarantined": result.quarantined, "verdict": result.verdict,
                               "exit_code": result.exit_code, "resumed": result.resumed,
                               "count_before": result.count_before, "workers": result.workers,
                               "report": str(result.report_json), "html": str(result.report_html)}, indent=2))
    else:
        if result.count_before is not None:
            click.echo(f"--count: the job had {result.count_before} images, it now has {result.count}")
        if result.resumed:
            click.echo(f"resumed: {result.resumed} image(s) were already complete")
        click.echo(f"{result.verdict.upper()}: {result.count} images, {result.approved} approved, "
                   f"{result.quarantined} quarantined")
        click.echo(f"approved: {result.out / 'approved'}")
        click.echo(f"report: {result.report_html}")
    sys.exit(result.exit_code)



@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artengine-demo"),
              show_default=True, help="Folder for everything the demo makes (keys and ledger included).")
@click.option("--train-seconds", type=click.FloatRange(min=5), default=90.0, show_default=True,
              help="Training budget.")
@click.option("--count", type=click.IntRange(8), default=48, show_default=True, help="Images to generate.")
@click.option("--from-scratch", is_flag=True,
              help="Train new networks instead of fine-tuning the shipped shapes-cgan32 starting point.")
def demo(out: Path, train_seconds: float, count: int, from_scratch: bool) -> None:
    """The main job end to end on built-in data, with nothing downloaded.

    Fine-tunes the shipped shapes GAN (--from-scratch: trains new networks), registers its
    training images as copyrighted references, generates a skewed batch through the
    publication policy, then audits a submission with planted copies of training images,
    and writes the report. Takes a few minutes on CPU.
    """
    from .demo import run_demo

    load_plugins()
    run_demo(out, train_seconds=train_seconds, count=count, from_scratch=from_scratch, echo=click.echo)


@cli.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-pickle", is_flag=True,
              help="Accept a pickle checkpoint as SOURCE (runs code from the file; only for trusted files).")
@click.option("--for-training", is_flag=True,
              help="Write G, EMA G and D (no optimizer state): a starting point for `train --init`.")
def export(source: Path, out: Path, allow_pickle: bool, for_training: bool) -> None:
    """Write the EMA generator of SOURCE (run folder or checkpoint) as standalone safetensors."""
    if for_training:
        from .starting import export_starting_point

        if allow_pickle:
            raise InputError("--for-training reads safetensors runs and checkpoints only; drop --allow-pickle")
        click.echo(f"wrote {export_starting_point(source, out)}")
        return
    from .models import export_generator

    plugins = load_plugins()
    path = export_generator(source, out, allow_pickle=allow_pickle, plugins=plugins)
    click.echo(f"wrote {path}")


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
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--eval-images", type=click.IntRange(0), default=600, show_default=True,
              help="Held-out images for the zero-shot check afterwards (0: skip).")
def clip_train(out: Path, steps: int | None, samples: int | None, seed: int, eval_images: int) -> None:
    """Train the tiny CLIP on the built-in shapes and write it to OUT.

    With the defaults this re-creates the model shipped in artengine/clip_weights/tiny_clip.
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
@click.option("--seed", type=SEED, default=20_261_125, show_default=True,
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


# ----------------------------------------------------------------------------- bias


@cli.group()
def bias() -> None:
    """Bias audit helpers: reference distributions measured on training data."""


@bias.command("reference")
@click.option("--policy", "policy_spec", required=True,
              help="Policy whose [audits.bias] attributes are measured (file or shipped name).")
@click.option("--reference-data", required=True, help="Training data: a dataset name (shapes) or a folder.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON file to write (give it to a style, or to audit --reference-distribution).")
@click.option("--images", type=click.IntRange(1), default=None,
              help="Training images to classify (default: the policy's reference_images).")
@click.option("--clip-model", help="open_clip model name or local checkpoint (default: shipped tiny CLIP).")
@click.option("--clip-pretrained", help="open_clip pretrained tag for --clip-model.")
def bias_reference(policy_spec: str, reference_data: str, out: Path, images: int | None,
                   clip_model: str | None, clip_pretrained: str | None) -> None:
    """Measure the training attribute distribution with the policy's classifier and write it.

    A style ships this file so audits of its outputs compare with its training data without
    measuring again. Use the same CLIP model for the audits.
    """
    from .audit import AuditContext
    from .bias import measure_reference, parse_attributes, reference_distribution_document
    from .clip import clip_for_context
    from .io import atomic_write_json
    from .policy import load_policy

    plugins = load_plugins()
    policy = load_policy(policy_spec, audits=plugins.components("audits"),
                         features=plugins.components("feature_extractors"))
    rule = policy.audits.get("bias")
    if rule is None:
        raise ArtengineError(f"{policy.path}: audits.bias: the policy has no bias audit to measure for")
    specs = parse_attributes(rule.settings["attributes"], source=policy.path, prefix="audits.bias.attributes")
    datasets = plugins.components("datasets")
    if reference_data not in datasets and not Path(reference_data).is_dir():
        raise ArtengineError(f"--reference-data {reference_data}: neither a dataset name nor a folder of images")
    context = AuditContext(policy_path=policy.path, clip_model=clip_model, clip_pretrained=clip_pretrained)
    model = clip_for_context(context, policy.features.get("clip", {}))
    measured = measure_reference(model, specs, reference_data, datasets=datasets,
                                 images=images or rule.settings["reference_images"], seed=rule.settings["seed"])
    atomic_write_json(out, reference_distribution_document(measured, model))
    for spec in specs:
        shares = ", ".join(f"{v} {p * 100:.0f} %" for v, p in measured.overall[spec.name].probabilities.items())
        click.echo(f"{spec.name}: {shares}")
    click.echo(f"wrote {out} ({measured.images} images of {reference_data}, CLIP {model.name})")
# ----------------------------------------------------------------------------- styles


@cli.group()
def style() -> None:
    """Package trained runs as style plugins that studios install with pip."""


@style.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Style name (--model NAME); package artengine-style-NAME.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder to write the package to (must not exist or be empty).")
@click.option("--licence", default="", help="Licence text of the style (written to LICENCE).")
@click.option("--description", default="", help="One line describing the style.")
@click.option("--version", "package_version", default="0.1.0", show_default=True,
              help="Version of the package.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON on stdout.")
def style_export(run: Path, name: str, out: Path, licence: str, description: str, package_version: str,
                 as_json: bool) -> None:
    """Write RUN as a pip-installable style plugin: weights, config, the training-set hash
    registry, the training attribute distribution, licence and model card."""
    from .style_export import export_style

    plugins = load_plugins()
    written = export_style(run, name=name, out=out, licence=licence, description=description,
                           version=package_version, plugins=plugins)
    if as_json:
        click.echo(json.dumps(written.as_dict(), indent=2))
        return
    click.echo(f"wrote {written.distribution} to {written.out} "
               f"({written.references} training images in its registry)")
    click.echo(f"install it with: pip install {written.out}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="artengine")
