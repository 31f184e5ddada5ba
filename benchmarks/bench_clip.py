"""Bias-audit throughput vs raw batched CLIP image encoding, for the same model.

All four sides run in the same process on the same images, one after the other, rounds
interleaved; the median round of each is reported, and audit / encode as the median of
the rounds' own ratios (with their range). What each side includes:

* ``audit``: what ``artengine audit`` does for a policy with the bias audit (the recommended
  policy of docs/bias.md: two attributes, 2000 bootstrap resamples), from decoded images
  (``LoadedImage``, PIL RGB, as the auditor holds them) to findings: the auditor's
  ``check_images`` per chunk of 32 (the ``clip`` feature extractor in the auditor's worker
  thread: pixels gathered as uint8, resized, normalised, ``encode_image``, L2-normalised,
  stored per image), then ``check_batch`` over the whole batch (zero-shot classification,
  bootstrap intervals, TVD, KL, chi-square, Holm, charts) overall and per class label and
  style (the images carry 4 labels and 2 styles, so 14 comparisons are made);
* ``open clip pipeline``: what a user writes with open_clip alone: open_clip's own preprocess
  transform per PIL image, ``torch.stack``, ``model.encode_image`` in batches of 32, L2
  normalisation; no statistics;
* ``encode only`` (the baseline of the target): ``model.encode_image`` in batches of 32 on
  input tensors prepared before the clock starts (open_clip's preprocess of the first 32
  images, reused for every batch; the cost of a forward pass does not depend on the pixel
  values); no preprocessing, no normalisation, no statistics. The physical limit of
  open_clip as it comes;
* ``encode channels-last``: the same, with the model and inputs in channels-last layout, as
  artengine runs them on CPU (faster convolutions, same embeddings): what the audit costs
  beyond its own encoder.

Text prompt embeddings are computed in the warm-up round and cached, as in a run. Every side
runs in a worker thread (torch's threading differs between the main thread and others).

Models: the shipped tiny CLIP (64 px input), and ViT-B-32 randomly initialised (224 px; no
weights can be downloaded here; random weights cost the same to run), loaded through
artengine from a temporary .safetensors file. Target: audit >= 0.8 x encode only.
Real photographs (benchmarks/photos.py) cut to 256 px patches are the images.

Usage: ``python benchmarks/bench_clip.py [--tiny-images N] [--vit-images N] [--rounds N]``.
"""
from __future__ import annotations

import copy
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from photos import photo_patches  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BATCH = 32


def recommended_table() -> str:
    import re

    text = (ROOT / "docs" / "bias.md").read_text()
    return re.search(r"<!-- recommended-policy -->\s*```toml\n(.+?)```", text, re.S).group(1)


def audit_runner(folder: Path, clip_model: str | None, clip_pretrained: str | None):
    from artengine import AuditContext, get_plugins
    from artengine.auditor import AuditRunner
    from artengine.policy import load_policy

    policy_path = folder / "bias.toml"
    policy_path.write_text('[policy]\nname = "bench"\nversion = 1\n\n' + recommended_table()
                           + f"\n[features.clip]\nbatch_size = {BATCH}\n")
    plugins = get_plugins()
    policy = load_policy(policy_path, audits=plugins.components("audits"),
                         features=plugins.components("feature_extractors"))
    context = AuditContext(policy_path=str(policy_path), clip_model=clip_model, clip_pretrained=clip_pretrained)
    return AuditRunner(policy, plugins, context)


def measure(label: str, runner, images, bare_model, bare_preprocess, rounds: int = 5) -> dict:
    from artengine import AuditItem, LoadedImage

    labels, styles = ("circle", "square", "triangle", "star"), ("flat", "textured")
    items = [AuditItem(key=f"{i}", image=LoadedImage(path=f"{i}", rgb=im, alpha=None, format="PNG", mode="RGB",
                                                     text={}),
                       meta={"label": labels[i % 4], "style": styles[i // 4 % 2]}) for i, im in enumerate(images)]
    ready = torch.stack([bare_preprocess(im) for im in images[:BATCH]])

    def audit() -> None:
        fresh = [AuditItem(key=it.key, image=it.image, meta=dict(it.meta)) for it in items]
        for start in range(0, len(fresh), BATCH):  # the auditor's chunks
            runner.check_images(fresh[start:start + BATCH])
        kept = [AuditItem(key=it.key, image=None, meta=it.meta, features=it.features) for it in fresh]
        findings = runner.check_batch(kept, [])
        assert findings and all(f.outcome in ("pass", "fail", "unknown") for f in findings), findings

    @torch.inference_mode()
    def pipeline() -> None:
        for start in range(0, len(images), BATCH):
            x = torch.stack([bare_preprocess(im) for im in images[start:start + BATCH]])
            torch.nn.functional.normalize(bare_model.encode_image(x), dim=-1)

    def encode_only_with(model, inputs):
        @torch.inference_mode()
        def encode() -> None:
            for start in range(0, len(images), BATCH):
                model.encode_image(inputs[: min(BATCH, len(images) - start)])
        return encode

    encode_only = encode_only_with(bare_model, ready)
    # The audit runs the same weights in channels-last layout (faster convolutions on CPU):
    # the same encode in that layout shows what the audit costs beyond its own encoder.
    encode_channels_last = encode_only_with(copy.deepcopy(bare_model).to(memory_format=torch.channels_last),
                                            ready.contiguous(memory_format=torch.channels_last))

    def in_thread(fn):
        # The auditor runs features and audits in long-lived worker threads. Torch's
        # intra-op threading behaves very differently in the main thread and in other
        # threads on a busy machine (measured here: the same encode 6 vs 290 img/s), so the
        # baselines run in a worker thread too: like for like.
        def run() -> None:
            worker = threading.Thread(target=fn)
            worker.start()
            worker.join()
        return run

    pipeline, encode_only, encode_cl = in_thread(pipeline), in_thread(encode_only), in_thread(encode_channels_last)
    times = {"audit": [], "pipeline": [], "encode": [], "encode_cl": []}
    audit(), pipeline(), encode_only(), encode_cl()  # warm up (text prompts get cached here, as in a run)
    for _ in range(rounds):
        for name, fn in (("audit", audit), ("pipeline", pipeline), ("encode", encode_only),
                         ("encode_cl", encode_cl)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rate = {k: len(images) / float(np.median(v)) for k, v in times.items()}
    # The ratio of each round (audit and encode timed back to back), then the median and
    # the range over rounds: a ratio of medians taken from different rounds mixes the
    # load of one moment with that of another.
    per_round = sorted(e / a for a, e in zip(times["audit"], times["encode"]))
    per_round_cl = sorted(e / a for a, e in zip(times["audit"], times["encode_cl"]))
    return {"model": label, "images": len(images), "audit_img_s": rate["audit"],
            "open_clip_pipeline_img_s": rate["pipeline"], "encode_only_img_s": rate["encode"],
            "audit/pipeline": rate["audit"] / rate["pipeline"], "audit/encode": float(np.median(per_round)),
            "audit/encode per round": f"{per_round[0]:.2f}-{per_round[-1]:.2f}", "target": ">= 0.8",
            "encode_channels_last_img_s": rate["encode_cl"],
            "audit/encode channels-last": float(np.median(per_round_cl)),
            "per round": f"{per_round_cl[0]:.2f}-{per_round_cl[-1]:.2f}"}


def main() -> None:
    import argparse

    import open_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-images", type=int, default=512)
    parser.add_argument("--vit-images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from safetensors.torch import save_file

    from artengine import load_clip

    torch.manual_seed(0)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # The shipped tiny CLIP, on 64 px-class images and on 256 px ones.
        tiny = load_clip()
        tiny_bare, _, tiny_pre = open_clip.create_model_and_transforms(f"local-dir:{tiny.weights_path.rsplit('/', 1)[0]}")
        tiny_bare.eval()
        patches = [im for _, im in photo_patches(256, args.tiny_images, seed=1)]
        rows.append(measure("tiny CLIP, 256 px photos", audit_runner(folder, None, None), patches,
                            tiny_bare, tiny_pre, rounds=args.rounds))
        # ViT-B-32, random weights saved as safetensors and loaded the way a user would.
        vit, _, vit_pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        vit.eval()
        weights = folder / "vit_b_32_random.safetensors"
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
        patches = [im for _, im in photo_patches(256, args.vit_images, seed=2)]
        rows.append(measure("ViT-B-32 (random init), 256 px photos", audit_runner(folder, "ViT-B-32", str(weights)),
                            patches, vit, vit_pre, rounds=args.rounds))
    print(f"torch threads: {torch.get_num_threads()}; load average before / after: {load_before} / "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_table("bias audit vs raw CLIP image encoding (same model, same images)", rows)


if __name__ == "__main__":
    main()
