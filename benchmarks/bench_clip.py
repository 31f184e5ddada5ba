"""Bias-audit throughput vs raw batched CLIP image encoding, for the same model.

The audit path is what ``artengine audit`` runs for a policy with the bias audit: the
``clip`` feature extractor (preprocess + encode in batches) on every image, then the bias
audit's batch check (zero-shot classification, bootstrap, tests) over the batch. The bare
baselines, written here with open_clip alone:

* ``open_clip pipeline``: open_clip's own preprocess transform per image, ``torch.stack``,
  ``model.encode_image`` in batches of 32 and normalisation: what a user writes;
* ``encode only``: ``model.encode_image`` on ready input tensors, the physical limit.

Models: the shipped tiny CLIP, and ViT-B-32 randomly initialised (no weights can be
downloaded here; random weights cost the same to run), loaded through artengine from a
temporary .safetensors file. Target: audit >= 0.8 x raw encode.
Real photographs (benchmarks/photos.py) cut to 256 px patches are the images.
"""
from __future__ import annotations

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


def measure(label: str, runner, images, bare_model, bare_preprocess, rounds: int = 3) -> dict:
    from artengine import AuditItem, LoadedImage

    items = [AuditItem(key=f"{i}", image=LoadedImage(path=f"{i}", rgb=im, alpha=None, format="PNG", mode="RGB",
                                                     text={})) for i, im in enumerate(images)]
    ready = torch.stack([bare_preprocess(im) for im in images[:BATCH]])

    def audit() -> None:
        fresh = [AuditItem(key=it.key, image=it.image) for it in items]
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

    @torch.inference_mode()
    def encode_only() -> None:
        for start in range(0, len(images), BATCH):
            bare_model.encode_image(ready[: min(BATCH, len(images) - start)])

    def in_thread(fn):
        # The auditor runs features and audits in worker threads (call_with_timeout). Torch's
        # intra-op threading behaves very differently in the main thread and in other
        # threads on a busy machine (measured here: the same encode 6 vs 290 img/s), so the
        # baselines run in a worker thread too: like for like.
        def run() -> None:
            worker = threading.Thread(target=fn)
            worker.start()
            worker.join()
        return run

    pipeline, encode_only = in_thread(pipeline), in_thread(encode_only)
    times = {"audit": [], "pipeline": [], "encode": []}
    audit(), pipeline(), encode_only()  # warm up (text prompts get cached here, as in a run)
    for _ in range(rounds):
        for name, fn in (("audit", audit), ("pipeline", pipeline), ("encode", encode_only)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rate = {k: len(images) / float(np.median(v)) for k, v in times.items()}
    return {"model": label, "images": len(images), "audit_img_s": rate["audit"],
            "open_clip_pipeline_img_s": rate["pipeline"], "encode_only_img_s": rate["encode"],
            "audit/pipeline": rate["audit"] / rate["pipeline"], "audit/encode": rate["audit"] / rate["encode"],
            "target": ">= 0.8"}


def main() -> None:
    import open_clip
    from safetensors.torch import save_file

    from artengine import load_clip

    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # The shipped tiny CLIP, on 64 px-class images and on 256 px ones.
        tiny = load_clip()
        tiny_bare, _, tiny_pre = open_clip.create_model_and_transforms(f"local-dir:{tiny.weights_path.rsplit('/', 1)[0]}")
        tiny_bare.eval()
        patches = [im for _, im in photo_patches(256, 512, seed=1)]
        rows.append(measure("tiny CLIP, 256 px photos", audit_runner(folder, None, None), patches,
                            tiny_bare, tiny_pre))
        # ViT-B-32, random weights saved as safetensors and loaded the way a user would.
        vit, _, vit_pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        vit.eval()
        weights = folder / "vit_b_32_random.safetensors"
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
        patches = [im for _, im in photo_patches(256, 96, seed=2)]
        rows.append(measure("ViT-B-32 (random init), 256 px photos", audit_runner(folder, "ViT-B-32", str(weights)),
                            patches, vit, vit_pre))
    print(f"torch threads: {torch.get_num_threads()}")
    print_table("bias audit vs raw CLIP image encoding (same model, same images)", rows)


if __name__ == "__main__":
    main()
