"""The bias statistics on known label arrays: the numbers a report shows must be right."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from artengine import AttributeSpec, PolicyError, ReferenceDistribution, classify, compare_distribution, holm, parse_attributes
from artengine.bias import goodness_of_fit, homogeneity

VALUES = ("red", "green", "blue")


def labels_from_counts(counts):
    return np.concatenate([np.full(c, i) for i, c in enumerate(counts)]).astype(np.int64)


def test_distances_and_p_value_match_their_definitions():
    counts = np.array([60, 25, 15])
    result = compare_distribution(labels_from_counts(counts), VALUES, ReferenceDistribution.uniform(VALUES),
                                  rng=np.random.default_rng(0))
    p = counts / counts.sum()
    q = np.full(3, 1 / 3)
    assert result["tvd"] == pytest.approx(0.5 * np.abs(p - q).sum())
    assert result["kl"] == pytest.approx(float((p * np.log(p / q)).sum()))
    assert result["p_value"] == pytest.approx(stats.chisquare(counts, counts.sum() * q).pvalue)
    assert result["test"].startswith("chi-square goodness of fit")
    assert result["amplification"]["value"] == "red"
    assert result["amplification"]["ratio"] == pytest.approx(0.6 * 3)
    shares = {row["value"]: row for row in result["values"]}
    assert shares["red"]["share"] == pytest.approx(0.6)
    assert shares["red"]["reference"] == pytest.approx(1 / 3)


def test_bootstrap_interval_covers_the_share_and_narrows_with_more_images():
    small = compare_distribution(labels_from_counts([12, 5, 3]), VALUES, ReferenceDistribution.uniform(VALUES),
                                 rng=np.random.default_rng(1))
    large = compare_distribution(labels_from_counts([1200, 500, 300]), VALUES, ReferenceDistribution.uniform(VALUES),
                                 rng=np.random.default_rng(1))
    for result in (small, large):
        for row in result["values"]:
            assert row["low"] <= row["share"] <= row["high"]
        assert result["tvd_low"] <= result["tvd"] <= result["tvd_high"] + 1e-12
    width = lambda r: r["values"][0]["high"] - r["values"][0]["low"]  # noqa: E731
    assert width(large) < width(small) / 5
    # The interval has the binomial standard error's size: 1.96 * sqrt(p (1 - p) / n) each side.
    assert width(large) == pytest.approx(2 * 1.96 * np.sqrt(0.6 * 0.4 / 2000), rel=0.15)


def test_small_expected_counts_use_monte_carlo_and_agree_with_exact_multinomial():
    counts = np.array([6, 1, 1])
    q = np.full(3, 1 / 3)
    stat, p, method = goodness_of_fit(counts, q, np.random.default_rng(2))
    assert method == "monte-carlo"
    # Exact p-value: total probability of every outcome at least as extreme.
    exact = 0.0
    for a in range(9):
        for b in range(9 - a):
            c = 8 - a - b
            x = np.array([a, b, c])
            if ((x - 8 / 3) ** 2 / (8 / 3)).sum() >= stat - 1e-9:
                exact += stats.multinomial.pmf(x, 8, q)
    assert p == pytest.approx(exact, abs=0.01)


def test_homogeneity_matches_scipy_contingency_for_large_counts():
    batch, ref = np.array([50, 30, 20]), np.array([400, 350, 250])
    stat, p, method = homogeneity(batch, ref, np.random.default_rng(3))
    expected = stats.chi2_contingency(np.stack([batch, ref]), correction=False)
    assert method == "chi-square"
    assert stat == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)


def test_measured_reference_is_compared_as_a_sample():
    ref = ReferenceDistribution.measured(VALUES, labels_from_counts([300, 300, 400]))
    result = compare_distribution(labels_from_counts([30, 30, 40]), VALUES, ref, rng=np.random.default_rng(4))
    assert "homogeneity" in result["test"]
    assert result["p_value"] > 0.9 and result["tvd"] == pytest.approx(0.0)


def test_unknown_labels_are_counted_apart():
    labels = np.array([0, 0, 1, -1, -1, 2])
    result = compare_distribution(labels, VALUES, ReferenceDistribution.uniform(VALUES), rng=np.random.default_rng(5))
    assert (result["images"], result["known"], result["unknown"]) == (6, 4, 2)
    assert result["unknown_fraction"] == pytest.approx(2 / 6)
    assert sum(row["count"] for row in result["values"]) == 4


def test_reference_value_never_seen_gives_a_finite_but_tiny_p_value():
    ref = ReferenceDistribution.declared(VALUES, {"red": 0.5, "green": 0.5, "blue": 0.0})
    result = compare_distribution(labels_from_counts([40, 40, 20]), VALUES, ref, rng=np.random.default_rng(6))
    assert np.isfinite(result["kl"]) and np.isfinite(result["chi2"])
    assert result["p_value"] <= 1 / 20_001 + 1e-12  # the Monte Carlo floor: no draw was as extreme


def test_holm_adjustment():
    # Worked example: p = (0.01, 0.04, 0.03, 0.005), m = 4.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == []


def test_classify_puts_unsure_images_in_unknown():
    classes = np.eye(3, dtype=np.float32)
    sure = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    torn = np.array([[0.7071, 0.7071, 0.0]], dtype=np.float32)
    labels, probs = classify(np.concatenate([sure, torn]), classes, logit_scale=50.0, threshold=0.6)
    assert labels.tolist() == [0, -1]
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("table, field, problem", [
    ({"colour": {"templates": ["a {} thing"]}}, "audits.bias.attributes.colour.values", "required"),
    ({"colour": {"values": ["red"], "templates": ["a {} thing"]}}, "audits.bias.attributes.colour.values", "at least two"),
    ({"colour": {"values": ["red", "blue"], "templates": ["a thing"]}}, "audits.bias.attributes.colour.templates", "no \"{}\""),
    ({"colour": {"values": ["red", "blue"], "templates": ["{}"], "threshold": 1.5}}, "audits.bias.attributes.colour.threshold", "[0, 1)"),
    ({"colour": {"values": ["red", "blue"], "templates": ["{}"], "prompts": {"pink": ["x"]}}}, "audits.bias.attributes.colour.prompts.pink", "not one of"),
    ({"colour": {"values": ["red", "blue"], "templates": ["{}"], "reference": {"red": -1}}}, "audits.bias.attributes.colour.reference.red", "non-negative"),
    ({"colour": {"values": ["red", "blue"], "templates": ["{}"], "colours": 3}}, "audits.bias.attributes.colour.colours", "unknown field"),
    ({"colour": ["red", "blue"]}, "audits.bias.attributes.colour", "expected a table"),
])
def test_attribute_errors_name_the_file_and_the_field(table, field, problem):
    with pytest.raises(PolicyError) as info:
        parse_attributes(table, source="studio.toml", prefix="audits.bias.attributes")
    message = str(info.value)
    assert message.startswith(f"studio.toml: {field}: ")
    assert problem in message


def test_attribute_prompts_replace_templates_per_value():
    [spec] = parse_attributes({"colour": {"values": ["red", "blue"], "templates": ["a {} thing", "{value}!"],
                                          "prompts": {"blue": ["azure", "navy"]}}},
                              source="p.toml", prefix="audits.bias.attributes")
    assert isinstance(spec, AttributeSpec)
    assert spec.prompts_for("red") == ("a red thing", "red!")
    assert spec.prompts_for("blue") == ("azure", "navy")
