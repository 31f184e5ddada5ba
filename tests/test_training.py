"""The trainer: run layout, exact kill-and-resume (row 25), checkpoints, multi-process."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from artengine.checkpoints import list_checkpoints, load_latest_checkpoint, load_weights
from artengine.cli import cli
from artengine.errors import InputError
from artengine.runs import read_metrics, run_summary
from artengine.training import TrainOptions, train

#: Tiny networks: seconds per run on 2 CPU cores.
TINY = {
    "dcgan": {"ngf": 8, "ndf": 8},
    "cgan": {"g_ch": 8, "d_ch": 8},
    "stylegan": {"g_ch_base": 256, "g_ch_max": 32, "d_ch_base": 256, "d_ch_max": 32, "e_ch_base": 128,
                 "e_ch_max": 16, "w_dim": 32, "style_dim": 16, "mapping_layers": 2, "r1_every": 2},
}


def tiny_options(out: Path, arch: str, steps: int, **extra) -> TrainOptions:
    settings = {**TINY[arch], "augment": "color,translation,cutout"}
    return TrainOptions(out=out, arch=arch, data="shapes", steps=steps, batch_size=8, data_length=48,
                        settings=settings, checkpoint_every=3, sample_every=3, log_every=1, progress=False, **extra)


def resume_options(out: Path, steps: int, **extra) -> TrainOptions:
    return TrainOptions(out=out, steps=steps, resume=True, checkpoint_every=3, sample_every=3, log_every=1,
                        progress=False, **extra)


def assert_same_state(run_a: Path, run_b: Path) -> None:
    _, a, rec_a = load_latest_checkpoint(run_a)
    _, b, rec_b = load_latest_checkpoint(run_b)
    assert rec_a["step"] == rec_b["step"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    assert rec_a["optimizers"] == rec_b["optimizers"]
    assert rec_a["rng"] == rec_b["rng"]


@pytest.mark.parametrize("arch,extra", [("dcgan", {}), ("cgan", {"aux_weight": 0.5, "mbstd_group": 4}),
                                        pytest.param("cgan", {}, marks=pytest.mark.slow),
                                        pytest.param("stylegan", {}, marks=pytest.mark.slow),
                                        pytest.param("stylegan", {"aux_weight": 0.5, "mbstd_group": 4},
                                                     marks=pytest.mark.slow)])
def test_stop_and_resume_equals_uninterrupted_training(tmp_path, arch, extra):
    whole, split = tiny_options(tmp_path / "whole", arch, 6), tiny_options(tmp_path / "split", arch, 3)
    whole.settings.update(extra)
    split.settings.update(extra)
    train(whole)
    train(split)
    result = train(resume_options(tmp_path / "split", 6))
    assert result.step == 6
    assert_same_state(tmp_path / "whole", tmp_path / "split")


def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    train(tiny_options(tmp_path / "run", "stylegan", 3))
    path, tensors, record = load_latest_checkpoint(tmp_path / "run")
    prefixes = {k.split(".")[0] for k in tensors}
    assert prefixes == {"G", "G_ema", "D", "opt_G", "opt_D", "rng"}
    assert {"rng.torch", "rng.numpy"} <= tensors.keys()
    assert record["step"] == 3 and record["images_seen"] == 24
    assert record["augment"] == {"policy": "color,translation,cutout", "p": 1.0}
    assert set(record["rng"]) == {"python", "numpy"}
    assert record["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(2e-3)
    assert record["run"]["architecture"] == "stylegan"
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # safetensors, not a torch.save zip


def test_run_directory_layout(tmp_path):
    out = tmp_path / "run"
    options = tiny_options(out, "cgan", 7)
    options.keep_checkpoints = 2
    train(options)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "cgan" and config["conditioning"] == "label"
    assert config["image_size"] == 32 and config["z_dim"] == 128
    assert config["class_names"] == ["circle", "square", "triangle", "star"]
    assert config["data"] == {"spec": "shapes", "dataset": "shapes", "seed": 0, "length": 48,
                              "label_attribute": "shape"}
    assert config["engine"]["torch"] == torch.__version__
    data = json.loads((out / "training_data.json").read_text())
    assert sum(data["class_counts"].values()) == 48
    assert set(data["attribute_counts"]) == {"shape", "colour", "background"}
    assert [s for s, _ in list_checkpoints(out)] == [6, 7]  # every 3 steps and the end, last 2 kept
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 8))
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step-000000003.png", "step-000000006.png", "step-000000007.png"]
    assert Image.open(out / "samples" / "step-000000007.png").size == (8 * 32 + 18, 8 * 32 + 18)
    svg = (out / "loss_curve.svg").read_text()
    assert svg.startswith("<svg") and "loss_d" in svg and "polyline" in svg
    summary = run_summary(out)
    assert summary["step"] == 7 and set(summary["curves"]) == {"loss_d", "loss_g"}


def test_folder_run_records_every_training_file(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("ink", "wash"):
        (data / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(data / cls / f"{i}.png")
    (data / "ink" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    train(TrainOptions(out=out, arch="stylegan", data=str(data), steps=1, batch_size=4, settings=TINY["stylegan"],
                       progress=False))
    record = json.loads((out / "training_data.json").read_text())
    assert record["dataset"] == "imagefolder" and record["classes"] == ["ink", "wash"]
    files = {f["path"]: f for f in record["files"]}
    assert len(files) == 12 and files["ink/0.png"]["label"] == "ink"
    from artengine import sha256_file
    assert files["wash/5.png"]["sha256"] == sha256_file(data / "wash" / "5.png")
    assert [s["path"] for s in record["skipped"]] == [str(data / "ink" / "broken.png")]
    assert json.loads((out / "config.json").read_text())["style_names"] == ["ink", "wash"]


def test_existing_run_needs_resume_and_keeps_its_options(tmp_path):
    out = tmp_path / "run"
    train(tiny_options(out, "dcgan", 1))
    with pytest.raises(InputError, match="--resume"):
        train(tiny_options(out, "dcgan", 2))
    with pytest.raises(InputError, match="--batch-size 8, not 16"):
        train(TrainOptions(out=out, steps=2, resume=True, batch_size=16, progress=False))
    with pytest.raises(InputError, match="settings cannot change"):
        train(TrainOptions(out=out, steps=2, resume=True, settings={"lr_g": 0.1}, progress=False))


def test_one_run_trains_in_a_run_folder_at_a_time(tmp_path):
    """A second training run started beside a first (a CI retry, a second terminal) is
    refused in one line instead of writing checkpoints beside it: while the first holds
    the folder, and when the first began the run or wrote a newer checkpoint while the
    second was loading."""
    from artengine.training import Trainer

    out = tmp_path / "run"
    first, second = Trainer(tiny_options(out, "dcgan", steps=3)), Trainer(tiny_options(out, "dcgan", steps=3))
    first.run()  # both looked at an empty folder; the first began the run meanwhile
    with pytest.raises(InputError, match="a training run was started in this folder while this one was loading"):
        second.run()

    early, late = Trainer(resume_options(out, steps=6)), Trainer(resume_options(out, steps=9))
    early.run()  # both resumed from step 3; the first wrote step 6's checkpoint
    with pytest.raises(InputError, match="another run wrote the checkpoint of step 6 while this one was resuming "
                                         "from step 3; run the command again"):
        late.run()

    holder = subprocess.Popen(  # another process at work in the folder
        [sys.executable, "-c", "import sys; from pathlib import Path; from artengine.journal import JobLock; "
         "JobLock(Path(sys.argv[1])).acquire(); print('held', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(cli, ["train", "--out", str(out), "--resume", "--steps", "9"])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"{out}: another run is working in this run folder (host " in result.output
        assert f"process {holder.pid})" in result.output
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert train(resume_options(out, steps=9)).step == 9  # once it has ended, the folder is free again
    assert [step for step, _ in list_checkpoints(out)][-1] == 9


def test_bad_options_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown setting"):
        train(TrainOptions(out=tmp_path / "a", arch="dcgan", data="shapes", settings={"ngff": 3}, progress=False))
    with pytest.raises(InputError, match="no classes"):
        folder = tmp_path / "flat"
        folder.mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")
        train(TrainOptions(out=tmp_path / "b", arch="cgan", data=str(folder), progress=False))
    with pytest.raises(InputError, match="mbstd_group: must be 0"):
        train(TrainOptions(out=tmp_path / "m", arch="cgan", data="shapes", settings={"mbstd_group": -3},
                           data_length=8, progress=False))
    with pytest.raises(InputError, match="has no such preset"):
        train(TrainOptions(out=tmp_path / "c", arch="dcgan", data="shapes", preset="nope", progress=False))
    with pytest.raises(InputError, match="^--seed -1: must be a whole number from 0 to"):
        train(TrainOptions(out=tmp_path / "s", arch="dcgan", data="shapes", seed=-1, progress=False))
    assert not (tmp_path / "s").exists()
    for settings, message in (({"lr_g": -1}, "setting lr_g = -1.0: must be above 0"),
                              ({"batch_size": 0}, "setting batch_size = 0: must be at least 1"),
                              ({"style_ref_prob": 1.5}, "setting style_ref_prob = 1.5: must be at least 0 and at most 1"),
                              ({"betas": [0.5, 1.0]}, "setting betas = [0.5, 1.0]: must be two numbers")):
        with pytest.raises(InputError, match=re.escape(message)):
            train(TrainOptions(out=tmp_path / "r", arch="dcgan", data="shapes", settings=settings, progress=False))
        assert not (tmp_path / "r").exists()


def trained_discriminator(run: Path) -> torch.nn.Module:
    """The discriminator of a run's newest checkpoint, rebuilt from the run's config."""
    from artengine.checkpoints import unpack_module
    from artengine.plugins import get_plugins
    from artengine.training import build_networks

    path, tensors, record = load_latest_checkpoint(run)
    _, D = build_networks(get_plugins().component("architectures", record["run"]["architecture"]),
                          record["run"]["config"])
    unpack_module("D", D, tensors, path)
    return D.eval()


def test_auxiliary_classifier_loss_teaches_the_discriminator_the_labels(tmp_path):
    """With aux_weight > 0 the discriminator gets a class head trained on the real labels:
    after a short run it tells the training images' labels apart (and its losses are logged)."""
    from artengine.plugins import get_plugins
    from artengine.training import load_training_data

    options = tiny_options(tmp_path / "aux", "cgan", 100, label_attribute="colour")
    options.settings.update({"aux_weight": 1.0, "lr_d": 2e-3, "augment": ""})
    train(options)
    assert {"aux_d", "aux_g", "aux_acc_real"} <= read_metrics(tmp_path / "aux")[-1].keys()
    D = trained_discriminator(tmp_path / "aux")
    data = load_training_data("shapes", image_size=32, seed=0, plugins=get_plugins(), length=48,
                              label_attribute="colour", progress=False)
    with torch.no_grad():
        _, scores = D.forward_with_classes(data.pixels.float() / 127.5 - 1, data.labels)
    accuracy = float((scores.argmax(1) == data.labels).float().mean())
    # Six colours: chance is 1/6. After 100 steps seeds 0-3 gave 0.58-0.98 (60 steps gave
    # 0.48-0.75, float rounding alone moving a run across 0.6).
    assert accuracy >= 0.45, accuracy

    train(tiny_options(tmp_path / "plain", "cgan", 1))
    _, tensors, _ = load_latest_checkpoint(tmp_path / "plain")
    assert not any(k.startswith("D.classes.") for k in tensors)  # aux_weight 0: no head, old layout
    assert "aux_d" not in read_metrics(tmp_path / "plain")[-1]


def test_cgan_quality_preset_trains_with_the_auxiliary_classifier(tmp_path):
    out = tmp_path / "quality"
    result = train(TrainOptions(out=out, arch="cgan", data="shapes", preset="quality", data_length=32, steps=2,
                                progress=False))
    assert result.step == 2 and {"aux_d", "aux_g"} <= result.metrics.keys()
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["aux_weight"] == 1.0 and config["augment"] == "translation" and config["lr_d"] == 2e-3


def test_stylegan_quality_preset_trains_half_width_with_the_auxiliary_classifier(tmp_path):
    out = tmp_path / "style-quality"
    result = train(TrainOptions(out=out, arch="stylegan", data="shapes", preset="quality", image_size=32,
                                data_length=32, steps=2, progress=False))
    assert result.step == 2 and {"aux_d", "aux_g"} <= result.metrics.keys()
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["aux_weight"] == 1.0 and config["augment"] == "translation"
    # The discriminator at 3x the generator's rate: the measured recipe (docs/training.md).
    assert (config["g_ch_max"], config["d_ch_max"], config["lr_g"], config["lr_d"]) == (64, 64, 2e-3, 6e-3)


def test_resume_keeps_the_runs_own_checkpoint_schedule(tmp_path):
    """A run started with its own schedule keeps it on --resume: no checkpoint is pruned
    down to the default three, none is skipped for the default 1000-step interval."""
    out = tmp_path / "run"
    train(TrainOptions(out=out, arch="dcgan", data="shapes", steps=4, batch_size=8, data_length=48,
                       settings=TINY["dcgan"], checkpoint_every=2, keep_checkpoints=5, sample_every=2, log_every=1,
                       progress=False))
    train(TrainOptions(out=out, steps=10, resume=True, progress=False))
    assert [step for step, _ in list_checkpoints(out)] == [2, 4, 6, 8, 10]
    stored = json.loads((out / "config.json").read_text())["schedule"]
    assert stored == {"sample_every": 2, "checkpoint_every": 2, "keep_checkpoints": 5, "log_every": 1}
    # A schedule given on resume wins, and is stored for the next resume.
    train(TrainOptions(out=out, steps=12, resume=True, keep_checkpoints=2, progress=False))
    assert [step for step, _ in list_checkpoints(out)] == [10, 12]
    assert json.loads((out / "config.json").read_text())["schedule"]["keep_checkpoints"] == 2
    with pytest.raises(InputError, match="--keep-checkpoints 0"):
        train(TrainOptions(out=out, steps=14, resume=True, keep_checkpoints=0, progress=False))
    assert [step for step, _ in list_checkpoints(out)] == [10, 12]


def test_run_made_before_aux_weight_existed_resumes(tmp_path):
    out = tmp_path / "old"
    train(tiny_options(out, "cgan", 3))
    config = json.loads((out / "config.json").read_text())
    del config["config"]["aux_weight"]
    (out / "config.json").write_text(json.dumps(config))
    assert train(resume_options(out, 4)).step == 4


def _class_head_rows(run: Path) -> int:
    _, tensors, _ = load_latest_checkpoint(run)
    weight = tensors.get("D.classes.weight", tensors.get("D.classes.parametrizations.weight.original"))
    return int(weight.shape[0])


def test_joint_labels_get_a_class_head_per_part_and_older_runs_keep_their_flat_head(tmp_path):
    """shape+colour (4 x 6 = 24 labels): the cgan's class head scores the 4 shapes and the 6
    colours (10 outputs) and its class scores are log-probabilities of the 24 joint labels;
    aux_per_part=false keeps one output per joint label, as runs trained before the per-part
    head have, and such a run (its config has neither key) resumes with its own head."""
    joint = {"label_attribute": "shape+colour"}
    per_part, flat = tmp_path / "per-part", tmp_path / "flat"
    options = tiny_options(per_part, "cgan", 2, **joint)
    options.settings["aux_weight"] = 1.0
    train(options)
    config = json.loads((per_part / "config.json").read_text())["config"]
    assert config["num_classes"] == 24 and config["label_factors"] == [4, 6] and config["aux_per_part"] is True
    assert _class_head_rows(per_part) == 10
    with torch.no_grad():
        _, scores = trained_discriminator(per_part).forward_with_classes(torch.zeros(3, 3, 32, 32),
                                                                         torch.tensor([0, 5, 23]))
    assert scores.shape == (3, 24)
    assert torch.allclose(scores.logsumexp(1), torch.zeros(3), atol=1e-5)  # a distribution over joint labels

    options = tiny_options(flat, "cgan", 2, **joint)
    options.settings.update({"aux_weight": 1.0, "aux_per_part": False})
    train(options)
    assert _class_head_rows(flat) == 24
    stored = json.loads((flat / "config.json").read_text())
    del stored["config"]["aux_per_part"], stored["config"]["label_factors"]
    (flat / "config.json").write_text(json.dumps(stored))
    assert train(resume_options(flat, 4)).step == 4 and _class_head_rows(flat) == 24


def test_minibatch_std_appends_the_spread_of_each_group():
    from artengine import minibatch_std

    x = torch.randn(8, 3, 4, 4)
    x[4:] = x[4]  # the second group of four: identical images
    y = minibatch_std(x, 4)
    assert y.shape == (8, 4, 4, 4) and torch.equal(y[:, :3], x)
    spread = x[:4].std(dim=0, unbiased=False).mean()
    torch.testing.assert_close(y[:4, 3], spread.expand(4, 4, 4))
    assert float(y[4:, 3].max()) < 1e-3  # no variety: the map says so
    six = minibatch_std(x[:6], 4)[:, 3, 0, 0]  # 4 does not divide 6: two groups of 3
    torch.testing.assert_close(six[:3], x[:3].std(dim=0, unbiased=False).mean().expand(3))
    assert six.unique().numel() == 2


@pytest.mark.parametrize("arch", ["cgan", "stylegan"])
def test_mbstd_group_makes_the_discriminator_see_its_group(arch):
    """With mbstd_group 4 an image's logit depends on the other images of its group (and on
    no other image); with 0 it depends on the image alone, and the parameter layout is that
    of runs made before the option existed."""
    from artengine.plugins import get_plugins
    from artengine.training import resolve_settings

    architecture = get_plugins().component("architectures", arch)
    config = {**resolve_settings(architecture, None, TINY[arch]), "arch": arch, "image_size": 32, "num_classes": 4}
    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 32, 32) * 2 - 1, torch.arange(8) % 4
    changed = images.clone()
    changed[1] = -changed[1]
    older = {k: v for k, v in config.items() if k != "mbstd_group"}
    assert architecture.build_discriminator(older).state_dict().keys() == \
        architecture.build_discriminator(config).state_dict().keys()
    for group in (0, 4):
        torch.manual_seed(1)
        D = architecture.build_discriminator({**config, "mbstd_group": group}).eval()
        with torch.no_grad():
            before, after = D(images, labels), D(changed, labels)
        assert torch.equal(before[4:], after[4:])  # the other group: untouched
        assert torch.equal(before[0], after[0]) == (group == 0), group


def test_aux_weight_needs_a_conditional_model(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--arch", "dcgan", "--data", "shapes", "--data-length", "16",
                                      "--steps", "1", "--set", "aux_weight=1", "--out", str(tmp_path / "u")])
    assert result.exit_code == 2 and "aux_weight" in result.output and "unconditional" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- processes

KILLER = """
    import os, signal
    from artengine import hookimpl

    ARTENGINE_HOOK_API = "1.0"

    @hookimpl
    def artengine_checkpoint_saved(run_dir, step, path, metrics):
        with open(os.path.join(run_dir, "hook.log"), "a") as fh:
            fh.write(f"{step} {os.path.basename(path)}\\n")
        if step == int(os.environ.get("KILL_AT_STEP", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)
"""


def _train_cli(out: Path, steps: int, env: dict, *, resume: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "artengine", "train", "--out", str(out), "--steps", str(steps),
            "--checkpoint-every", "3", "--sample-every", "100", "--log-every", "1"]
    if resume:
        args.append("--resume")
    else:
        args += ["--arch", "dcgan", "--data", "shapes", "--batch-size", "8", "--data-length", "48",
                 "--set", "ngf=8", "--set", "ndf=8"]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_then_truncated_checkpoint_then_resume_equals_uninterrupted(tmp_path, plugin_dists):
    """Row 25: kill training at step 6 (right after its checkpoint), truncate that newest
    checkpoint, resume: the run falls back to step 3 and ends bitwise equal to a run never
    interrupted. The checkpoint hook fired for every checkpoint."""
    plugin_dists.make("killer-plugin", "killer_plugin", KILLER)
    env = plugin_dists.env()
    whole = _train_cli(tmp_path / "whole", 9, env)
    assert whole.returncode == 0, whole.stderr
    killed = _train_cli(tmp_path / "split", 9, {**env, "KILL_AT_STEP": "6"})
    assert killed.returncode == -signal.SIGKILL
    newest = tmp_path / "split" / "checkpoints" / "step-000000006.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumed = _train_cli(tmp_path / "split", 9, env, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping damaged checkpoint" in resumed.stderr and "step-000000006" in resumed.stderr
    assert_same_state(tmp_path / "whole", tmp_path / "split")
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == list(range(1, 10))
    hooks = (tmp_path / "split" / "hook.log").read_text().split()
    assert hooks[::2] == ["3", "6", "6", "9"]


def test_sigterm_stops_at_a_step_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "artengine", "train", "--arch", "dcgan", "--data", "shapes", "--out", str(out),
         "--steps", "100000", "--batch-size", "8", "--data-length", "48", "--set", "ngf=8", "--set", "ndf=8",
         "--checkpoint-every", "100000", "--log-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or not read_metrics(out):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    (step, path), = list_checkpoints(out)
    assert step >= 1 and load_weights(path)[1]["step"] == step


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, {"mbstd_group": 2}])
def test_two_processes_train_like_one(tmp_path, extra):
    """torchrun with 2 CPU processes (gloo) on the global batch gives the parameters of one
    process on the whole batch, up to float summation order (with minibatch standard
    deviation too: its groups of consecutive images fall inside each process's rows)."""
    common = ["--arch", "stylegan", "--data", "shapes", "--steps", "4", "--batch-size", "8", "--data-length", "48",
              "--checkpoint-every", "100", "--sample-every", "100", "--augment", "color,translation,cutout"]
    for key, value in {**TINY["stylegan"], **extra}.items():
        common += ["--set", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "artengine", "train", "--out", str(tmp_path / "one"), *common],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "artengine", "train", "--out", str(tmp_path / "two"), *common],
        env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr
    _, one, rec_one = load_latest_checkpoint(tmp_path / "one")
    _, two, rec_two = load_latest_checkpoint(tmp_path / "two")
    assert rec_one["step"] == rec_two["step"] == 4
    for key in one:
        if key.startswith(("G.", "G_ema.", "D.")):
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert torch.equal(one["rng.torch"], two["rng.torch"])  # same draws in both set-ups


def test_cli_train_then_resume_further(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--arch", "dcgan", "--data", "shapes", "--out", str(out), "--steps", "2", "--batch-size", "8",
            "--data-length", "32", "--set", "ngf=8", "--set", "ndf=8", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["step"] == 2
    result = CliRunner().invoke(cli, ["train", "--out", str(out), "--steps", "4", "--resume", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["step"] == 4
    result = CliRunner().invoke(cli, ["train", "--out", str(out), "--steps", "4", "--arch", "cgan", "--resume"])
    assert result.exit_code == 2 and "--arch dcgan" in result.output


def _limit_address_space() -> None:
    """A guard for a child process (``preexec_fn``): its address space capped at 16 GiB, so
    that were a memory check gone, what it refuses would be tried and refused by the
    allocator instead of filling the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, resource.RLIM_INFINITY))


def test_a_batch_that_cannot_fit_is_refused_before_anything_is_written(tmp_path):
    """An absurd --batch-size would have the kernel kill the process part-way: it is one
    line naming the option, what the step needs and what fits, exit 2, no run folder."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "artengine", "train", "--arch", "dcgan", "--data", "shapes", "--out", str(out),
         "--steps", "1", "--batch-size", "100000000", "--data-length", "16"],
        capture_output=True, text=True, timeout=300, preexec_fn=_limit_address_space)
    assert result.returncode == 2, result.stderr
    line, = result.stderr.strip().splitlines()
    assert re.search(r"--batch-size 100000000: one training step needs about [\d.]+ GB of memory, "
                     r"[\d.]+ GB is available; free memory or lower --batch-size \(about \d+ fits\)", line), line
    assert not out.exists()


def test_running_out_of_memory_mid_run_keeps_the_checkpoints_and_resumes(tmp_path):
    """Memory taken away during a run (its address space capped at what it holds, so the
    next step's large tensors cannot be mapped): one line naming the batch size and the
    checkpoint kept, exit 2, and --resume continues from that checkpoint."""
    import resource

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "artengine", "train", "--arch", "dcgan", "--data", "shapes", "--out", str(out),
         "--steps", "1000", "--batch-size", "4096", "--data-length", "64", "--set", "ngf=8", "--set", "ndf=8",
         "--checkpoint-every", "2", "--sample-every", "1000", "--log-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list_checkpoints(out):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    held = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                if line.startswith("VmSize:"))
    resource.prlimit(proc.pid, resource.RLIMIT_AS, (held, resource.RLIM_INFINITY))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    line, = stderr.strip().splitlines()
    step, path = list_checkpoints(out)[-1]
    assert "--batch-size 4096: out of memory after step " in line and f"checkpoint {path} is kept" in line, line
    assert load_weights(path)[1]["step"] == step
    result = CliRunner().invoke(cli, ["train", "--out", str(out), "--steps", str(step + 1), "--resume", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(out)] == list(range(1, step + 2))


@pytest.mark.parametrize("from_scratch", [False, True])
def test_the_demo_training_call_runs_as_artengine_demo_makes_it(tmp_path, from_scratch):
    """``artengine demo`` fine-tunes the shipped starting point with the cgan ``demo``
    preset (or trains new networks with it); the call runs and the run records how."""
    import dataclasses

    from artengine.demo import DEMO_START, demo_train_options

    out = tmp_path / "demo"
    options = demo_train_options(out, 90, from_scratch=from_scratch)
    result = train(dataclasses.replace(options, steps=2, data_length=32, progress=False))
    assert result.step == 2 and result.checkpoint is not None
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "demo" and config["image_size"] == 32 and config["data"]["label_attribute"] == "shape"
    assert config["config"]["batch_size"] == 32 and config["config"]["g_ch"] == 16
    assert config.get("init", {}).get("source") == (None if from_scratch else DEMO_START)


def test_demo_refuses_a_folder_whose_run_was_trained_otherwise(tmp_path):
    """Re-running the demo continues its run; a run made another way (an older demo's colour
    labels, or --from-scratch) is one clear line, and the folder is left as it was."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.txt").write_text("artengine demo folder\n")
    train(tiny_options(out / "run", "cgan", 1, label_attribute="colour"))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: --out {out}: holds a demo run trained from scratch with colour labels, not as asked now; "
        "choose another --out folder")
    assert {p.relative_to(out) for p in out.rglob("*")} >= set(before)


# --------------------------------------------------------------------------- starting points (--init)


def _colour_run(out: Path, steps: int = 3) -> Path:
    options = tiny_options(out, "cgan", steps, label_attribute="colour")
    options.settings["aux_weight"] = 0.5
    train(options)
    return out


def test_new_run_from_a_starting_point_begins_with_its_networks(tmp_path):
    base = _colour_run(tmp_path / "base")
    result = train(TrainOptions(out=tmp_path / "tuned", init=str(base), steps=0, progress=False))
    assert result.step == 0
    _, base_tensors, _ = load_latest_checkpoint(base)
    path, tensors, record = load_latest_checkpoint(tmp_path / "tuned")
    assert path.name == "step-000000000.safetensors" and record["images_seen"] == 0
    networks = [k for k in base_tensors if k.split(".")[0] in ("G", "G_ema", "D")]
    assert networks and all(torch.equal(base_tensors[k], tensors[k]) for k in networks)
    assert not any(k.startswith(("opt_G.", "opt_D.")) for k in tensors)  # optimizers start afresh
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    from artengine import sha256_file
    assert config["init"]["source"] == str(base) and config["init"]["step"] == 3
    assert config["init"]["data"] == json.loads((base / "config.json").read_text())["data"]  # its lineage
    assert config["init"]["sha256"] == sha256_file(base / "checkpoints" / "step-000000003.safetensors")
    # Architecture, settings and data come from the starting point.
    assert config["architecture"] == "cgan" and config["config"]["g_ch"] == 8
    assert config["config"]["aux_weight"] == 0.5 and config["config"]["batch_size"] == 8
    assert config["data"]["label_attribute"] == "colour" and config["data"]["length"] == 48
    assert config["class_names"] == json.loads((base / "config.json").read_text())["class_names"]


def test_run_from_a_starting_point_resumes_from_it_before_its_first_checkpoint(tmp_path):
    """Killed before its first scheduled checkpoint, a run from --init must resume from the
    starting point (its step-0 checkpoint), not from random networks."""
    base = _colour_run(tmp_path / "base")
    train(TrainOptions(out=tmp_path / "whole", init=str(base), steps=4, checkpoint_every=10, progress=False))
    train(TrainOptions(out=tmp_path / "split", init=str(base), steps=0, checkpoint_every=10, progress=False))
    train(TrainOptions(out=tmp_path / "split", resume=True, init=str(base), steps=4, progress=False))
    assert_same_state(tmp_path / "whole", tmp_path / "split")
    with pytest.raises(InputError, match="was started from --init"):
        train(TrainOptions(out=tmp_path / "split", resume=True, init="shapes-cgan32", steps=5, progress=False))


def test_exported_starting_point_trains_and_generates(tmp_path):
    base = _colour_run(tmp_path / "base")
    start = tmp_path / "start.safetensors"
    result = CliRunner().invoke(cli, ["export", str(base), str(start), "--for-training"])
    assert result.exit_code == 0, result.output
    tensors, record = load_weights(start)
    assert {k.split(".")[0] for k in tensors} == {"G", "G_ema", "D"} and record["step"] == 3
    from artengine.models import load_model
    assert load_model(start).info.class_names == load_model(base).info.class_names
    assert train(TrainOptions(out=tmp_path / "tuned", init=str(start), steps=1, progress=False)).step == 1
    # A generator-only export cannot be a starting point.
    generator_only = tmp_path / "g.safetensors"
    assert CliRunner().invoke(cli, ["export", str(base), str(generator_only)]).exit_code == 0
    result = CliRunner().invoke(cli, ["train", "--init", str(generator_only), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--for-training" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args,expected", [
    (["--init", "no-such-start"], "shipped: shapes-cgan32"),
    (["--arch", "dcgan"], "is a cgan model, not dcgan"),
    (["--image-size", "64"], "makes 32 px images, not 64"),
    (["--set", "g_ch=16"], "G tensor"),
    (["--set", "aux_weight=0"], "D tensor classes."),
    (["--data", "shapes", "--label-attribute", "shape", "--data-length", "48"],
     "the data has circle, square, triangle, star"),
])
def test_starting_point_that_does_not_fit_is_one_clear_line(tmp_path, args, expected):
    base = _colour_run(tmp_path / "base")
    given = args if args[0] == "--init" else ["--init", str(base), *args]
    out = tmp_path / "tuned"
    result = CliRunner().invoke(cli, ["train", "--out", str(out), "--steps", "1", *given])
    assert result.exit_code == 2, result.output
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything was written


def test_shipped_starting_point_fits_the_cgan_and_the_shape_labels():
    from artengine.plugins import get_plugins
    from artengine.starting import load_starting_point, shipped_starting_points
    from artengine.training import build_networks, load_training_data

    assert "shapes-cgan32" in shipped_starting_points()
    start = load_starting_point("shapes-cgan32")  # verifies every tensor's digest
    config = start.run_config
    assert config["architecture"] == "cgan" and config["image_size"] == 32
    data = load_training_data("shapes", image_size=32, seed=0, plugins=get_plugins(), length=16,
                              label_attribute="shape", progress=False)
    assert config["labels"] == data.classes == ["circle", "square", "triangle", "star"]
    G, D = build_networks(get_plugins().component("architectures", "cgan"), config["config"])
    for prefix, module in (("G", G), ("D", D)):
        state = {k[len(prefix) + 1:]: v for k, v in start.tensors.items() if k.startswith(prefix + ".")}
        module.load_state_dict(state, strict=True)
