"""Multiple comparisons, the interquartile mean and the power lines of the report (issue 23, item 7),
checked against hand computations, Cohen's power tables and a seeded simulation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from raysel import report
from raysel.report.build import comparison_notes
from raysel.report.stats import holm, interquartile_mean, seeds_for_power, t_test_power
from raysel.spec import load_spec


def test_holm_is_the_step_down_rule_and_skips_missing_p_values():
    # sorted 0.01, 0.03, 0.04 of a family of 3: 3·0.01, max(that, 2·0.03), max(that, 1·0.04)
    assert holm(np.array([0.01, 0.04, np.nan, 0.03])) == pytest.approx([0.03, 0.06, np.nan, 0.06], nan_ok=True)
    assert holm(np.array([0.2, 0.6])) == pytest.approx([0.4, 0.6])
    assert holm(np.array([0.5, 0.9, 0.7])).max() == 1.0  # capped at 1
    assert holm(np.array([])).size == 0


@pytest.mark.parametrize(("effect", "paired", "seeds"), [
    (0.2, False, 394), (0.5, False, 64), (0.8, False, 26),  # Cohen (1988), two-sided 5%, 80% power
    (0.5, True, 34), (0.8, True, 15)])
def test_power_line_matches_cohens_tables(effect, paired, seeds):
    assert seeds_for_power(effect, paired=paired) == seeds
    assert seeds_for_power(-effect, paired=paired) == seeds  # the sign of the effect does not matter
    assert t_test_power(effect, seeds, paired=paired) >= 0.8 > t_test_power(effect, seeds - 1, paired=paired)


def test_power_line_edge_cases():
    assert seeds_for_power(0.0, paired=False) == math.inf
    assert seeds_for_power(1e-4, paired=False) == math.inf  # beyond any sweep
    assert math.isnan(seeds_for_power(math.nan, paired=True))
    assert seeds_for_power(math.inf, paired=True) == 2  # identical non-zero differences on every seed


def test_power_is_the_rejection_rate_of_simulated_experiments():
    rng = np.random.default_rng(0)
    n, d, experiments = 26, 0.8, 4000
    a = rng.normal(d, 1.0, size=(experiments, n))
    b = rng.normal(0.0, 1.0, size=(experiments, n))
    rejected = scipy_stats.ttest_ind(a, b, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(t_test_power(d, n, paired=False), abs=0.02)


def three_arm_frame() -> tuple[pd.DataFrame, object]:
    rows = []
    offsets = {"standard": 0.0, "small": -0.1, "large": -2.0}
    noise = [0.3, -0.5, 0.1, 0.9, -0.2, 0.4]
    for arm, offset in offsets.items():
        for seed, e in enumerate(noise):
            value = 10.0 + offset + e * (1.5 if arm == "large" else 1.0) + 0.05 * seed * (arm == "small")
            rows.append({"trial_id": f"{arm}-{seed}", "arm": arm, "seed": seed, "stage": "seeds",
                         "status": "FINISHED", "step": 1, "loss": value})
    spec = load_spec({"name": "three", "protocol": {"kind": "seeds", "seeds": list(range(6)), "metric": "loss",
                                                    "mode": "min"},
                      "arms": [{"name": a, "method": "standard"} for a in offsets]})
    return pd.DataFrame(rows), spec.protocol


def test_comparisons_carry_holm_adjusted_p_values_and_power_lines():
    frame, protocol = three_arm_frame()
    table = report.compare(frame, protocol, baseline="standard").set_index("arm")
    for test in ("welch", "paired", "mannwhitney"):
        assert table[f"{test}_p_holm"].to_numpy() == pytest.approx(holm(table[f"{test}_p"].to_numpy()))
        assert (table[f"{test}_p_holm"] >= table[f"{test}_p"]).all()
    small = table.loc["small"]
    assert small["seeds_for_power"] == seeds_for_power(small["cohen_d"], paired=False) > 6
    x = frame.set_index(["arm", "seed"])["loss"]
    differences = (x["small"] - x["standard"]).to_numpy()
    dz = differences.mean() / differences.std(ddof=1)
    assert small["paired_seeds_for_power"] == seeds_for_power(dz, paired=True)
    assert table.loc["large", "seeds_for_power"] <= 6  # a large effect: these 6 seeds are enough

    notes = comparison_notes(report.compare(frame, protocol, baseline="standard"))
    assert "Holm-adjusted over the 2 comparison(s)" in notes[0]
    assert any(n.startswith("power line, large vs standard") and n.endswith("enough") for n in notes)
    assert any(n.startswith("power line, small vs standard") and "would go undetected" in n for n in notes)


def test_summary_has_the_interquartile_mean_with_its_bootstrap_ci():
    frame, protocol = three_arm_frame()
    summary = report.summarize(frame, protocol).set_index("arm")
    for arm in ("standard", "small", "large"):
        x = frame.loc[frame["arm"] == arm, "loss"].to_numpy()
        row = summary.loc[arm]
        assert row["iqm"] == pytest.approx(scipy_stats.trim_mean(x, 0.25))
        assert row["iqm"] == pytest.approx(interquartile_mean(x))
        assert row["iqm_ci95_low"] <= row["iqm"] <= row["iqm_ci95_high"]
        assert row["iqm_ci95_low"] >= x.min() and row["iqm_ci95_high"] <= x.max()
