"""``artengine demo``: the main job end to end on built-in data, with nothing downloaded.

1. Train a small class-conditional GAN on the procedural shapes (label: the shape): by
   default fine-tune the shipped ``shapes-cgan32`` starting point (``train --init``), so that
   the short budget ends with recognisable shapes; ``from_scratch`` trains new networks.
2. Register the training images as copyrighted references (perceptual-hash registry).
3. Generate a batch with a deliberately skewed shape mix through the publication
   policy: every image watermarked, signed, audited and gated into approved/ or
   quarantine/, and the batch's shape and colour distributions compared with the
   training data's.
4. Audit a "submission" folder, as a studio does before publishing anything, whoever made
   it: the whole generated batch handed in as one folder, plus a few lightly edited copies
   of training images (a JPEG re-save, a resize, a crop) that someone slipped in. The gate
   must block the skewed batch and the copies, naming the references they copy.

Everything lands in one folder; keys and ledger too, so the demo touches nothing else.
"""
from __future__ import annotations

import collections
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import InputError

#: The shipped starting point the demo fine-tunes (artengine.starting).
DEMO_START = "shapes-cgan32"

#: The skewed conditioning mix: circles are drawn 5 times as often as each other shape.
SKEWED_MIX = ("circle:5", "square", "triangle", "star")


@dataclass
class DemoResult:
    """Where the demo put things and what the gate decided."""

    out: Path
    run: Path
    registry: Path
    generated: Any  # generation.GenerateResult
    audit_verdict: str
    audit_blocked: list[str]
    audit_report: Path
    seconds: float


def run_demo(out: Path, *, train_seconds: float = 90.0, count: int = 48, copies: int = 3,
             from_scratch: bool = False, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out`` (see the module docstring)."""
    from .auditor import AuditRunner, audit_folder
    from .audit import AuditContext
    from .data import open_dataset
    from .generation import GenerateOptions, generate
    from .io import atomic_save_image
    from .plugins import get_plugins
    from .policy import load_policy
    from .provenance import init_keys
    from .registry import add_to_registry
    from .runs import read_run_config
    from .report import build_report, write_report
    from .training import TrainOptions, train

    started = time.monotonic()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "demo.txt").exists():
        raise InputError(f"--out {out}: folder exists and is not an artengine demo folder; choose another")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.txt").write_text("artengine demo folder\n")
    keys, ledger = out / "keys", out / "ledger.sqlite"
    if not (keys / "signing.key").exists():
        init_keys(keys)
    os.environ["ARTENGINE_KEYS"] = str(keys)
    os.environ["ARTENGINE_LEDGER"] = str(ledger)
    plugins = get_plugins()

    # 1. Train.
    run = out / "run"
    how = "from new networks" if from_scratch else f"from the shipped starting point {DEMO_START}"
    echo(f"[1/4] training a class-conditional GAN on shapes {how} for up to {train_seconds:.0f} s -> {run}")
    options = demo_train_options(run, train_seconds, from_scratch=from_scratch)
    if (run / "config.json").exists():
        stored = read_run_config(run)
        made = (stored.get("init", {}).get("source"), stored["data"]["label_attribute"])
        if made != (options.init, options.label_attribute):
            how = f"from {made[0]}" if made[0] else "from scratch"
            raise InputError(f"--out {out}: holds a demo run trained {how} with {made[1]} labels, not as "
                             "asked now; choose another --out folder")
        options = TrainOptions(out=run, steps=options.steps, resume=True, max_seconds=train_seconds,
                               progress=True)  # the run keeps its own checkpoint and sample schedule
    result = train(options, plugins)
    echo(f"      trained {getattr(result, 'step', '?')} steps")

    # 2. Register the training images.
    training_images = out / "training-images"
    data = read_run_config(run)["data"]
    dataset = open_dataset(data["spec"], image_size=32, seed=data["seed"], length=data["length"],
                           label_attribute=data["label_attribute"], datasets=plugins.components("datasets"))
    if not training_images.exists():
        partial = out / ".training-images.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for i in range(len(dataset)):
            atomic_save_image(partial / f"train-{i:05d}.png", dataset[i].image)
        os.replace(partial, training_images)
    registry = out / "registry.sqlite"
    echo(f"[2/4] registering {len(dataset)} training images as copyrighted references -> {registry}")
    add_to_registry(registry, [training_images], licence="demo: all rights reserved",
                    source="built-in shapes training set", progress=True)

    # 3. Generate through the publication policy.
    job = out / "batch"
    echo(f"[3/4] generating {count} images with a skewed shape mix ({', '.join(SKEWED_MIX)}) "
         f"through the publication policy -> {job}")
    generated = generate(GenerateOptions(model=str(run), count=count, out=job, seed=1, labels=SKEWED_MIX,
                                         policy="publication", registries=[str(registry)],
                                         reference_data=str(training_images)), plugins)
    echo(f"      {generated.verdict.upper()}: {generated.approved} approved, {generated.quarantined} quarantined "
         f"(report: {generated.report_html})")

    # 4. Audit a submission folder with planted copies.
    submission = out / "submission"
    shutil.rmtree(submission, ignore_errors=True)
    submission.mkdir()
    for folder in ("approved", "quarantine"):
        for path in sorted((job / folder).glob("*.png")):
            shutil.copy2(path, submission / path.name)
            shutil.copy2(path.with_name(path.name + ".manifest.json"), submission / (path.name + ".manifest.json"))
    planted = plant_copies(training_images, submission, copies)
    echo(f"[4/4] auditing a submission: the whole batch plus {len(planted)} edited training images "
         f"slipped in ({submission}), with the publication policy")
    policy = load_policy("publication", audits=plugins.components("audits"),
                         features=plugins.components("feature_extractors"))
    context = AuditContext(policy_path=policy.path, registries=[str(registry)],
                           reference_data=str(training_images), run_dir=str(run), keys_dir=str(keys),
                           ledger=str(ledger))
    outcome = audit_folder(submission, AuditRunner(policy, plugins, context), progress=True)
    from .cli import _versions  # the same engine/plugin version block as `artengine audit`

    engine, versions = _versions(plugins)
    doc = build_report(kind="audit", images=outcome.images, batch=outcome.batch, policy=policy.as_dict(),
                       engine=engine, plugins=versions,
                       inputs={"folder": str(submission), "registries": [str(registry)],
                               "reference_data": str(training_images), "run": str(run)},
                       run=_run(run))
    _, html = write_report(out / "report", doc, outcome.thumbnails)
    blocked = [e["key"] for e in doc["images"] if e["verdict"] in ("block", "error")]
    caught = [name for name in planted if name in blocked]
    # Why the others were blocked, per audit (a generated image close to a training image,
    # say), so that the line does not read as the gate blocking at random.
    reasons = collections.Counter(f["audit"] for e in doc["images"]
                                  if e["verdict"] in ("block", "error") and e["key"] not in planted
                                  for f in e["findings"] if f["outcome"] != "pass")
    why = ", ".join(f"{audit} {count}" for audit, count in sorted(reasons.items()))
    echo(f"      {doc['verdict'].upper()}: {len(caught)} of {len(planted)} planted copies blocked"
         + (f"; {len(blocked) - len(caught)} other image(s) blocked ({why}: see the report)"
            if len(blocked) > len(caught) else ""))
    for reason in outcome.batch.reasons:
        echo(f"      batch {reason}")
    echo(f"report: {html}")
    return DemoResult(out=out, run=run, registry=registry, generated=generated, audit_verdict=doc["verdict"],
                      audit_blocked=blocked, audit_report=html, seconds=time.monotonic() - started)


def demo_train_options(run: Path, seconds: float, *, from_scratch: bool = False) -> Any:
    """The demo's training recipe on shapes, the shape as the label: 300 steps of the cgan
    ``demo`` preset, from the shipped starting point (whose networks it shares) or from
    new networks."""
    from .training import TrainOptions

    start = {} if from_scratch else {"init": DEMO_START}
    return TrainOptions(out=run, arch="cgan", data="shapes", preset="demo", label_attribute="shape",
                        steps=300, max_seconds=seconds, data_length=2000, image_size=32,
                        checkpoint_every=200, sample_every=200, log_every=25, progress=True, **start)


def plant_copies(training_images: Path, folder: Path, count: int) -> list[str]:
    """Lightly edited copies of training images, as a careless submission would hold."""
    from .io import open_image

    sources = sorted(training_images.glob("*.png"))[:: max(1, len(list(training_images.glob('*.png'))) // max(count, 1))]
    planted = []
    edits = ("jpeg", "resize", "crop")
    for i, source in enumerate(sources[:count]):
        image = open_image(source).rgb
        edit = edits[i % len(edits)]
        name = f"copy-{i}-{edit}.png"
        if edit == "jpeg":
            name = f"copy-{i}-{edit}.jpg"
            image.resize((256, 256), Image.Resampling.BICUBIC).save(folder / name, quality=80)
        elif edit == "resize":
            image.resize((200, 200), Image.Resampling.BICUBIC).save(folder / name)
        else:
            w, h = image.size
            image.crop((2, 2, w - 2, h - 2)).resize((256, 256), Image.Resampling.BICUBIC).save(folder / name)
        planted.append(name)
    return planted


def _run(run: Path) -> dict[str, Any] | None:
    try:
        from .runs import run_summary

        return run_summary(run)
    except Exception:  # the report works without the run section
        return None
