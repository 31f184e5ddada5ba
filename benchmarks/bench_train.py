"""Training step and generator inference: artengine vs a bare PyTorch loop, same model.

Training: the engine's ``Trainer.train_step`` (data sampler, conditioning dispatch, EMA
update, metrics) against a plain DCGAN loop written here (one D step on real and detached
fake, one G step, Adam, non-saturating loss), on the same DCGAN 64x64 networks (ngf = ndf =
64, built by the dcgan plugin), the same batch of 64 and the same data. DiffAugment is off
in the main row because the bare loop has none; a later row shows its cost. The engine runs
its networks in channels-last layout on CPU (``artengine.architecture.cpu_layout``); the
bare loop as written runs PyTorch's default layout, and a second row runs it in
channels-last too, which shows the engine's own overhead apart from the layout.
Target: engine / bare <= 1.05.

Inference: ``GeneratorModel.generate`` (per-index latents, fixed chunks of 32 on a fixed
thread count, uint8 output) against ``G(z)`` in batches of 64 plus the same uint8
conversion. Target: engine throughput / bare >= 0.95. The bare loop runs at the engine's
thread count (the like-for-like row) and at the process default.

Usage: python benchmarks/bench_train.py [--threads N] [--quick]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, side_by_side  # noqa: E402

from artengine.models import GENERATION_THREADS, GeneratorModel, fixed_threads, to_uint8  # noqa: E402
from artengine.training import TrainOptions, Trainer  # noqa: E402


def bare_loop(G: torch.nn.Module, D: torch.nn.Module, pixels: torch.Tensor, batch: int, z_dim: int,
              channels_last: bool = False):
    """The loop a researcher would write by hand (optionally in channels-last layout, as
    the engine runs its networks on CPU)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    G, D = G.to(memory_format=layout), D.to(memory_format=layout)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def step() -> None:
        idx = torch.randint(0, len(pixels), (batch,))
        real = (pixels[idx].float() / 127.5 - 1.0).contiguous(memory_format=layout)
        fake = G(torch.randn(batch, z_dim))
        loss_d = F.softplus(-D(real)).mean() + F.softplus(D(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-D(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, help="torch threads for training and the bare loops")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = 3 if args.quick else 7
    rows = []
    tmp = Path(tempfile.mkdtemp())
    try:
        trainers = {}
        for augment in ("", "translation,cutout"):
            options = TrainOptions(out=tmp / f"run{len(trainers)}", arch="dcgan", data="shapes", steps=10**9,
                                   image_size=64, batch_size=64, data_length=512, progress=False,
                                   settings={"ngf": 64, "ndf": 64, "augment": augment})
            trainers[augment] = Trainer(options)
        engine = trainers[""]
        G, D = engine.arch.build_generator(engine.config), engine.arch.build_discriminator(engine.config)
        bare = bare_loop(G.train(), D.train(), engine.data.pixels, 64, int(engine.config["z_dim"]))
        e, b = side_by_side(engine.train_step, bare, repeat=repeat, number=2)
        rows.append({"stage": "DCGAN 64x64 train step, batch 64", "engine_s": e, "bare_s": b, "ratio": e / b,
                     "target": "<= 1.05"})
        G_cl, D_cl = engine.arch.build_generator(engine.config), engine.arch.build_discriminator(engine.config)
        bare_cl = bare_loop(G_cl.train(), D_cl.train(), engine.data.pixels, 64, int(engine.config["z_dim"]),
                            channels_last=True)
        e, b = side_by_side(engine.train_step, bare_cl, repeat=repeat, number=2)
        rows.append({"stage": "  same, bare loop in channels-last layout (the engine's on CPU)", "engine_s": e,
                     "bare_s": b, "ratio": e / b, "target": "(context)"})
        e, b = side_by_side(trainers["translation,cutout"].train_step, bare, repeat=repeat, number=2)
        rows.append({"stage": "  same, engine with DiffAugment (translation,cutout)", "engine_s": e, "bare_s": b,
                     "ratio": e / b, "target": "(context)"})

        model = GeneratorModel(engine.G_ema, engine.run_config, weights_sha256="")
        count = 256
        z_dim = model.info.z_dim
        g_bare = engine.G_ema

        def engine_generate() -> None:
            model.generate(model.latents(0, range(count)))

        def bare_generate() -> None:
            with torch.no_grad():
                for start in range(0, count, 64):
                    to_uint8(g_bare(torch.randn(64, z_dim)))

        def bare_generate_same_threads() -> None:
            with fixed_threads(GENERATION_THREADS):
                bare_generate()

        e, b = side_by_side(engine_generate, bare_generate_same_threads, repeat=repeat, number=1)
        rows.append({"stage": f"DCGAN 64x64 inference, {count} images ({GENERATION_THREADS} thread(s) both)",
                     "engine_s": e, "bare_s": b, "ratio": b / e, "target": ">= 0.95 (throughput)"})
        e, b = side_by_side(engine_generate, bare_generate, repeat=repeat, number=1)
        rows.append({"stage": f"  bare at the process default ({torch.get_num_threads()} threads)",
                     "engine_s": e, "bare_s": b, "ratio": b / e, "target": "(context)"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; generation pinned to "
          f"{GENERATION_THREADS}")
    print_table("artengine training and generation vs bare PyTorch", rows)


if __name__ == "__main__":
    main()
