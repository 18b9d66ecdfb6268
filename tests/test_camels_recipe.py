"""CaMeLS through the scheduler: a tiny QA-tune → meta-train → evaluate sweep on Ray + MLflow (every
weighting, its report with the token-weight figure), then an evaluation sweep that reads the first
sweep's models (``from_sweep``) with the learning-rate grid on validation and the best lr on seeds;
the specs' checks and the tune_configs."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pandas as pd
import pytest

from raysel.data.errors import DataError
from raysel.spec import SpecError, load_spec
from raysel.protocols import expand
from raysel.sweep import preflight

ROOT = Path(__file__).resolve().parents[1]
FAST_EVAL = {"phase": "evaluate", "downsample_to": 3, "max_answer_tokens": 4}


def train_spec(tmp_path) -> dict:
    arms = [{"name": "qa", "method": "camels", "params": {"phase": "qa_tune", "qa_steps": 4, "qa_eval_every": 2,
                                                          "qa_batch_size": 8, "qa_eval_questions": 8}},
            {"name": "meta", "method": "camels", "after": ["qa"],
             "params": {"phase": "meta_train", "outer_steps": 2, "grad_acc_steps": 2, "update_batch_size": 2,
                        "val_every": 1, "val_batches": 1, "outer_lr": 1e-2, "locality_tokens": 16}}]
    arms += [{"name": name, "method": "camels", "after": ["meta"], "params": {**FAST_EVAL, **params}}
             for name, params in (("uniform", {"weighting": "uniform"}), ("ssm", {"weighting": "ssm"}),
                                  ("tfidf", {"weighting": "tfidf", "min_threshold": 0.3}),
                                  ("camels", {"weighting": "camels"}),
                                  ("uniform-qa-lt", {"weighting": "uniform", "qa_lt_final": True,
                                                     "qa_lt_max_steps": 2, "qa_lt_eval_every": 1}))]
    return {"name": "camels-small", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "synthetic-facts"},
            "arms": arms, "protocol": {"kind": "seeds", "seeds": [0], "metric": "val_f1", "mode": "max",
                                       "report_metric": "test_f1"},
            "resources": {"max_concurrent_trials": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results")}


def eval_spec(tmp_path, from_sweep: Path) -> dict:
    arms = [{"name": w, "method": "camels", "params": {**FAST_EVAL, "weighting": w, "from_sweep": str(from_sweep)},
             "search_space": {"lr": {"distribution": "categorical", "choices": [1e-4, 1e-3]}}}
            for w in ("uniform", "camels")]
    return {"name": "camels-eval-small", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "synthetic-facts"},
            "arms": arms, "protocol": {"kind": "search+seeds", "searcher": "grid", "seeds": [1, 2], "metric": "val_f1",
                                       "mode": "max", "report_metric": "test_f1"},
            "resources": {"max_concurrent_trials": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results")}


def test_qa_tune_meta_train_evaluate_then_an_lr_grid_from_the_trained_sweep(tmp_path, ray_session):
    import mlflow

    import raysel

    result = raysel.run_sweep(train_spec(tmp_path), progress=False)
    trials = result.trials.set_index("arm")
    assert result.num_errors == 0 and len(trials) == 7
    shared = tmp_path / "results" / "camels-small" / "artifacts" / "shared" / "camels" / "camels"
    assert (shared / "qa-model" / "config.json").is_file() and (shared / "weight-model.pt").is_file()
    # the meta-gradient moved the weight model away from its constant start (ln 2 / 3 on every token)
    assert abs(trials.loc["meta", "val_weight_mean"] - math.log(2) / 3) > 1e-4
    assert trials.loc["meta", "val_qa_nll"] > 0 and "train_qa_nll" in trials.columns
    # meta-training's compute: 2 outer steps × 2 batches of 2 documents, their second-order FLOPs counted
    assert trials.loc["meta", "train_examples"] == 8 and trials.loc["meta", "train_flops_est"] > 0
    for arm in ("uniform", "ssm", "tfidf", "camels", "uniform-qa-lt"):
        for split in ("val", "test"):
            for metric in ("f1", "em", "em_prefix"):
                assert 0 <= trials.loc[arm, f"{split}_{metric}"] <= 100
            assert trials.loc[arm, f"{split}_documents"] == 3
            assert trials.loc[arm, f"{split}_answer_nll"] > 0
    # one weighting changes the adaptation: same start, same stream, different answers' likelihood
    assert len({round(trials.loc[a, "test_answer_nll"], 9) for a in ("uniform", "ssm", "tfidf", "camels")}) == 4
    assert trials.loc["uniform-qa-lt", "test_qa_lt_steps"] >= 1
    # compute: adaptation (and light tuning) trained on; the camels weights cost their meta-training
    assert 0 < trials.loc["uniform", "train_flops_est"] < trials.loc["uniform-qa-lt", "train_flops_est"]
    assert trials.loc["camels", "selection_flops_est"] == pytest.approx(trials.loc["meta", "train_flops_est"])
    assert pd.isna(trials.loc["uniform", "selection_flops_est"])

    client = mlflow.MlflowClient(result.tracking_uri)
    tags = client.get_run(trials.loc["ssm", "mlflow_run_id"]).data.tags
    assert tags["camels.ssm_detector"] in ("rules", "spacy:en_core_web_sm") and tags["camels.weighting"] == "ssm"
    answers = [a.path for a in client.list_artifacts(trials.loc["camels", "mlflow_run_id"], "answers")]
    assert answers == ["answers/test-answers.csv", "answers/val-answers.csv"]
    figure = result.report.figures["meta-token-weights"]
    assert figure.exists() and figure.stat().st_size > 10_000

    evaluation = raysel.run_sweep(eval_spec(tmp_path, tmp_path / "results" / "camels-small"), progress=False)
    frame = evaluation.trials
    assert evaluation.num_errors == 0
    search = frame[frame["stage"] == "search"]
    assert sorted(search["params.lr"]) == [1e-4, 1e-4, 1e-3, 1e-3] and set(search["seed"]) == {0}  # the grid, once
    seeds = frame[frame["stage"] == "seeds"]
    assert sorted(seeds["seed"]) == [1, 1, 2, 2]
    for arm, best in evaluation.best_configs.items():
        arm_search = search[search["arm"] == arm]
        assert best["lr"] == arm_search.sort_values("val_f1", ascending=False).iloc[0]["params.lr"]
        assert (seeds[seeds["arm"] == arm]["params.lr"] == best["lr"]).all()


def test_evaluation_from_a_missing_sweep_fails_before_ray_starts(tmp_path):
    spec = load_spec(eval_spec(tmp_path, tmp_path / "no-such-sweep"))
    with pytest.raises(DataError, match=r"no-such-sweep/artifacts/shared/camels/camels/qa-model does not exist; "
                                         r"run the sweep that trains it first"):
        preflight(spec)


@pytest.mark.parametrize("model, layers", [("tiny-llama-random", 3), ("tiny-gpt2-random", 9)])
def test_a_weight_encoder_cut_below_layers_it_lacks_fails_before_ray_starts(tmp_path, model, layers):
    spec = train_spec(tmp_path)
    spec["model"]["name"] = model
    spec["arms"][1]["params"]["weight_encoder_layers"] = layers
    with pytest.raises(DataError, match=rf"weight_encoder_layers={layers}, but the weight encoder '{model}' has 2 "
                                        r"transformer layers; allowed: 1 to 2"):
        preflight(load_spec(spec))
    spec["arms"][1]["params"]["weight_encoder_layers"] = 2
    preflight(load_spec(spec))
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("change, message", [
    (lambda s: s["protocol"].update(kind="seeds"), r"protocol.searcher: 'grid' is for the search phases"),
    (lambda s: s["arms"][0]["search_space"].update(lr={"distribution": "loguniform", "low": 1e-5, "high": 1e-3}),
     r"arms.0.search_space.lr: only categorical and int distributions can be enumerated on a grid \(searcher grid\)"),
    (lambda s: s["arms"][0]["params"].update(weighting="bm25"), r"arms.0.params.weighting: 'bm25' is not allowed"),
    (lambda s: s["arms"][0]["params"].update(weight_model="w.pt"), r"weight_model is read by weighting 'camels' only"),
    (lambda s: s["arms"][0]["params"].update(min_threshold=1.5), r"arms.0.params.min_threshold"),
    (lambda s: s["arms"][0]["params"].update(answer_scoring="longest"),
     r"arms.0.params.answer_scoring: 'longest' is not allowed"),
    (lambda s: s["arms"][0]["params"].update(loss_normalization="sum"),
     r"arms.0.params.loss_normalization: 'sum' is not allowed"),
])
def test_camels_specs_are_checked_before_anything_runs(tmp_path, change, message):
    spec = copy.deepcopy(eval_spec(tmp_path, tmp_path))
    change(spec)
    with pytest.raises(SpecError, match=message):
        load_spec(spec)


def test_the_camels_tune_configs_expand_as_documented():
    train = expand(load_spec(ROOT / "tune_configs" / "camels_train.yaml"))
    assert [[v["arm"] for v in p.variants] for p in train] == [["qa-tune"], ["meta-train"]]
    evaluation = expand(load_spec(ROOT / "tune_configs" / "camels_eval.yaml"))
    assert [p.label for p in evaluation] == [f"search-{a}" for a in ("uniform", "uniform-qa-lt", "ssm", "tfidf", "camels")]
    assert all(p.grid and sorted(v["params"]["lr"] for v in p.variants) == [1.5625e-6, 6.25e-6, 2.5e-5, 1e-4]
               for p in evaluation)
    cluster = {a.name: a for a in load_spec(ROOT / "tune_configs" / "camels_streamingqa.yaml").resolved_arms()}
    assert cluster["meta-train"].params["weight_encoder"] == "distilgpt2"
    assert cluster["qa-tune-gpt2-xl"].model.name == "gpt2-xl"
