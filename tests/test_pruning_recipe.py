"""Pruning through the scheduler: arms with their own seeds and an order (``after:``), the specs'
checks, and a small phase 1 → phase 2 sweep on Ray + MLflow with its report (table and H histogram)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from raysel.spec import SpecError, load_spec
from raysel.protocols import expand

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {"task": "classification", "batch_size": 8, "epochs": 2, "lr": 1e-3, "eval_examples": 32, "score_runs": 2}


def small_spec(tmp_path, **extra) -> dict:
    return copy.deepcopy({"name": "pruning-small", "model": {"name": "tiny-bert"},
            "data": {"name": "pydocs-topics", "max_examples": 40},
            "arms": [{"name": "score", "method": "pruning", "params": {**TRAIN, "phase": "score"}, "seeds": [342, 4827]},
                     {"name": "full", "method": "pruning", "params": TRAIN},
                     *({"name": subset, "method": "pruning", "params": {**TRAIN, "subset": subset, "remove_h": [0, 2]},
                        "after": ["score"]} for subset in ("remove", "random", "ambiguous"))],
            "protocol": {"kind": "seeds", "seeds": [0, 1], "metric": "dev_accuracy", "mode": "max",
                         "report_metric": "test_accuracy"},
            "report": {"baseline": "full", "columns": ["subset_percent"]},
            "resources": {"max_concurrent_trials": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results"),
            **extra})


def test_arms_with_their_own_seeds_and_an_order_run_as_phases_one_after_the_other():
    phases = expand(load_spec(ROOT / "tune_configs" / "pruning.yaml"))
    assert [p.label for p in phases] == ["seeds-1", "seeds-2", "seeds-3"]
    assert [[v["arm"] for v in p.variants] for p in phases] == [
        ["score"], ["full"], ["winning-ticket", "remove-0-1-6", "remove-0-1-5-6", "random", "ambiguous"]]
    assert phases[0].seeds == [342, 4827, 1215, 98, 8128, 828] and phases[2].seeds == [0, 1, 2, 3, 4]
    # without own seeds or after: one phase, as before
    plain = load_spec(ROOT / "tune_configs" / "kernel_5seed.yaml")
    assert [p.label for p in expand(plain)] == ["grid"]


@pytest.mark.parametrize("change, message", [
    (lambda s: s["arms"][2].update(after=["scroe"]), r"arms.2.after: 'scroe' is not another arm"),
    (lambda s: s["arms"][0].update(after=["remove"]), r"arms: after: is circular \(score -> remove -> score\)"),
    (lambda s: s["arms"][0].update(seeds=[1, 1]), r"arms.0.seeds: must be a non-empty list of distinct integers"),
    (lambda s: s["protocol"].update(kind="search"), r"an arm's own seeds and after: need protocol 'seeds'"),
    (lambda s: s["arms"][1]["params"].update(max_steps=5), r"set epochs, not max_steps"),
    (lambda s: s["arms"][2]["params"].update(remove_h=[0, 3]), r"remove_h \[0, 3\]: give H values in 0..score_runs"),
])
def test_pruning_specs_are_checked_before_anything_runs(tmp_path, change, message):
    spec = small_spec(tmp_path)
    change(spec)
    with pytest.raises(SpecError, match=message):
        load_spec(spec)


def test_a_phase_1_to_phase_2_sweep_on_ray_with_its_report(tmp_path, ray_session):
    """Scoring runs on their own seeds, then subsets from their records; the report's table and H histogram."""
    import mlflow

    import raysel

    result = raysel.run_sweep(small_spec(tmp_path), progress=False)
    trials = result.trials
    assert result.num_errors == 0 and len(trials) == 2 + 2 + 3 * 2
    assert list(dict.fromkeys(trials["phase"])) == ["seeds-1", "seeds-2", "seeds-3"]
    score = trials[trials["arm"] == "score"]
    assert sorted(score["seed"]) == [342, 4827] and score["train_accuracy_last_epoch"].between(0, 1).all()
    shared = tmp_path / "results" / "pruning-small" / "artifacts" / "shared" / "pruning" / "scores"
    assert sorted(p.name for p in shared.glob("*.pt")) == ["seed-342.pt", "seed-4827.pt"]
    sizes = trials[trials["arm"].isin(["remove", "random", "ambiguous"])]["subset_size"]
    assert sizes.nunique() == 1 and 0 < sizes.iloc[0] < 40  # equal-size baselines
    assert (trials[trials["arm"] == "full"]["subset_percent"] == 100).all()
    # choosing a subset by its scores cost the scoring runs' training; full and random chose nothing
    scoring = score["train_flops_est"].sum()
    by_scores = trials[trials["arm"].isin(["remove", "ambiguous"])]["selection_flops_est"]
    assert scoring > 0 and len(by_scores) == 4 and by_scores.tolist() == pytest.approx([scoring] * 4)
    assert trials[trials["arm"].isin(["full", "random"])]["selection_flops_est"].isna().all()

    report = result.report
    summary = report.summary.set_index("arm")
    assert summary.loc["remove", "subset_percent"] == pytest.approx(100 * sizes.iloc[0] / 40)
    assert set(summary.index) == {"score", "full", "remove", "random", "ambiguous"}
    assert summary.loc["remove", "total_flops_est"] == pytest.approx(
        summary.loc["remove", "train_flops_est"] + scoring)
    assert summary.loc["random", "total_flops_est"] == summary.loc["random", "train_flops_est"]
    histogram = report.figures["score-h-histogram"]
    assert histogram.exists() and histogram.stat().st_size > 10_000
    scores_csv = (histogram.parent / "score-scores.csv").read_text().splitlines()
    assert scores_csv[0] == "example,h,confidence,variability,correctness,forgetting,el2n" and len(scores_csv) == 41

    client = mlflow.MlflowClient(result.tracking_uri)
    run_id = score.iloc[0]["mlflow_run_id"]
    assert [a.path for a in client.list_artifacts(run_id, "pruning")] == [f"pruning/seed-{score.iloc[0]['seed']}.pt"]
