"""Quality metrics: Fréchet distance, KID, label accuracy, and `artengine evaluate`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from artengine.cli import cli
from artengine.evaluation import frechet_distance, kernel_inception_distance
from artengine.training import TrainOptions, train

from test_training import TINY


def test_frechet_distance_matches_the_scipy_reference():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s_a @ s_b).real
    expected = np.square(mu_a - mu_b).sum() + np.trace(s_a + s_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_a_shift_is_its_squared_length():
    a = np.random.default_rng(1).normal(size=(500, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 3.0) == pytest.approx(8 * 9.0, rel=1e-9)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same, same_std = kernel_inception_distance(a, b, subsets=20, subset_size=300)
    shifted, _ = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 20 * abs(same)


def test_evaluate_writes_results_into_the_run(tmp_path):
    out = tmp_path / "run"
    train(TrainOptions(out=out, arch="stylegan", data="shapes", steps=2, batch_size=8, data_length=120,
                       settings=TINY["stylegan"], progress=False))
    # A judge trained 3 steps on 108 images cannot tell the shapes apart: its verdict on
    # generated images is withheld, with the reason, not reported.
    args = ["evaluate", str(out), "--features", "classifier", "--count", "40", "--classifier-steps", "3"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc == json.loads((out / "evaluation.json").read_text())
    assert doc["count"] == 40 and doc["step"] == 2 and doc["features"].startswith("classifier")
    assert doc["fd"] > doc["fd_floor"] > 0 and doc["fd_ratio"] == pytest.approx(doc["fd"] / doc["fd_floor"])
    assert {"kid", "kid_std", "kid_floor"} <= doc.keys()
    judge = doc["classifier"]
    assert judge["steps"] == 3 and judge["held_out"] == 12 and judge["required_accuracy"] == 0.95
    assert judge["held_out_accuracy"] < 0.95 and (out / "label_classifier.safetensors").is_file()
    assert doc["label_accuracy"] is None and doc["reference_label_accuracy"] is None
    assert "label_accuracy_per_label" not in doc
    assert f"{judge['held_out_accuracy']:.1%}" in doc["label_accuracy_unavailable"]
    assert "below the 95%" in doc["label_accuracy_unavailable"]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0 and "floor" in text.output
    assert "label accuracy: unavailable (the label classifier reaches" in text.output


@pytest.mark.slow
def test_the_label_judge_tells_real_shapes_apart_and_then_reports_label_accuracy(tmp_path):
    out = tmp_path / "run"
    train(TrainOptions(out=out, arch="cgan", data="shapes", steps=1, batch_size=8, data_length=2000,
                       settings=TINY["cgan"], progress=False))
    result = CliRunner().invoke(cli, ["evaluate", str(out), "--features", "classifier", "--count", "40", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    judge = doc["classifier"]
    assert judge["steps"] == 600 and judge["held_out"] == 200 and judge["trained_on"] == 1800
    assert judge["held_out_accuracy"] >= 0.95
    assert "label_accuracy_unavailable" not in doc and 0 <= doc["label_accuracy"] <= 1
    assert set(doc["label_accuracy_per_label"]) == {"circle", "square", "triangle", "star"}


@pytest.mark.slow
def test_the_demo_training_ends_with_the_shapes_it_is_asked_for(tmp_path):
    """``artengine demo`` trains 300 steps of the cgan demo preset from the shipped starting
    point; the evaluation's judge must then name the asked shape for >= 95 % of samples."""
    import dataclasses

    from artengine.demo import demo_train_options

    out = tmp_path / "run"
    result = train(dataclasses.replace(demo_train_options(out, 900), progress=False))  # 300 steps, however slow
    assert result.step == 300
    evaluated = CliRunner().invoke(cli, ["evaluate", str(out), "--features", "classifier", "--count", "400",
                                         "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    doc = json.loads(evaluated.output)
    assert doc["classifier"]["held_out_accuracy"] >= 0.95
    assert doc["label_accuracy"] >= 0.95, doc["label_accuracy_per_label"]


def test_evaluate_unknown_features_is_one_line(tmp_path):
    out = tmp_path / "run"
    train(TrainOptions(out=out, arch="dcgan", data="shapes", steps=1, batch_size=8, data_length=40,
                       settings=TINY["dcgan"], progress=False))
    result = CliRunner().invoke(cli, ["evaluate", str(out), "--features", "inception", "--count", "10"])
    assert result.exit_code == 2 and "inception" in result.output and "Traceback" not in result.output


def test_evaluate_judges_a_kept_checkpoint_without_touching_the_newest_ones_results(tmp_path):
    out = tmp_path / "run"
    train(TrainOptions(out=out, arch="dcgan", data="shapes", steps=4, batch_size=8, data_length=40,
                       settings=TINY["dcgan"], progress=False, checkpoint_every=2))
    args = ["evaluate", str(out), "--features", "classifier", "--count", "10", "--classifier-steps", "2", "--json"]
    older = CliRunner().invoke(cli, [*args, "--checkpoint", "2"])
    assert older.exit_code == 0, older.output
    doc = json.loads(older.output)
    assert doc["step"] == 2 and doc["checkpoint"] == 2
    assert json.loads((out / "evaluation-step-000000002.json").read_text()) == doc
    assert not (out / "evaluation.json").exists()
    newest = json.loads(CliRunner().invoke(cli, args).output)
    assert newest["step"] == 4 and "checkpoint" not in newest
    assert newest["weights_sha256"] != doc["weights_sha256"]
    missing = CliRunner().invoke(cli, [*args, "--checkpoint", "3"])
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert missing.output.strip().splitlines() == [
        f"Error: {out}: --checkpoint 3: no checkpoint of that step (kept: 2, 4)"]


def test_best_checkpoint_takes_the_lowest_fd_among_those_reaching_the_label_target():
    from artengine.evaluation import best_checkpoint, best_rule

    rows = [{"step": 500, "label_accuracy": 0.90, "fd_ratio": 1.5},
            {"step": 1000, "label_accuracy": 0.99, "fd_ratio": 80.0},
            {"step": 1500, "label_accuracy": 0.96, "fd_ratio": 6.0},
            {"step": 2000, "label_accuracy": None, "fd_ratio": 1.0}]
    best = best_checkpoint(rows)
    assert best["step"] == 1500 and best_rule(best) == "lowest FD ratio with label accuracy >= 95%"
    short = [{"step": 500, "label_accuracy": 0.90, "fd_ratio": 4.0},
             {"step": 1000, "label_accuracy": 0.93, "fd_ratio": 80.0},
             {"step": 1500, "label_accuracy": 0.93, "fd_ratio": 60.0}]
    best = best_checkpoint(short)
    assert best["step"] == 1500
    assert best_rule(best) == "highest label accuracy, then lowest FD ratio (no checkpoint reached 95%)"
    # Joint labels the judge cannot tell in full: the weakest part it can judge counts.
    joint = [{"step": 8000, "label_accuracy": None, "fd_ratio": 1.5,
              "label_accuracy_per_part": {"shape": 0.87, "colour": 1.0, "background": None}},
             {"step": 9000, "label_accuracy": None, "fd_ratio": 2.1,
              "label_accuracy_per_part": {"shape": 0.97, "colour": 1.0, "background": None}},
             {"step": 10000, "label_accuracy": None, "fd_ratio": 1.8,
              "label_accuracy_per_part": {"shape": 0.98, "colour": 0.99, "background": None}}]
    best = best_checkpoint(joint)
    assert best["step"] == 10000
    assert best_rule(best) == "lowest FD ratio with every judged part of the label (shape, colour) >= 95%"
    unlabelled = [{"step": 500, "fd_ratio": 9.0}, {"step": 1000, "fd_ratio": 7.5}, {"step": 1500, "fd_ratio": 8.0}]
    assert best_checkpoint(unlabelled)["step"] == 1000 and best_rule(best_checkpoint(unlabelled)) == "lowest FD ratio"
    assert best_checkpoint([]) is None


def test_evaluate_all_checkpoints_judges_each_kept_one_once_and_names_the_best(tmp_path):
    out = tmp_path / "run"
    train(TrainOptions(out=out, arch="dcgan", data="shapes", steps=6, batch_size=8, data_length=40,
                       settings=TINY["dcgan"], progress=False, checkpoint_every=2))
    args = ["evaluate", str(out), "--features", "classifier", "--count", "10", "--classifier-steps", "2",
            "--all-checkpoints"]
    first = CliRunner().invoke(cli, [*args, "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert summary == json.loads((out / "evaluation-checkpoints.json").read_text())
    assert [row["step"] for row in summary["checkpoints"]] == [2, 4, 6]
    stored = {step: json.loads((out / f"evaluation-step-{step:09d}.json").read_text()) for step in (2, 4, 6)}
    for row in summary["checkpoints"]:
        assert row["fd_ratio"] == stored[row["step"]]["fd_ratio"]
        assert row["weights_sha256"] == stored[row["step"]]["weights_sha256"]
    best = min(summary["checkpoints"], key=lambda row: row["fd_ratio"])
    assert summary["rule"] == "lowest FD ratio" and summary["best"]["step"] == best["step"]
    assert summary["best"]["checkpoint"].endswith(f"step-{best['step']:09d}.safetensors")
    assert not (out / "evaluation.json").exists()  # the newest checkpoint's own results are left alone

    # A second call reuses what is stored, and measures again what was measured another way.
    stamps = {step: (out / f"evaluation-step-{step:09d}.json").read_text() for step in (2, 4, 6)}
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("(stored)") == 3 and f"best (lowest FD ratio): step {best['step']}" in again.output
    assert {step: (out / f"evaluation-step-{step:09d}.json").read_text() for step in (2, 4, 6)} == stamps
    other = CliRunner().invoke(cli, [*args[:5], "12", *args[6:]])
    assert other.exit_code == 0 and "(stored)" not in other.output

    both = CliRunner().invoke(cli, [*args, "--checkpoint", "2"])
    assert both.exit_code == 2 and both.output.strip().splitlines() == [
        "Error: --all-checkpoints and --checkpoint: give one of them"]
    # An option found wrong while the real side is prepared: its one line, no header above it.
    missing = tmp_path / "missing.safetensors"
    bad_clip = CliRunner().invoke(cli, [*args[:3], "clip", "--clip-model", str(missing), *args[4:]])
    assert bad_clip.exit_code == 2 and bad_clip.output.strip().splitlines() == [
        f"Error: {missing}: no such CLIP checkpoint file"]


def test_evaluate_all_checkpoints_falls_back_to_fd_when_the_judge_cannot_tell_labels(tmp_path):
    out = tmp_path / "run"
    train(TrainOptions(out=out, arch="cgan", data="shapes", steps=4, batch_size=8, data_length=40,
                       settings=TINY["cgan"], progress=False, checkpoint_every=2))
    result = CliRunner().invoke(cli, ["evaluate", str(out), "--features", "classifier", "--count", "10",
                                      "--classifier-steps", "2", "--all-checkpoints"])
    assert result.exit_code == 0, result.output
    assert result.output.count("label accuracy unavailable (judge below 95% on real images)") == 2
    summary = json.loads((out / "evaluation-checkpoints.json").read_text())
    assert summary["rule"] == "lowest FD ratio"
    assert summary["best"]["step"] == min(summary["checkpoints"], key=lambda row: row["fd_ratio"])["step"]


def test_checkpoint_lines_list_few_labels_in_full_and_many_by_the_lowest():
    from artengine.cli import _per_label_text

    four = {"circle": 1.0, "square": 0.98, "triangle": 0.62, "star": 1.0}
    assert _per_label_text(four) == " (circle 100% / square 98% / triangle 62% / star 100%)"
    joint = {f"{s}/{c}": 1.0 for s in ("circle", "square", "triangle", "star")
             for c in ("red", "green", "blue", "yellow", "purple", "orange")}
    joint.update({"triangle/red": 0.62, "triangle/orange": 0.85, "square/purple": 0.93})
    assert _per_label_text(joint) == " (lowest: triangle/red 62% / triangle/orange 85% / square/purple 93%)"
    assert _per_label_text({}) == ""


def test_joint_labels_are_judged_per_part_and_a_stored_judge_names_the_same_parts(tmp_path):
    # shape+colour: the judge tells colours apart on real images at once, shapes not yet (few
    # steps), so colour is judged and shape withheld; the second evaluation loads the stored
    # judge (its record comes back with sorted keys) and must pair each part with its own figure.
    from artengine.evaluation import EvaluationOptions, evaluate_run

    run = tmp_path / "joint"
    train(TrainOptions(out=run, arch="cgan", data="shapes", steps=1, batch_size=8, data_length=240,
                       label_attribute="shape+colour", settings={"g_ch": 8, "d_ch": 8}, progress=False))
    options = EvaluationOptions(run=run, count=100, classifier_steps=150, features="classifier")
    first = evaluate_run(options)
    judge = first["classifier"]["held_out_accuracy_per_part"]
    assert list(judge) == ["shape", "colour"] and judge["colour"] >= 0.95 > judge["shape"]
    assert first["label_accuracy"] is None  # the joint judge is below 95 %
    assert list(first["label_accuracy_per_part"]) == ["shape", "colour"]
    assert first["label_accuracy_per_part"]["shape"] is None
    assert 0.0 <= first["label_accuracy_per_part"]["colour"] <= 1.0
    again = evaluate_run(options)
    assert again["label_accuracy_per_part"] == first["label_accuracy_per_part"]
