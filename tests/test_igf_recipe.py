"""The IGF recipe: params and aliases, the learner cache, filtered fine-tuning on the shared loop,
and a 3-arm × 3-seed protocol sweep on local Ray whose report matches the logged metrics."""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import raysel
from raysel.methods import get_method
from raysel.methods.igf import IGFParams
from raysel.spec import DataSpec, ModelSpec, SpecError, load_spec
from raysel.run_context import LocalRun

# small enough for seconds per trial on the tiny random GPT-2 and the built-in pydocs data
# (a random model's IG is noise and the learner's scores all sit near one value: thresholds in its own units)
SMALL = {"context_len": 16, "size_objective_set": 8, "min_len": 64, "ig_contexts": 48, "ig_chunk_size": 16,
         "secondary_learner_max_epochs": 3, "learner_lr": 1e-3, "eval_examples": 16, "max_batches": 4,
         "batch_size": 4, "eval_every": 2, "switch_step": 2, "threshold_units": "learner", "lr": 1e-3}


def run_igf(tmp_path, seed: int = 0, model: str = "tiny-gpt2-random", **params) -> tuple[LocalRun, dict]:
    method = get_method("igf")
    run = LocalRun(seed=seed, model=ModelSpec(name=model), data=DataSpec(name="pydocs"),
                   artifact_dir=tmp_path / "artifacts" / f"trial{seed}", shared_dir=tmp_path / "shared")
    final = method.train_loop(method.Params.model_validate({**SMALL, **params}), run)
    return run, final


@pytest.mark.parametrize("engine", ["exact", "first_order"])
def test_igf_runs_on_a_llama_model_with_either_ig_engine(tmp_path, engine):
    """smollm2-135m's architecture (tiny-llama-random): IG, the learner on a copy of its embedding, filtering."""
    import torch

    run, final = run_igf(tmp_path, model="tiny-llama-random", threshold_mode="shifting", ig_engine=engine)
    steps = {r["step"]: r for r in run.results}
    assert set(steps) == {0, 1, 2, 3, 4} and 1 < final["test_perplexity"] < float("inf")
    assert 0 < steps[4]["acceptance_rate"] <= 1 and steps[0]["ig_std"] > 0
    (learner,) = (tmp_path / "shared").glob("igf-learner-*/learner.pt")
    state = torch.load(learner, weights_only=False)["state"]
    assert tuple(state["embed.weight"].shape) == (2000, 64)  # the LLaMA's vocabulary and hidden size


def test_seed_flag_names_are_aliases():
    params = IGFParams.model_validate({"number": 50, "max_steps": 200, "eval_interval": 5, "eval_freq": 7})
    assert (params.size_objective_set, params.ig_contexts, params.switch_step) == (50, 200, 5)
    assert params.learner_eval_every == 7
    assert params.max_batches == 60 and params.batch_size == 16 and params.max_grad_norm == 3.0
    with pytest.raises(ValueError, match="recopy_model"):
        IGFParams(recopy_model=False)


def test_bad_params_are_spec_errors_naming_the_field():
    with pytest.raises(SpecError) as err:
        load_spec({"name": "x", "method": "igf", "params": {"threshold_mode": "sometimes", "ig_lr": -1},
                   "protocol": {"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"}})
    text = str(err.value)
    assert "threshold_mode" in text and "'none', 'constant' or 'shifting'" in text and "ig_lr" in text


def test_shifting_igf_trains_on_accepted_contexts_and_shares_its_learner(tmp_path):
    run, final = run_igf(tmp_path, seed=0, threshold_mode="shifting")
    steps = {r["step"]: r for r in run.results}
    assert final["test_perplexity"] > 1 and set(steps) == {0, 1, 2, 3, 4}
    # before switch_step batches the threshold is threshold_start, then threshold_end
    assert steps[1]["threshold"] == 1.0 and steps[3]["threshold"] == -1.0
    assert steps[1]["acceptance_rate"] < steps[3]["acceptance_rate"] <= 1.0
    consumed = [steps[s]["contexts_consumed"] for s in (1, 2, 3, 4)]
    assert consumed == sorted(consumed) and consumed[-1] >= 4 * 4
    assert 0 <= steps[0]["learner_heldout_mse"] and -1 <= steps[0]["learner_heldout_spearman"] <= 1
    # its selection's FLOPs: building the learner, then scoring each examined candidate with it
    selection = [steps[s]["selection_flops_est"] for s in (1, 2, 3, 4)]
    per_candidate = (selection[-1] - selection[0]) / (consumed[-1] - consumed[0])
    assert selection[0] - per_candidate * consumed[0] > 100 * per_candidate > 0
    learners = list((tmp_path / "shared").glob("igf-learner-*/learner.pt"))
    assert len(learners) == 1
    built = learners[0].stat().st_mtime_ns
    # a second trial with the same IG settings reuses the learner instead of recomputing it
    again, _ = run_igf(tmp_path, seed=1, threshold_mode="constant", threshold=0.0)
    assert learners[0].stat().st_mtime_ns == built
    assert again.results[0]["learner_heldout_mse"] == run.results[0]["learner_heldout_mse"]


def test_standard_arm_accepts_everything_and_builds_no_learner(tmp_path):
    run, _ = run_igf(tmp_path, threshold_mode="none")
    assert all(r.get("acceptance_rate", 1.0) == 1.0 for r in run.results)
    assert run.results[-1]["contexts_consumed"] == 4 * 4
    assert all("selection_flops_est" not in r for r in run.results)
    assert not list((tmp_path / "shared").glob("igf-learner-*"))


def test_a_trial_is_a_function_of_its_seed(tmp_path):
    first, _ = run_igf(tmp_path / "a", seed=3, threshold_mode="shifting")
    second, _ = run_igf(tmp_path / "b", seed=3, threshold_mode="shifting")
    assert [r["test_perplexity"] for r in first.results if "test_perplexity" in r] == \
        [r["test_perplexity"] for r in second.results if "test_perplexity" in r]


def test_three_arm_protocol_sweep_and_its_report(tmp_path, ray_session):
    arms = [{"name": name, "method": "igf", "params": {**SMALL, "threshold_mode": mode}}
            for name, mode in (("standard", "none"), ("igf-constant", "constant"), ("igf-shifting", "shifting"))]
    spec = {"name": "igf-small", "arms": arms, "model": {"name": "tiny-gpt2-random"}, "data": {"name": "pydocs"},
            "protocol": {"kind": "seeds", "seeds": [0, 1, 2], "metric": "test_perplexity", "mode": "min"},
            "report": {"baseline": "standard", "step": 4},
            "resources": {"max_concurrent_trials": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results")}
    result = raysel.run_sweep(spec, progress=False)
    assert result.num_errors == 0 and len(result.trials) == 9

    # the report's numbers against the metrics logged in MLflow, read back directly
    client = mlflow.MlflowClient(result.tracking_uri)
    final: dict[str, list[float]] = {}
    for run in client.search_runs([client.get_run(result.parent_run_id).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"):
        history = client.get_metric_history(run.info.run_id, "test_perplexity")
        value = [m.value for m in history if m.step == 4][-1]
        final.setdefault(run.data.tags["raysel.arm"], []).append(value)
    summary = result.summary.set_index("arm")
    for arm, values in final.items():
        assert summary.loc[arm, "n"] == 3
        assert summary.loc[arm, "mean"] == pytest.approx(np.mean(values))
        assert summary.loc[arm, "median"] == pytest.approx(np.median(values))
    comparisons = result.report.comparisons.set_index("arm")
    assert set(comparisons.index) == {"igf-constant", "igf-shifting"}
    assert (comparisons["vs"] == "standard").all()
    welch = scipy_stats.ttest_ind(final["igf-shifting"], final["standard"], equal_var=False)
    assert comparisons.loc["igf-shifting", "welch_p"] == pytest.approx(welch.pvalue)
    assert set(result.report.figures) == {"curves", "box", "bars", "pareto"}  # pareto: arms against compute
    # compute columns: the IGF arms' selection (IG, learner, filter) counts in their total, standard has none
    assert summary.loc["standard", "total_flops_est"] == summary.loc["standard", "train_flops_est"]
    for arm in ("igf-constant", "igf-shifting"):
        assert summary.loc[arm, "total_flops_est"] == pytest.approx(
            summary.loc[arm, "train_flops_est"] + summary.loc[arm, "selection_flops_est"])
        assert summary.loc[arm, "selection_flops_est"] > summary.loc[arm, "train_flops_est"]
    steps = result.report.steps
    assert set(steps["step"]) == {0, 2, 4} and (steps["n"] == 3).all()
    tags = pd.Series({r.data.tags["raysel.arm"]: r.data.tags.get("igf.learner", "")
                      for r in client.search_runs([client.get_run(result.parent_run_id).info.experiment_id],
                                                  "tags.`raysel.arm` = 'igf-shifting'")})
    assert tags.str.len().gt(0).all()


def test_ig_collection_is_split_across_ray_train_workers(tmp_path, ray_session):
    """workers: 2 — each Ray Train worker computes the IG of half the contexts; the assembled pairs
    equal the single-process engine's, and the learner is built once for the trial."""
    import torch

    from raysel.methods.igf import information_gain
    from raysel.methods.igf.algorithm import objective_perplexity, rank_correlation
    from raysel.models import load_model

    params = {**SMALL, "threshold_mode": "shifting", "max_batches": 2, "eval_every": 2}
    spec = {"name": "igf-ddp", "method": "igf", "params": params, "model": {"name": "tiny-gpt2-random"},
            "data": {"name": "pydocs"},
            "protocol": {"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"},
            "resources": {"workers": 2, "max_concurrent_trials": 1},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results")}
    result = raysel.run_sweep(spec, progress=False)
    assert result.num_errors == 0
    assert result.trials.iloc[0]["ig_workers"] == 2
    (pairs_file,) = (tmp_path / "results" / "igf-ddp" / "artifacts" / "shared").glob("igf-learner-*/ig_pairs.pt")
    pairs = torch.load(pairs_file, weights_only=False)
    model, _ = load_model("tiny-gpt2-random", "causal_lm")
    expected = information_gain(model, pairs["contexts"], pairs["objective"], lr=5e-5,
                                chunk_size=SMALL["ig_chunk_size"])
    # IG is the difference of two float32 perplexities, each rounded at ~1e-7 of the perplexity in an
    # order that depends on the process's threads and chunks: compare at that scale, not IG's own
    # (a worker scoring the wrong contexts would be off by the IGs' whole spread, and rank them apart)
    noise = 1e-6 * objective_perplexity(model, pairs["objective"])
    assert float((pairs["ig"] - expected).abs().max()) <= noise < 0.1 * float(expected.std())
    assert rank_correlation(pairs["ig"], expected) > 0.95


def test_first_order_engine_reports_its_rank_correlation_with_exact_ig(tmp_path):
    run, _ = run_igf(tmp_path, threshold_mode="shifting", ig_engine="first_order", ig_check_contexts=8)
    first = run.results[0]
    assert -1.0 <= first["ig_first_order_spearman"] <= 1.0
    assert first["ig_workers"] == 1
