"""The kernel recipe (raysel.methods.kernel.Kernel), prompt-based fine-tuning, and their sweeps:
kernels cached and reused, kernel blocks split over Ray Train workers, per-seed solver selection."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import raysel
from raysel.data.prompts import encode, prompt_for
from raysel.data.sources import classification_splits
from raysel.methods import get_method, kernel
from raysel.methods.kernel import KernelParams
from raysel.methods.standard import Standard, StandardParams
from raysel.metrics import accuracy, binary_f1
from raysel.models import load_model
from raysel.models.prompt import PromptClassifier
from raysel.spec import DataSpec, ModelSpec, SpecError, load_spec
from raysel.tracking import NullLogger
from raysel.run_context import LocalRun

WORDS = ["string", "data", "time", "file", "number"]  # single tokens of the tiny models' 2000-word vocabulary
TINY = {"label_words": WORDS, "max_length": 48}


class Recorder(NullLogger):
    """A tracking logger that keeps what the trial sent (LocalRun's default drops it)."""

    def __init__(self):
        self.tags: dict[str, str] = {}
        self.artifacts: list[tuple[Path, str | None]] = []

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((Path(path), artifact_path))


def kernel_trial(tmp_path, name: str, seed: int = 13, data: dict | None = None, **params):
    recorder = Recorder()
    run = LocalRun(seed=seed, model=ModelSpec(name="tiny-bert"),
                   data=DataSpec(**{"name": "pydocs-topics", "k": 4, **(data or {})}),
                   artifact_dir=tmp_path / "artifacts" / name, shared_dir=tmp_path / "shared", logger=recorder)
    method = get_method("kernel")
    final = method.train_loop(method.Params.model_validate({**TINY, **params}), run)
    return final, recorder


def test_kernels_are_the_ntk_of_the_prompted_split_and_later_trials_reuse_them(tmp_path):
    first, rec1 = kernel_trial(tmp_path, "a")
    second, rec2 = kernel_trial(tmp_path, "b", solver="logistic")
    assert rec1.tags["kernel.source"] == "built" and rec2.tags["kernel.source"] == "reused:a"
    assert rec1.tags["kernel.key"] == rec2.tags["kernel.key"]
    assert [a for _, a in rec1.artifacts] == ["kernel"] and not rec2.artifacts
    assert first["n_train"] == 20 and first["n_dev"] == 20 and first["n_test"] == 195
    assert first["kernel_seconds"] == second["kernel_seconds"]  # the same kernels, not recomputed

    (saved_file,) = (tmp_path / "shared").glob("kernel-*/kernels.pt")
    saved = torch.load(saved_file, weights_only=False)
    splits = classification_splits(DataSpec(name="pydocs-topics", k=4), seed=13)
    model, tokenizer = load_model("tiny-bert", "masked_lm")
    words = kernel.label_word_ids(tokenizer, WORDS)
    prompt = prompt_for("pydocs-topics")
    train = encode(tokenizer, prompt, [(t, None) for t, _ in splits.train], 48)
    # an independent path on some of the entries (an entry depends on its two examples only): one
    # example at a time, dense embedding gradients, no length sorting
    rows, columns = [0, 7, 19], [0, 3, 20, 101, 214]
    eval_rows = [(splits.dev + splits.test)[j] for j in columns]
    some_train = encode(tokenizer, prompt, [(splits.train[i][0], None) for i in rows], 48)
    some_evals = encode(tokenizer, prompt, [(t, None) for t, _ in eval_rows], 48)
    slow = dict(logits_fn=kernel.prompt_logits_fn(model, words), chunk_size=1, vectorize=False, sparse_rows=False)
    scale = float(saved["k_train"].abs().max())
    close = dict(rtol=1e-5, atol=1e-6 * scale)  # float32 Jacobians
    torch.testing.assert_close(saved["k_train"][rows][:, :, rows], kernel.ntk(model, some_train, **slow), **close)
    torch.testing.assert_close(saved["k_eval"][rows][:, :, columns], kernel.ntk(model, some_train, some_evals, **slow),
                               **close)
    assert saved["k_train"].shape == (20, 5, 20, 5) and saved["k_eval"].shape == (20, 5, 215, 5)
    # the reported accuracy is the solver's on those kernels
    test_labels = torch.tensor([label for _, label in splits.test])
    prediction = kernel.solve(saved["k_train"], saved["y_train"], saved["k_eval"][:, :, 20:], solver="lstsq")
    assert first["test_accuracy"] == pytest.approx(accuracy(prediction.labels, test_labels))
    # f0: the logits at θ0 (what adjust_for_init subtracts)
    with torch.no_grad():
        f0 = PromptClassifier(model.eval(), words)(**{k: v[:3] for k, v in train.items()}).logits
    torch.testing.assert_close(saved["f0"]["train"][:3], f0.double(), rtol=1e-5, atol=1e-6)


def test_other_kernel_settings_and_seeds_get_their_own_kernels(tmp_path):
    kernel_trial(tmp_path, "a")
    _, other_seed = kernel_trial(tmp_path, "b", seed=21)
    _, other_formula = kernel_trial(tmp_path, "c", formula="signgd")
    _, same = kernel_trial(tmp_path, "d", reg=0.1, adjust_for_init=True)
    assert other_seed.tags["kernel.source"] == other_formula.tags["kernel.source"] == "built"
    assert same.tags["kernel.source"] == "reused:a"
    assert len(list((tmp_path / "shared").glob("kernel-*/kernels.pt"))) == 3


def test_asymmetric_signgd_on_a_binary_label_subset(tmp_path):
    final, rec = kernel_trial(tmp_path, "a", data={"labels": ["text", "math"]}, label_words=["string", "number"],
                              binary_classification=True, formula="asymmetric_signgd", solver="asym")
    assert final["n_train"] == 8 and final["n_test"] == 78 and 0 <= final["test_accuracy"] <= 1
    assert final["params_trained"] == 0  # the compute columns: a kernel fit trains no weights
    (saved_file,) = (tmp_path / "shared").glob("kernel-*/kernels.pt")
    saved = torch.load(saved_file, weights_only=False)
    assert saved["k_train"].shape == (2, 8, 1, 8, 1) and saved["k_eval"].shape == (2, 8, 1, 8 + 78, 1)
    # the label subset keeps the 5-class split's examples of those labels (in order), relabelled 0/1
    full = classification_splits(DataSpec(name="pydocs-topics", k=4), seed=13)
    subset = classification_splits(DataSpec(name="pydocs-topics", k=4, labels=["text", "math"]), seed=13)
    assert subset.train == [(t, 0 if y == 0 else 1) for t, y in full.train if y in (0, 4)]
    assert subset.labels == ("text", "math") and subset.source_labels == full.labels


def test_bad_settings_are_refused_before_any_compute(tmp_path):
    with pytest.raises(ValueError, match="asymmetric_signgd goes with solver asym"):
        KernelParams(formula="asymmetric_signgd", binary_classification=True)
    with pytest.raises(ValueError, match="binary_classification: true"):
        KernelParams(formula="asymmetric_signgd", solver="asym")
    method = get_method("kernel")
    with pytest.raises(raysel.data.errors.DataError, match="two labels, the data has 5"):
        method.preflight(KernelParams(binary_classification=True, **TINY), ModelSpec(name="tiny-bert"),
                         DataSpec(name="pydocs-topics", k=4), [13])
    with pytest.raises(raysel.data.errors.DataError, match="not a single token"):
        method.preflight(KernelParams(), ModelSpec(name="tiny-bert"), DataSpec(name="pydocs-topics", k=4), [13])
    with pytest.raises(raysel.data.errors.DataError, match="its labels are"):
        method.preflight(KernelParams(**TINY), ModelSpec(name="tiny-bert"),
                         DataSpec(name="pydocs-topics", k=4, labels=["text", "poetry"]), [13])
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nmethod: kernel\nmodel: {name: tiny-bert}\ndata: {name: pydocs-topics, k: 4}\n"
                    "params: {solver: asym}\nprotocol: {kind: seeds, seeds: [13], metric: dev_accuracy, mode: max}\n")
    with pytest.raises(SpecError, match="goes with solver asym"):
        load_spec(spec)


def test_binary_f1_is_the_positive_class_f1():
    assert binary_f1([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(0.8)
    assert binary_f1([0, 0], [0, 0]) == 0.0


# ------------------------------------------------------------------ prompt-based fine-tuning

def test_prompt_classifier_reads_the_mlm_scores_of_the_label_words_at_the_mask():
    mlm, tokenizer = load_model("tiny-bert", "masked_lm")
    mlm.eval()
    words = kernel.label_word_ids(tokenizer, WORDS)
    batch = encode(tokenizer, prompt_for("pydocs-topics"), [("Return a copy of the string.", None),
                                                            ("Open a socket and connect it to the host now", None)])
    with torch.no_grad():
        full = mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = PromptClassifier(mlm, words)(**batch, labels=torch.tensor([0, 1]))
    expected = full[torch.arange(2), batch["mask_pos"]][:, words]
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-6)  # head at the mask only: same numbers
    assert out.loss == pytest.approx(float(torch.nn.functional.cross_entropy(expected, torch.tensor([0, 1]))),
                                     rel=1e-5)


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adamw", 3e-3)])
def test_prompt_fine_tuning_with_sgd_and_adam_fits_the_k_shot_train_set(tmp_path, optimizer, lr):
    run = LocalRun(seed=13, model=ModelSpec(name="tiny-bert"), data=DataSpec(name="pydocs-topics", k=4),
                   artifact_dir=tmp_path / optimizer)
    params = StandardParams(task="prompt", label_words=WORDS, optimizer=optimizer, lr=lr, max_steps=60,
                            batch_size=20, eval_every=60, max_length=48, max_grad_norm=None)
    Standard().preflight(params, run.model, run.data, [13])
    Standard().train_loop(params, run)
    losses = [r["train_loss"] for r in run.results if "train_loss" in r]
    # it learns its 20 examples through the label words' scores (from ln 5 at the start)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert {"dev_accuracy", "test_accuracy"} <= set(run.results[-1])


# ------------------------------------------------------------------ sweeps on Ray

def kernel_spec(tmp_path, **sections) -> dict:
    return {"name": "kernel-small", "method": "kernel", "params": dict(TINY),
            "model": {"name": "tiny-bert"}, "data": {"name": "pydocs-topics", "k": 4},
            "protocol": {"kind": "per_seed_grid", "seeds": [13, 21], "metric": "dev_accuracy", "mode": "max",
                         "report_metric": "test_accuracy"},
            "search_space": {"solver": {"distribution": "categorical", "choices": ["lstsq", "logistic", "svc"]}},
            "resources": {"max_concurrent_trials": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results"),
            **sections}


def test_per_seed_solver_grid_selects_on_dev_and_builds_each_seeds_kernels_once(tmp_path, ray_session):
    result = raysel.run_sweep(kernel_spec(tmp_path), progress=False)
    assert result.num_errors == 0 and len(result.trials) == 6
    shared = tmp_path / "results" / "kernel-small" / "artifacts" / "shared"
    assert len(list(shared.glob("kernel-*/kernels.pt"))) == 2  # one per data seed, for three solvers each
    trials = result.trials
    expected = []
    for seed in (13, 21):
        group = trials[trials["seed"] == seed]
        expected.append(group.sort_values("dev_accuracy", ascending=False, kind="stable").iloc[0]["test_accuracy"])
    row = result.summary.iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(sum(expected) / 2)
    assert row["std"] == pytest.approx(abs(expected[0] - expected[1]) / 2)  # population std, as LM-BFF


def test_kernel_blocks_split_across_ray_train_workers_equal_one_workers_kernel(tmp_path, ray_session):
    spec = kernel_spec(tmp_path, name="kernel-ddp", resources={"workers": 2, "max_concurrent_trials": 1},
                       protocol={"kind": "seeds", "seeds": [13], "metric": "dev_accuracy", "mode": "max"})
    spec.pop("search_space")
    result = raysel.run_sweep(spec, progress=False)
    assert result.num_errors == 0 and result.trials.iloc[0]["kernel_workers"] == 2
    (saved_file,) = (tmp_path / "results" / "kernel-ddp" / "artifacts" / "shared").glob("kernel-*/kernels.pt")
    saved = torch.load(saved_file, weights_only=False)
    _, recorder = kernel_trial(tmp_path / "single", "one")
    (single_file,) = (tmp_path / "single" / "shared").glob("kernel-*/kernels.pt")
    single = torch.load(single_file, weights_only=False)
    # every block computed once, by one worker (exact assembly: test_kernel.py's shard test); across
    # processes only float32 summation order differs (torch's thread count in a worker vs here)
    for name in ("k_train", "k_eval"):
        scale = float(single[name].abs().max())
        torch.testing.assert_close(saved[name], single[name], rtol=1e-6, atol=1e-6 * scale)


def test_kernels_prebuilt_without_ray_are_found_through_a_relative_kernel_cache(tmp_path, ray_session,
                                                                                monkeypatch):
    """launch/prebuild_kernels.py (no Ray, e.g. on a GPU box) fills a cache; the sweep's trials, which
    Ray starts in their own directories, find it through the path relative to where the sweep began."""
    import runpy

    import yaml

    monkeypatch.chdir(tmp_path)
    spec = kernel_spec(tmp_path, name="kernel-prebuilt")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    prebuild = runpy.run_path(str(Path(__file__).parents[1] / "launch" / "prebuild_kernels.py"))
    prebuild["main"](["spec.yaml", "--cache", "kernels"])
    built = {f.parent.name: torch.load(f, weights_only=False) for f in Path("kernels").glob("kernel-*/kernels.pt")}
    assert len(built) == 2  # one per data seed; the solver grid shares them

    result = raysel.run_sweep({**spec, "params": {**spec["params"], "kernel_cache": "kernels"}}, progress=False)
    assert result.num_errors == 0 and len(result.trials) == 6
    assert not list((tmp_path / "results" / "kernel-prebuilt" / "artifacts" / "shared").glob("kernel-*"))
    assert set(result.trials["kernel_seconds"]) == {saved["seconds"] for saved in built.values()}
    # the key holds the examples: a cache filled from other texts (another Python's built-ins) is not used
    params, model, data = KernelParams(**TINY), ModelSpec(name="tiny-bert"), DataSpec(name="pydocs-topics", k=4)
    rows = [[("some text", 0)], [], []]
    assert params.kernel_key(model, data, 13, rows) != params.kernel_key(model, data, 13, [[("other text", 0)], [], []])
