"""Reports on synthetic sweeps with known answers, logged into a real MLflow store (no Ray needed).

The synthetic sweep has arms ``standard`` and ``igf`` on seeds 0..5 with test perplexity logged at
steps 0, 10, 20 (value = base − slope·step + seed noise), one trial stopped early and one failed,
and is logged exactly as trials log themselves (raysel.tracking), with its spec as the parent run's
``sweep.json`` artifact. Every number the report prints is checked against numpy/scipy directly.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from raysel import report
from raysel.cli import main
from raysel.report.figures import DPI, FIGSIZE
from raysel.spec import load_spec
from raysel.tracking import TrackingInfo, TrialLogger, ensure_experiment, log_artifacts, start_parent_run

SEEDS = list(range(6))
STEPS = [0, 10, 20]
NOISE = [0.3, -0.5, 0.1, 0.9, -0.2, 0.4]


def perplexity(arm: str, seed: int, step: int) -> float:
    slope = 1.0 if arm == "standard" else 1.4
    return 120.0 - slope * step + NOISE[seed] * (1 + (arm == "igf"))


def seeds_spec(**report_section) -> dict:
    return {"name": "synthetic", "protocol": {"kind": "seeds", "seeds": SEEDS, "metric": "test_perplexity",
                                              "mode": "min"},
            "arms": [{"name": "standard", "method": "standard"}, {"name": "igf", "method": "standard"}],
            "report": report_section}


def log_sweep(tmp_path, spec_dict: dict, trials: list[dict]) -> tuple[str, str]:
    """Log a sweep the way raysel does: parent run + sweep.json, one child run per trial."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_spec(spec_dict)
    experiment = ensure_experiment(uri, spec.name)
    parent = start_parent_run(uri, experiment, spec.name, {"raysel.protocol": spec.protocol.kind}, {})
    state = tmp_path / "sweep.json"
    state.write_text(json.dumps({"name": spec.name, "parent_run_id": parent, "tracking_uri": uri,
                                 "spec": spec.model_dump(mode="json")}))
    log_artifacts(uri, parent, [state])
    info = TrackingInfo(uri=uri, experiment_id=experiment, parent_run_id=parent, sweep=spec.name)
    for i, trial in enumerate(trials):
        tags = {"raysel.arm": trial["arm"], "raysel.method": "standard", "raysel.stage": trial.get("stage", "seeds"),
                "raysel.seed": str(trial["seed"]), "raysel.protocol": spec.protocol.kind}
        logger = TrialLogger(info, f"t{i:03d}", f"{trial['arm']}-{trial['seed']}", tags,
                             {"seed": trial["seed"], "params": trial.get("params", {"lr": 1e-4})})
        for step, metrics in trial["history"]:
            logger.log_metrics(step, metrics)
        logger.finish(trial.get("status", "FINISHED"))
    return uri, parent


def cost(arm: str, seed: int) -> dict[str, float]:
    """What a trial's loop and clock report at its end (raysel.cost): IGF trains on less and takes longer."""
    return {"train_flops_est": (2e12 if arm == "igf" else 6e12) + 1e9 * seed, "wall_s": (90.0 if arm == "igf" else 30.0) + seed}


def seeds_trials(early_stop_seed: int | None = None, failed_seed: int | None = None) -> list[dict]:
    trials = []
    for arm in ("standard", "igf"):
        for seed in SEEDS:
            steps = STEPS[:2] if (arm == "igf" and seed == early_stop_seed) else STEPS
            history = [(s, {"test_perplexity": perplexity(arm, seed, s), "train_loss": 1.0 / (s + 1),
                            **(cost(arm, seed) if s == steps[-1] else {})}) for s in steps]
            status = "FAILED" if (arm == "standard" and seed == failed_seed) else "FINISHED"
            trials.append({"arm": arm, "seed": seed, "history": history, "status": status})
    return trials


@pytest.fixture
def seeds_sweep(tmp_path):
    return log_sweep(tmp_path, seeds_spec(), seeds_trials())


def test_load_gives_one_row_per_trial_and_step_with_params_tags_and_metrics(seeds_sweep):
    uri, parent = seeds_sweep
    frame = report.load(parent, tracking_uri=uri)
    assert len(frame) == 2 * len(SEEDS) * len(STEPS)
    assert {"trial_id", "run_id", "arm", "seed", "stage", "status", "params.lr", "tags.raysel.arm", "step",
            "test_perplexity", "train_loss"} <= set(frame.columns)
    row = frame[(frame["arm"] == "igf") & (frame["seed"] == 3) & (frame["step"] == 10)].iloc[0]
    assert row["test_perplexity"] == pytest.approx(perplexity("igf", 3, 10))
    assert row["params.lr"] == 1e-4 and isinstance(row["seed"], (int, np.integer))
    # the experiment name finds the same sweep (its newest parent run)
    by_name = report.load("synthetic", tracking_uri=uri)
    pd.testing.assert_frame_equal(by_name, frame)


def test_summary_at_the_last_and_a_chosen_step_matches_numpy(seeds_sweep):
    uri, parent = seeds_sweep
    frame = report.load(parent, tracking_uri=uri)
    protocol = load_spec(seeds_spec()).protocol
    for step in (None, 10):
        at = 20 if step is None else step
        summary = report.summarize(frame, protocol, step=step).set_index("arm")
        for arm in ("standard", "igf"):
            x = np.array([perplexity(arm, s, at) for s in SEEDS])
            row = summary.loc[arm]
            assert row["n"] == len(SEEDS)
            assert row["mean"] == pytest.approx(x.mean()) and row["median"] == pytest.approx(np.median(x))
            assert row["std"] == pytest.approx(x.std(ddof=1))
            assert row["se"] == pytest.approx(x.std(ddof=1) / math.sqrt(len(x)))
            assert row["min"] == pytest.approx(x.min()) and row["max"] == pytest.approx(x.max())
            assert row["ci95_low"] < x.mean() < row["ci95_high"]


def test_welch_paired_and_mann_whitney_match_scipy(seeds_sweep):
    uri, parent = seeds_sweep
    frame = report.load(parent, tracking_uri=uri)
    protocol = load_spec(seeds_spec()).protocol
    (row,) = report.compare(frame, protocol, baseline="standard").to_dict("records")
    igf = np.array([perplexity("igf", s, 20) for s in SEEDS])
    std = np.array([perplexity("standard", s, 20) for s in SEEDS])
    assert row["arm"] == "igf" and row["vs"] == "standard" and row["step"] == "last"
    assert row["diff"] == pytest.approx(igf.mean() - std.mean())
    welch = scipy_stats.ttest_ind(igf, std, equal_var=False)
    assert row["welch_t"] == pytest.approx(welch.statistic) and row["welch_p"] == pytest.approx(welch.pvalue)
    paired = scipy_stats.ttest_rel(igf, std)
    assert row["paired_n"] == 6 and row["paired_p"] == pytest.approx(paired.pvalue)
    assert row["mannwhitney_p"] == pytest.approx(scipy_stats.mannwhitneyu(igf, std).pvalue)
    pooled = math.sqrt((igf.var(ddof=1) + std.var(ddof=1)) / 2)
    assert row["cohen_d"] == pytest.approx((igf.mean() - std.mean()) / pooled)
    assert row["diff_ci95_low"] < row["diff"] < row["diff_ci95_high"] < 0  # igf is lower on every seed
    assert row["note"] == ""  # 6 vs 6 is enough for every test here


def test_small_samples_get_a_note_instead_of_silent_p_values():
    a, b = pd.Series([1.0, 2.0, 3.0]), pd.Series([2.0, 3.0, 4.0])
    row = report.compare_samples(a, b)
    assert "only 3 vs 3 runs" in row["note"] and "Mann-Whitney cannot reach p < 0.05" in row["note"]
    alone = report.compare_samples(pd.Series([1.0]), b)
    assert "too few for any test" in alone["note"] and math.isnan(alone["welch_p"])


def test_steps_table_and_early_stopped_trials(tmp_path):
    uri, parent = log_sweep(tmp_path, seeds_spec(), seeds_trials(early_stop_seed=2))
    frame = report.load(parent, tracking_uri=uri)
    protocol = load_spec(seeds_spec()).protocol
    steps = report.step_table(frame, protocol).set_index(["arm", "step"])
    assert steps.loc[("igf", 10), "n"] == 6 and steps.loc[("igf", 20), "n"] == 5
    expected = np.mean([perplexity("igf", s, 20) for s in SEEDS if s != 2])
    assert steps.loc[("igf", 20), "mean"] == pytest.approx(expected)
    # at step 20 the early-stopped trial has no value; at its own last report (step 10) it counts
    at_20 = report.summarize(frame, protocol, step=20).set_index("arm")
    last = report.summarize(frame, protocol).set_index("arm")
    assert at_20.loc["igf", "n"] == 5 and last.loc["igf", "n"] == 6


def test_failed_trials_are_left_out_and_named(tmp_path):
    uri, parent = log_sweep(tmp_path, seeds_spec(), seeds_trials(failed_seed=4))
    built = report.build(parent, tracking_uri=uri, out_dir=tmp_path / "out", make_figures=False)
    assert built.summary.set_index("arm").loc["standard", "n"] == 5
    assert any("1 failed trial" in note for note in built.notes)


def test_per_seed_selection_uses_dev_and_reports_test(tmp_path):
    spec = {"name": "grid", "method": "standard", "protocol": {"kind": "per_seed_grid", "seeds": [13, 21],
            "metric": "dev_accuracy", "mode": "max", "report_metric": "test_accuracy"}}
    dev = {(13, 1e-5): 0.5, (13, 1e-4): 0.7, (21, 1e-5): 0.9, (21, 1e-4): 0.6}
    test = {(13, 1e-5): 0.40, (13, 1e-4): 0.60, (21, 1e-5): 0.80, (21, 1e-4): 0.95}
    trials = [{"arm": "standard", "seed": seed, "stage": "grid", "params": {"lr": lr},
               "history": [(4, {"dev_accuracy": dev[seed, lr], "test_accuracy": test[seed, lr]})]}
              for seed, lr in dev]
    uri, parent = log_sweep(tmp_path, spec, trials)
    built = report.build(parent, tracking_uri=uri, out_dir=tmp_path / "out")
    assert built.selection["test_accuracy"].tolist() == [0.60, 0.80]  # not the test-best 0.95
    row = built.summary.iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.70) and row["std"] == pytest.approx(0.10)
    assert set(built.figures) == {"box", "bars"}  # one step only: no curves


def test_build_writes_tables_and_readable_figures(seeds_sweep, tmp_path):
    uri, parent = seeds_sweep
    out = tmp_path / "report"
    built = report.build(parent, tracking_uri=uri, step=20, baseline="standard", out_dir=out, log=True)
    assert set(built.figures) == {"curves", "box", "bars", "pareto"}  # pareto: the metric against compute
    summary = built.summary.set_index("arm")
    for arm in ("standard", "igf"):  # each arm's trials' compute, averaged, beside its metric
        assert summary.loc[arm, "train_flops_est"] == pytest.approx(sum(cost(arm, s)["train_flops_est"] for s in SEEDS) / 6)
        assert summary.loc[arm, "wall_s"] == pytest.approx(sum(cost(arm, s)["wall_s"] for s in SEEDS) / 6)
    for path in built.figures.values():
        with Image.open(path) as image:
            assert image.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
            # not a blank canvas: a plot has many colours
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50
    for stem in ("summary", "comparisons", "steps"):
        assert pd.read_csv(out / f"{stem}.csv").shape[0] > 0
        assert json.loads((out / f"{stem}.json").read_text())
        assert (out / f"{stem}.md").read_text().startswith("|")
    text = (out / "report.md").read_text()
    assert "Comparisons between arms" in text and "![curves](curves.png)" in text
    # logged to the parent run: files under report/ and the summary numbers as metrics
    import mlflow

    client = mlflow.MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/summary.csv", "report/comparisons.json", "report/curves.png", "report/report.md"} <= logged
    metrics = client.get_run(parent).data.metrics
    assert metrics["igf.test_perplexity.mean"] == pytest.approx(built.summary.set_index("arm").loc["igf", "mean"])


def test_spec_report_section_sets_the_defaults(tmp_path):
    uri, parent = log_sweep(tmp_path, seeds_spec(step=10, baseline="standard"), seeds_trials())
    built = report.build(parent, tracking_uri=uri, out_dir=tmp_path / "out", make_figures=False)
    assert built.step == 10 and built.comparisons["vs"].tolist() == ["standard"]
    assert built.summary.set_index("arm").loc["igf", "mean"] == pytest.approx(
        np.mean([perplexity("igf", s, 10) for s in SEEDS]))
    # --arms without the spec's baseline: no error, the spec's baseline just does not apply
    only_igf = report.build(parent, tracking_uri=uri, arms=["igf"], out_dir=tmp_path / "igf", make_figures=False)
    assert only_igf.summary["arm"].tolist() == ["igf"] and only_igf.comparisons.empty


def test_spec_report_columns_add_other_metrics_means_to_the_summary(tmp_path):
    uri, parent = log_sweep(tmp_path, seeds_spec(columns=["train_loss"]), seeds_trials())
    built = report.build(parent, tracking_uri=uri, out_dir=tmp_path / "out", make_figures=False)
    assert built.summary["train_loss"].tolist() == pytest.approx([1.0 / 21, 1.0 / 21])  # each trial's last
    uri, parent = log_sweep(tmp_path / "bad", seeds_spec(columns=["subset_percent"]), seeds_trials())
    with pytest.raises(report.ReportError, match="report.columns: metric 'subset_percent' was not reported"):
        report.build(parent, tracking_uri=uri, out_dir=tmp_path / "bad-out", make_figures=False)


def test_search_sweep_gets_history_and_importances(tmp_path):
    spec = {"name": "search", "method": "standard",
            "search_space": {"lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2},
                             "warmup_steps": {"distribution": "int", "low": 0, "high": 10}},
            "protocol": {"kind": "search", "metric": "dev_perplexity", "mode": "min", "num_samples": 12}}
    rng = np.random.default_rng(0)
    trials = []
    for i in range(12):
        lr, warmup = float(10 ** rng.uniform(-5, -2)), int(rng.integers(0, 11))
        value = 100 + 30 * abs(math.log10(lr) + 3.5) + 0.01 * warmup  # lr matters, warmup barely
        trials.append({"arm": "standard", "seed": 0, "stage": "search", "params": {"lr": lr, "warmup_steps": warmup},
                       "history": [(5, {"dev_perplexity": value})]})
    uri, parent = log_sweep(tmp_path, spec, trials)
    built = report.build(parent, tracking_uri=uri, out_dir=tmp_path / "out")
    assert set(built.figures) == {"search_history", "importances"}
    assert len(built.search) == 12 and built.search["best_so_far"].is_monotonic_decreasing
    assert built.search["best_so_far"].iloc[-1] == pytest.approx(min(t["history"][0][1]["dev_perplexity"]
                                                                     for t in trials))
    importance = built.importances.set_index("param")["importance"]
    assert importance["lr"] > importance["warmup_steps"]
    assert built.summary.iloc[0]["trials"] == 12 and built.comparisons.empty


def test_cli_report_prints_tables_and_rejects_bad_options(seeds_sweep, tmp_path, capsys):
    uri, parent = seeds_sweep
    out = str(tmp_path / "cli")
    assert main(["report", parent, "--tracking-uri", uri, "--out", out, "--format", "csv",
                 "--table", "comparisons", "--baseline", "standard", "--no-figures"]) == 0
    table = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert table["arm"].tolist() == ["igf"] and table["welch_p"].iloc[0] < 0.05
    assert main(["report", parent, "--tracking-uri", uri, "--out", out, "--arms", "igf"]) == 0
    assert "| igf |" in capsys.readouterr().out
    for bad, message in ((["--metric", "nope"], "reported: test_perplexity, train_flops_est, train_loss, wall_s"),
                         (["--step", "7"], "steps with it: 0, 10, 20"),
                         (["--arms", "igf,other"], "arms ['other'] have no trials"),
                         (["--baseline", "other"], "baseline 'other'")):
        assert main(["report", parent, "--tracking-uri", uri, "--out", out, *bad]) == 2
        assert message in capsys.readouterr().err
    assert main(["report", "no-such-sweep", "--tracking-uri", uri]) == 2
    assert "neither a sweep directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2  # a directory, but not a sweep's
    assert "no sweep.json" in capsys.readouterr().err


def test_spec_report_baseline_must_be_an_arm():
    from raysel.spec import SpecError

    with pytest.raises(SpecError, match=r"report.baseline: 'std' is not an arm; arms: standard, igf"):
        load_spec(seeds_spec(baseline="std"))


def test_parameter_importances_skip_an_arm_whose_objective_never_varied():
    """fANOVA fails on a constant objective (e.g. F1 0 for every lr of a weak model): that arm is left out."""
    from raysel.report.stats import param_importances
    from raysel.spec import Categorical

    space = {"lr": Categorical(distribution="categorical", choices=[1e-4, 1e-3, 1e-2])}
    search = pd.DataFrame({"arm": ["flat"] * 3 + ["varied"] * 3, "params.lr": [1e-4, 1e-3, 1e-2] * 2,
                           "val_f1": [0.0, 0.0, 0.0, 1.0, 5.0, 2.0]})
    table = param_importances(search, {"flat": space, "varied": space}, "val_f1", "max")
    assert list(table["arm"]) == ["varied"] and table["importance"].iloc[0] == pytest.approx(1.0)


def test_report_of_a_missing_sweep_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from raysel.cli import main

    assert main(["report", str(tmp_path / "nonexistent")]) == 2
    assert list(tmp_path.iterdir()) == []  # no ./mlflow.db made by looking
