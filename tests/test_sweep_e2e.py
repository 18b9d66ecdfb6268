"""End to end on a real local Ray (2 CPUs), real Optuna and a real MLflow SQLite store."""
from __future__ import annotations

import io
import os
import pickle

import mlflow
import optuna
import pandas as pd
import pytest

import raysel
from raysel import report
from raysel.cli import main
from raysel.spec import SpecError

pytestmark = pytest.mark.usefixtures("ray_session")


def children(result) -> list:
    client = mlflow.MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")


def steps(result, run_id: str, key: str) -> list[int]:
    history = mlflow.MlflowClient(result.tracking_uri).get_metric_history(run_id, key)
    return sorted(m.step for m in history)


def test_optuna_search_logs_every_trial_to_mlflow(lm_spec):
    spec = lm_spec(
        name="search",
        search_space={"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2},
                      "warmup_steps": {"distribution": "categorical", "choices": [0, 2]}},
        protocol={"kind": "search", "num_samples": 3, "metric": "dev_perplexity", "mode": "min",
                  "report_metric": "test_perplexity", "search_seed": 3,
                  "searcher": "tpe", "sampler": {"n_startup_trials": 2, "multivariate": True}},
    )
    cwd, strict = os.getcwd(), os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING")
    result = raysel.run_sweep(spec, progress=False)
    # the caller's process is as it was (what run_sweep itself sets; first imports of torch or Ray set
    # variables of their own)
    assert os.getcwd() == cwd and os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING") == strict

    assert len(result.trials) == 3 and result.num_errors == 0
    lrs = result.trials["params.lr"]
    assert lrs.between(1e-4, 1e-2).all() and lrs.nunique() == 3  # TPE's samples, not one fixed value
    best = result.trials.sort_values("dev_perplexity").iloc[0]
    assert result.best_config["lr"] == pytest.approx(best["params.lr"])
    assert result.best_config["max_steps"] == 6
    assert (result.trials["step"] == 6).all()

    client = mlflow.MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["raysel.role"] == "sweep" and parent.info.status == "FINISHED"
    runs = children(result)
    assert len(runs) == 3
    for run in runs:
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["raysel.method"] == "standard" and tags["raysel.arm"] == "standard"
        assert tags["raysel.stage"] == "search" and tags["raysel.protocol"] == "search" and tags["raysel.seed"] == "3"
        assert tags["raysel.trial_id"] in set(result.trials["trial_id"])
        assert run.info.run_name == f"standard-search-seed3-{tags['raysel.trial_id']}"  # arm-stage-seed-trial id
        assert run.data.params["params.max_steps"] == "6" and run.data.params["model.name"] == "tiny-gpt2-random"
        assert float(run.data.params["params.lr"]) in set(lrs)
        # the loop's own global step: evaluations at 0, 3, 6; training loss at every optimizer step
        assert steps(result, run.info.run_id, "test_perplexity") == [0, 3, 6]
        assert steps(result, run.info.run_id, "train_loss") == [1, 2, 3, 4, 5, 6]
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {"report/summary.csv", "report/trials.csv", "report/best_configs.json", "report/search_history.png",
            "report/importances.png"} <= artifacts
    assert "sweep.json" in {a.path for a in client.list_artifacts(result.parent_run_id)}
    # the spec's sampler settings reached Optuna (Tune's saved searcher state holds the study it used)
    (state,) = (result.storage_path / "search-standard").glob("searcher-state-*.pkl")
    with state.open("rb") as f:
        sampler = pickle.load(f)["_ot_study"].sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 2 and sampler._multivariate
    assert ("searcher tpe: 2 of each arm's 3 search trials were drawn at random (n_startup_trials 2), the other 1 "
            "by TPE's model") in " ".join(result.report.notes)
    assert (result.storage_path / "report" / "summary.csv").exists()
    # Tune's trial names (its tables and logs) are the same labels
    from ray.tune import ExperimentAnalysis

    names = {str(t) for t in ExperimentAnalysis(str(result.storage_path / "search-standard")).trials}
    assert names == {f"standard-search-seed3-{i}" for i in result.trials["trial_id"]}


def test_seeds_protocol_compares_arms_on_the_same_seeds(lm_spec, capsys):
    spec = lm_spec(name="arms", method=None, params=None,
                   arms=[{"name": "slow", "method": "standard",
                          "params": {**lm_spec()["params"], "lr": 1e-4}},
                         {"name": "fast", "method": "standard",
                          "params": {**lm_spec()["params"], "lr": 3e-3}}])
    result = raysel.run_sweep(spec, progress=False)

    assert result.num_errors == 0 and len(result.trials) == 4
    seeds = result.trials.groupby("arm")["seed"].apply(sorted).to_dict()
    assert seeds == {"slow": [0, 1], "fast": [0, 1]}
    summary = result.summary.set_index("arm")
    assert set(summary.index) == {"slow", "fast"} and (summary["n"] == 2).all()
    assert summary.loc["fast", "metric"] == "test_perplexity"
    # a 30× larger learning rate moves a random tiny GPT-2 much further in 6 steps
    assert summary.loc["fast", "mean"] < summary.loc["slow", "mean"]
    assert len(children(result)) == 4
    # `raysel report` rebuilds the same summary from the sweep's directory
    capsys.readouterr()  # drop what the sweep printed
    assert main(["report", str(result.storage_path), "--format", "csv"]) == 0
    reported = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("arm")
    assert reported.loc["fast", "mean"] == pytest.approx(summary.loc["fast", "mean"])
    assert reported.loc["slow", "n"] == 2
    # MLflow (the source of truth) and Ray Tune's files give the same trial × step table
    from_mlflow = report.load(result.storage_path, source="mlflow")
    from_tune = report.load(result.storage_path, source="tune")
    key = ["trial_id", "step"]
    metrics = ["test_perplexity", "dev_perplexity", "train_loss"]
    merged = from_mlflow[key + metrics].merge(from_tune[key + metrics], on=key, suffixes=("", "_tune"))
    assert len(merged) == len(from_mlflow) == len(from_tune) == 4 * 7  # steps 0..6
    for metric in metrics:
        pd.testing.assert_series_equal(merged[metric], merged[f"{metric}_tune"], check_names=False)
    assert set(result.report.figures) == {"curves", "box", "bars", "pareto"}  # pareto: arms against compute


def test_per_seed_grid_selects_on_dev_per_data_seed(tmp_path, lm_spec):
    spec = lm_spec(
        name="grid",
        model={"name": "tiny-bert"}, data={"name": "pydocs-topics", "k": 4},
        params={"task": "classification", "max_steps": 4, "eval_every": 2, "batch_size": 4, "eval_examples": 40},
        search_space={"lr": {"distribution": "categorical", "choices": [1e-4, 1e-3]}},
        protocol={"kind": "per_seed_grid", "seeds": [13, 21], "metric": "dev_accuracy", "mode": "max",
                  "report_metric": "test_accuracy"},
    )
    result = raysel.run_sweep(spec, progress=False)

    assert result.num_errors == 0 and len(result.trials) == 4
    assert sorted(map(tuple, result.trials[["seed", "params.lr"]].values.tolist())) == \
        [(13, 1e-4), (13, 1e-3), (21, 1e-4), (21, 1e-3)]
    row = result.summary.iloc[0]
    assert row["n"] == 2 and 0.0 <= row["mean"] <= 1.0
    chosen = []
    for seed, group in result.trials.groupby("seed"):
        chosen.append(group.sort_values("dev_accuracy", ascending=False, kind="stable").iloc[0]["test_accuracy"])
    assert row["mean"] == pytest.approx(sum(chosen) / 2)


def test_search_then_seeds_reruns_the_best_config_on_every_seed(lm_spec):
    spec = lm_spec(
        name="search-seeds",
        search_space={"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}},
        protocol={"kind": "search+seeds", "num_samples": 2, "seeds": [4, 5], "metric": "dev_perplexity",
                  "mode": "min", "report_metric": "test_perplexity"},
    )
    result = raysel.run_sweep(spec, progress=False)

    assert result.num_errors == 0
    assert result.trials["stage"].value_counts().to_dict() == {"search": 2, "seeds": 2}
    seeds_rows = result.trials[result.trials["stage"] == "seeds"]
    assert sorted(seeds_rows["seed"]) == [4, 5]
    assert (seeds_rows["params.lr"] == result.best_config["lr"]).all()
    assert result.summary.iloc[0]["n"] == 2
    assert len(children(result)) == 4


def test_a_second_sweep_with_the_same_name_needs_resume(lm_spec):
    spec = lm_spec(name="twice", protocol={"kind": "seeds", "seeds": [0], "metric": "test_perplexity",
                                           "mode": "min"})
    raysel.run_sweep(spec, progress=False)
    with pytest.raises(SpecError, match="--resume"):
        raysel.run_sweep(spec, progress=False)


def test_asha_stops_trials_early_and_their_runs_are_closed(lm_spec):
    spec = lm_spec(
        name="asha", params={"max_steps": 8, "eval_every": 2},
        search_space={"lr": {"distribution": "loguniform", "low": 1e-6, "high": 1e-2}},
        protocol={"kind": "search", "num_samples": 6, "metric": "dev_perplexity", "mode": "min", "search_seed": 1},
        scheduler={"kind": "asha", "grace_period": 2, "reduction_factor": 2, "max_t": 8},
    )
    result = raysel.run_sweep(spec, progress=False)

    assert result.num_errors == 0 and len(result.trials) == 6
    assert set(result.trials["step"]) <= {2, 4, 6, 8}
    runs = children(result)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    # every run that MLflow shows ending before max_t was stopped by the scheduler and says so (what a run
    # logged, not Tune's last processed result: a trial may train on past the stop ASHA decided at step 2,
    # to its end, before the stop reaches it; it then finished, untagged)
    for run in runs:
        last = max(m.step for m in mlflow.MlflowClient(result.tracking_uri).get_metric_history(run.info.run_id, "train_loss"))
        if last < 8:
            assert run.data.tags.get("raysel.stopped_by_scheduler") == "true", (run.data.tags, last)
    assert (result.trials["step"] == 8).any()


def test_the_median_stopping_rule_stops_a_clearly_worse_trial_and_lets_the_others_finish(lm_spec):
    """A grid of four learning rates, one trial at a time: three that learn, then lr 1e-7 (its perplexity
    stays at the untrained model's). With min_samples_required 3 only that last trial is judged: its best
    dev perplexity by step 4 is worse than the median of the others' running means, so it is stopped (long
    before its 200 steps: the stop comes with its step-4 result), and its run says so."""
    spec = lm_spec(
        name="median", params={"max_steps": 200, "eval_every": 4},
        search_space={"lr": {"distribution": "categorical", "choices": [4e-3, 3e-3, 5e-3, 1e-7]}},
        protocol={"kind": "search", "searcher": "grid", "metric": "dev_perplexity", "mode": "min"},
        resources={"max_concurrent_trials": 1},
        scheduler={"kind": "median", "grace_period": 4, "min_samples_required": 3},
    )
    result = raysel.run_sweep(spec, progress=False)

    assert result.num_errors == 0
    steps = dict(zip(result.trials["params.lr"], result.trials["step"]))
    assert steps[4e-3] == steps[3e-3] == steps[5e-3] == 200, steps
    runs = {float(r.data.params["params.lr"]): r for r in children(result)}
    assert runs[1e-7].data.tags.get("raysel.stopped_by_scheduler") == "true"
    assert steps[1e-7] < 200 and all("raysel.stopped_by_scheduler" not in runs[lr].data.tags
                                     for lr in (4e-3, 3e-3, 5e-3))


def test_pbt_exploits_copy_a_better_trials_checkpoint_and_the_run_records_from_whom_and_its_new_lr(lm_spec):
    """Population based training, 4 trials at once, synchronous: every 4 steps the bottom half takes the
    checkpoint of the top half and perturbs its lr (x0.8 or x1.2, never resampled). Each exploit is in the
    exploited trial's run: whose checkpoint at which step, the lr before and after, and the loop then trains
    at the new lr from the checkpoint's schedule position."""
    import re

    spec = lm_spec(
        name="pbt", params={"max_steps": 12, "eval_every": 4},
        search_space={"lr": {"distribution": "loguniform", "low": 1e-6, "high": 1e-2}},
        protocol={"kind": "search", "searcher": "random", "num_samples": 4, "metric": "dev_perplexity", "mode": "min"},
        resources={"max_concurrent_trials": 4, "cpus_per_worker": 0.5},
        scheduler={"kind": "pbt", "perturbation_interval": 4, "quantile_fraction": 0.5, "resample_probability": 0.0,
                   "synch": True},
    )
    result = raysel.run_sweep(spec, progress=False)

    assert result.num_errors == 0 and len(result.trials) == 4 and set(result.trials["step"]) == {12}
    client = mlflow.MlflowClient(result.tracking_uri)
    runs = {r.info.run_id: r for r in children(result)}
    exploits = 0
    for run in runs.values():
        for key, value in run.data.tags.items():
            if not key.startswith("raysel.exploited_at."):
                continue
            exploits += 1
            donor, step = re.fullmatch(r"took the checkpoint of run (\w+) at step (\d+)", value).groups()
            assert donor in runs and donor != run.info.run_id
            changed = run.data.tags[f"raysel.params_changed_at.{key.rsplit('.', 1)[1]}"]
            old, new = map(float, re.search(r"params\.lr: (\S+) -> (\S+)", changed).groups())
            assert new != old
            if int(step) < 12:  # (an exploit at the last step has nothing left to train)
                lr_after = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}[int(step) + 1]
                assert lr_after == pytest.approx(new * (12 - int(step)) / 12, rel=1e-9)  # the linear decay's position
    assert exploits >= 2, "synchronous PBT with quantile 0.5 exploits the bottom two trials at step 4"


def test_cli_sweep_prints_trials_summary_best_config_and_report(lm_spec, tmp_path, capsys):
    import yaml

    spec = lm_spec(name="cli", search_space={"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}},
                   protocol={"kind": "search", "num_samples": 2, "metric": "dev_perplexity", "mode": "min",
                             "report_metric": "test_perplexity"})
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sweep cli: trials" in out and "sweep cli: summary" in out
    assert "best config [standard]:" in out  # the arm's name, not swallowed as rich markup
    assert "search_history.png" in out and "importances.png" in out
