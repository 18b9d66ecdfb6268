"""The OPF recipe: cores train through the rebuilt optimizer, the dynamic schedule, restarts,
merge-back to a plain transformers checkpoint, and the spec's validation."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from raysel.methods import get_method
from raysel.methods.opf import decompose, matrix_candidates, merge_all
from raysel.models import ModelError, load_model
from raysel.data.errors import DataError
from raysel.spec import DataSpec, ModelSpec, SpecError, load_spec
from raysel.run_context import LocalRun

BASE = {"max_steps": 6, "batch_size": 8, "eval_every": 3, "middle_cores": 2, "lr": 1e-3, "mpo_lr": 1e-3,
        "save_merged": False}


class KeepingRun(LocalRun):
    """A LocalRun that keeps a copy of every checkpoint (to restart from an earlier one)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.states: dict[int, dict] = {}

    def report(self, step: int, **metrics: float) -> None:
        if self._pending_state is not None:
            self.states[step] = copy.deepcopy(self._pending_state)
        super().report(step, **metrics)


def opf_trial(tmp_path, run_cls=LocalRun, saved_state=None, **params):
    run = run_cls(seed=13, model=ModelSpec(name="tiny-bert"), data=DataSpec(name="pydocs-topics", k=4),
                  device=torch.device("cpu"), artifact_dir=tmp_path / "trial")
    run.saved_state = saved_state
    method = get_method("opf")
    final = method.train_loop(method.Params.model_validate({**BASE, **params}), run)
    return final, run


def test_the_cores_train_and_the_merged_checkpoint_is_a_plain_transformers_model(tmp_path):
    """With the rest of the model frozen (lr ≈ 0) only the cores can move the decomposed matrices:
    the reference's optimizer, built before decomposing, would leave them exactly as they were."""
    final, run = opf_trial(tmp_path, top_n=1, weight_types=["FFN_1"], lr=1e-12, mpo_lr=1e-2, save_merged=True)
    assert final["mpo_matrices"] == 1 and final["over_parameterization"] > 1
    assert final["merge_max_abs_diff"] <= 1e-5 and final["latency_ratio_merged_vs_original"] > 0
    trained = AutoModelForSequenceClassification.from_pretrained(run.artifact_dir / "merged")
    original, _ = load_model("tiny-bert", "sequence_classification", num_labels=5)
    moved = sorted(float((trained.get_submodule(name).weight - original.get_submodule(name).weight).abs().max().detach())
                   for name in (f"bert.encoder.layer.{i}.intermediate.dense" for i in (0, 1)))
    assert moved[1] > 1e-3  # the decomposed matrix trained through its cores
    assert moved[0] < 1e-6  # the other one stayed (lr 1e-12)


def test_merge_round_trip_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    model, _ = load_model("tiny-bert", "sequence_classification", num_labels=3)
    model.eval()
    names = [n for layers in matrix_candidates(model, ["FFN_1", "FFN_2", "attention"]).values()
             for group in layers.values() for n in group]
    decompose(model, names)
    with torch.no_grad():  # as if trained: every core moves
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ids = torch.randint(5, 2000, (3, 12))
    over_parameterized = model(input_ids=ids).logits
    merge_all(model)
    model.save_pretrained(tmp_path / "merged")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, over_parameterized, rtol=0, atol=1e-5)


def test_dynamic_schedule_decomposes_more_at_the_scheduled_epoch(tmp_path):
    # 20 train examples (k = 4, 5 labels), batch 8: 3 steps an epoch; 9 steps = 3 epochs;
    # top_n 2, split_num 2: one layer per type at epoch 0 (step 1), one more at epoch ceil(3/2) = 2 (step 7)
    final, run = opf_trial(tmp_path, top_n=2, split_num=2, weight_types=["FFN_1", "FFN_2"], max_steps=9)
    counts = {r["step"]: r["mpo_matrices"] for r in run.results if r["step"] >= 1}
    assert [counts[s] for s in sorted(counts)] == [2] * 6 + [4] * 3
    assert final["mpo_matrices"] == 4


def test_a_restarted_trial_rebuilds_its_mpo_layers_and_continues_identically(tmp_path):
    params = dict(top_n=2, split_num=2, weight_types=["FFN_1"], max_steps=9)
    full, first = opf_trial(tmp_path / "a", run_cls=KeepingRun, **params)
    again, second = opf_trial(tmp_path / "b", saved_state=first.states[6], **params)
    losses = [r["train_loss"] for r in first.results if r["step"] >= 1]
    resumed = [r["train_loss"] for r in second.results if r["step"] >= 1]
    assert resumed == pytest.approx(losses[6:], rel=1e-5)  # steps 7..9, the second round included
    assert again["dev_accuracy"] == full["dev_accuracy"]


def test_opf_specs_are_checked_before_anything_runs(tmp_path):
    spec = {"name": "o", "method": "opf", "model": {"name": "tiny-bert"}, "data": {"name": "pydocs-topics", "k": 4},
            "protocol": {"kind": "seeds", "seeds": [13], "metric": "dev_accuracy", "mode": "max"}}
    with pytest.raises(SpecError, match="divisible"):
        load_spec({**spec, "params": {"top_n": 3, "split_num": 2}})
    with pytest.raises(SpecError, match="choose from FFN_1, FFN_2, attention"):
        load_spec({**spec, "params": {"weight_types": ["FFN_3"]}})
    from raysel.sweep import preflight

    bad_shapes = load_spec({**spec, "params": {"weight_types": ["FFN_1"],
                                                "shapes": {"FFN_1": {"in": [8, 8], "out": [16, 4]}}}})
    with pytest.raises(ModelError, match=r"shapes.FFN_1: in \[8, 8\] × out \[16, 4\] must multiply to 64 × 128"):
        preflight(bad_shapes)
    # 20 examples in batches of 8: 3 steps per epoch, so 6 steps are 2 epochs: no room for 3 rounds
    too_short = load_spec({**spec, "params": {"top_n": 3, "split_num": 3, "max_steps": 6, "batch_size": 8}})
    with pytest.raises(DataError, match=r"opf \(seed 13\): split_num 3 with 2 epochs decomposes at epochs \[0, 1\], "
                                        r"2 rounds instead of 3.*max_steps 6 is 2 epoch\(s\) of this training set"):
        preflight(too_short)


def test_an_opf_search_then_seeds_sweep_on_ray_logs_the_merged_model(tmp_path, ray_session):
    """OPF against standard fine-tuning through Ray Tune + Optuna + MLflow: a tiny search+seeds sweep."""
    import mlflow

    import raysel

    train = {**BASE, "task": "classification", "max_steps": 6}
    spec = {"name": "opf-small", "model": {"name": "tiny-bert"}, "data": {"name": "pydocs-topics", "k": 4},
            "arms": [{"name": "opf", "method": "opf",
                      "params": {**train, "save_merged": True, "weight_types": ["FFN_1", "attention"], "top_n": 2},
                      "search_space": {"split_num": {"distribution": "categorical", "choices": [1, 2]},
                                       "mpo_lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}}},
                     {"name": "standard", "method": "standard", "params": {k: v for k, v in train.items()
                                                                           if k not in ("middle_cores", "mpo_lr",
                                                                                        "save_merged")},
                      "search_space": {"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}}}],
            "protocol": {"kind": "search+seeds", "num_samples": 2, "seeds": [13], "metric": "dev_accuracy",
                         "mode": "max", "report_metric": "test_accuracy"},
            "resources": {"max_concurrent_trials": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results")}
    result = raysel.run_sweep(spec, progress=False)
    assert result.num_errors == 0 and len(result.trials) == 2 * 2 + 2
    seeds = result.trials[(result.trials["stage"] == "seeds") & (result.trials["arm"] == "opf")]
    assert (seeds["mpo_matrices"] > 0).all() and (seeds["merge_max_abs_diff"] <= 1e-5).all()
    client = mlflow.MlflowClient(result.tracking_uri)
    run_id = seeds.iloc[0]["mlflow_run_id"]
    assert {a.path for a in client.list_artifacts(run_id, "merged")} >= {"merged/config.json",
                                                                         "merged/model.safetensors"}
