"""Bad input through the CLI: malformed specs, data files, model paths and unreachable services each
give one clear error line before anything starts (no Ray, no MLflow run, no traceback), exit code 2.

The README's "Bad input" table is this file's output:  python tests/test_bad_input.py
"""
from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from mlflow_helpers import free_port

GOOD_PARAMS = {"task": "causal_lm", "max_steps": 2, "eval_every": 1, "context_len": 16, "batch_size": 2,
               "eval_examples": 4}


def spec(tmp: Path, **changes: Any) -> dict:
    """A valid small spec; ``changes`` replace or (with None) remove top-level sections."""
    base = {"name": "bad", "method": "standard", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "pydocs"},
            "params": dict(GOOD_PARAMS),
            "protocol": {"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"},
            "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"}, "storage_path": str(tmp / "results")}
    for key, value in changes.items():
        if value is None:
            base.pop(key)
        else:
            base[key] = value
    return base


@dataclass
class Case:
    what: str  # the README table's first column
    expected: str  # a substring of the error line
    make: Callable[[Path], Any]  # writes what the case needs; returns the spec (dict or YAML text) or argv
    args: list[str] = field(default_factory=list)  # more CLI arguments after the spec


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def lm_bff_dir(tmp: Path, test_label: str = "1") -> str:
    task = tmp / "task"
    for split in ("train", "dev"):
        write(task, f"{split}.tsv", "sentence\tlabel\nok text\t0\nmore text\t1\n")
    write(task, "test.tsv", f"sentence\tlabel\nodd text\t{test_label}\n")
    return str(task)


def qa_dir(tmp: Path, header: str = "text,question,answers", row: str = 'doc,q?,a') -> str:
    for split in ("train", "val", "test"):
        write(tmp / "qa", f"{split}.csv", f"{header}\n{row}\n")
    return str(tmp / "qa")


def camels(tmp: Path, data: str, **params: Any) -> dict:
    return spec(tmp, method="camels", data={"name": data}, params={"phase": "evaluate", **params},
                protocol={"kind": "seeds", "seeds": [0], "metric": "val_f1", "mode": "max"})


def binary_spec(tmp: Path) -> Path:
    path = tmp / "spec.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    return path


CASES = [
    # ---- the spec file and its fields
    Case("spec file that does not exist", "does not exist", lambda t: t / "nope.yaml"),
    Case("spec that is not YAML", "not valid YAML", lambda t: "name: [unclosed\nmethod: standard"),
    Case("spec that is a YAML list", "must hold a mapping", lambda t: "- name: x\n- method: standard"),
    Case("unknown top-level key", "paramz: unknown key (misspelt?)", lambda t: {**spec(t), "paramz": {}}),
    Case("unknown method", "method: unknown method 'sgd-plus'", lambda t: spec(t, method="sgd-plus")),
    Case("unknown method parameter", "params.learning_rate: unknown key",
         lambda t: spec(t, params={**GOOD_PARAMS, "learning_rate": 1e-4})),
    Case("parameter of the wrong type", "params.max_steps: Input should be a valid integer",
         lambda t: spec(t, params={**GOOD_PARAMS, "max_steps": "ten"})),
    Case("parameter out of range", "params.lr: Input should be greater than 0",
         lambda t: spec(t, params={**GOOD_PARAMS, "lr": -1})),
    Case("parameters that contradict each other", "warmup_steps (5) must be below max_steps (2)",
         lambda t: spec(t, params={**GOOD_PARAMS, "warmup_steps": 5})),
    Case("no protocol", "protocol: required field is missing", lambda t: spec(t, protocol=None)),
    Case("protocol mode not min/max", "protocol.mode: 'best' is not allowed",
         lambda t: spec(t, protocol={"kind": "seeds", "metric": "m", "mode": "best"})),
    Case("search protocol without a search space", "search_space: empty; protocol 'search' needs",
         lambda t: spec(t, protocol={"kind": "search", "metric": "m", "mode": "min"})),
    Case("unknown distribution", "unknown distribution 'normal'",
         lambda t: {**spec(t, protocol={"kind": "search", "metric": "m", "mode": "min"}),
                    "search_space": {"lr": {"distribution": "normal", "low": 0, "high": 1}}}),
    Case("loguniform from 0", "a loguniform distribution needs low > 0",
         lambda t: {**spec(t, protocol={"kind": "search", "metric": "m", "mode": "min"}),
                    "search_space": {"weight_decay": {"distribution": "loguniform", "low": 0, "high": 1}}}),
    Case("distribution low above high", "low (0.1) must be below high (0.01)",
         lambda t: {**spec(t, protocol={"kind": "search", "metric": "m", "mode": "min"}),
                    "search_space": {"lr": {"distribution": "uniform", "low": 0.1, "high": 0.01}}}),
    Case("search space value invalid for the method", "(search-space value -0.5)",
         lambda t: {**spec(t, protocol={"kind": "search", "metric": "m", "mode": "min"}),
                    "search_space": {"lr": {"distribution": "uniform", "low": -0.5, "high": 0.1}}}),
    Case("a distribution in a fixed-config protocol", "protocol 'seeds' runs a fixed config",
         lambda t: {**spec(t), "search_space": {"lr": {"distribution": "uniform", "low": 0.1, "high": 0.2}}}),
    Case("repeated seeds", "protocol.seeds: must be a non-empty list of distinct integers",
         lambda t: spec(t, protocol={"kind": "seeds", "seeds": [1, 1], "metric": "m", "mode": "min"})),
    Case("two arms with one name", "arms: names must be distinct",
         lambda t: spec(t, method=None, params=None, arms=[{"name": "a", "method": "standard"}] * 2)),
    Case("arm waiting for an unknown arm", "arms.1.after: 'scroe' is not another arm",
         lambda t: spec(t, method=None, params=None, arms=[{"name": "a", "method": "standard"},
                                                           {"name": "b", "method": "standard", "after": ["scroe"]}])),
    Case("arms waiting for each other", "after: is circular",
         lambda t: spec(t, method=None, params=None, arms=[{"name": "a", "method": "standard", "after": ["b"]},
                                                           {"name": "b", "method": "standard", "after": ["a"]}])),
    Case("report baseline that is not an arm", "report.baseline: 'ful' is not an arm",
         lambda t: {**spec(t), "report": {"baseline": "ful"}}),
    Case("sweep name with a slash", "name: must be letters, digits", lambda t: spec(t, name="a/b")),
    Case("tracking URI that is not a URI", "is not a tracking URI", lambda t: spec(t, tracking={"uri": "mlflow.db"})),
    Case("--set without '='", "expected KEY=VALUE", lambda t: spec(t), ["--set", "params.lr"]),
    Case("--set into a list out of range", "arms has 1 items",
         lambda t: spec(t, method=None, params=None, arms=[{"name": "a", "method": "standard"}]),
         ["--set", "arms.3.params.lr=1"]),
    # ---- data
    Case("data file that does not exist", "nope.txt' does not exist (a path;",
         lambda t: spec(t, data={"name": str(t / "nope.txt")})),
    Case("text file too small to split", "too few articles",
         lambda t: spec(t, data={"name": str(write(t, "tiny.txt", "one article only"))})),
    Case("JSONL without the text field", "text",
         lambda t: spec(t, data={"name": str(write(t, "d.jsonl", '{"body": "x"}\n'))})),
    Case("LM-BFF directory without the k-shot split", "no such k-shot directory",
         lambda t: spec(t, params={"task": "classification"}, model={"name": "tiny-bert"},
                        data={"name": lm_bff_dir(t), "k": 16})),
    Case("LM-BFF test label not among the training labels", "which is not in the train label set",
         lambda t: spec(t, params={"task": "classification"}, model={"name": "tiny-bert"},
                        data={"name": lm_bff_dir(t, test_label="7")})),
    Case("StreamingQA CSV without the answers column", "missing column(s) ['answers']",
         lambda t: camels(t, qa_dir(t, header="text,question,answer"))),
    Case("StreamingQA CSV with an empty answer", "empty 'answers'", lambda t: camels(t, qa_dir(t, row="doc,q?,"))),
    Case("a QA method on an LM corpus", "a QA method needs 'synthetic-facts'", lambda t: camels(t, "pydocs")),
    Case("CaMeLS evaluation before its training sweep", "run the sweep that trains it first",
         lambda t: camels(t, "synthetic-facts", from_sweep=str(t / "no-train-sweep"))),
    Case("a CaMeLS weight encoder cut to more layers than it has",
         "weight_encoder_layers=9, but the weight encoder 'tiny-gpt2-random' has 2 transformer layers; allowed: 1 to 2",
         lambda t: camels(t, "synthetic-facts", phase="meta_train", weight_encoder_layers=9)),
    # ---- models
    Case("model path that does not exist", "does not exist", lambda t: spec(t, model={"name": "./no-model"})),
    Case("model directory without config.json", "has no config.json",
         lambda t: spec(t, model={"name": str(write(t, "m/weights.bin", "x").parent)})),
    Case("misspelt built-in model", "did you mean 'tiny-gpt2'", lambda t: spec(t, model={"name": "tiny-gtp2"})),
    Case("built-in model without the task's head", "cannot do task 'causal_lm'",
         lambda t: spec(t, model={"name": "tiny-bert"})),
    # ---- services and storage
    Case("MLflow server that does not answer", "tracking.uri: no MLflow server answers",
         lambda t: spec(t, tracking={"uri": f"http://127.0.0.1:{free_port()}"})),
    Case("SQLite store in a missing folder", "the folder of the SQLite store",
         lambda t: spec(t, tracking={"uri": f"sqlite:///{t / 'missing' / 'mlflow.db'}"})),
    Case("Ray address where no cluster runs", "ray.address: no Ray cluster answers",
         lambda t: {**spec(t), "ray": {"address": f"127.0.0.1:{free_port()}"}}),
    Case("a sweep name already used, without --resume", "already holds a sweep",
         lambda t: (write(t, "results/bad/sweep.json", "{}"), spec(t))[1]),
    Case("system metrics sampled every 0 seconds", "tracking.system_metrics_interval_s: Input should be greater than 0",
         lambda t: spec(t, tracking={"uri": f"sqlite:///{t / 'mlflow.db'}", "system_metrics": True,
                                     "system_metrics_interval_s": 0})),
    Case("a tracking URI MLflow cannot use", "tracking.uri: 'ftp://x': MLflow cannot track to a 'ftp' URI",
         lambda t: spec(t, tracking={"uri": "ftp://x"})),
    Case("a binary file as the spec", "not a text file: a spec is YAML in UTF-8", binary_spec),
    Case("an arm name longer than MLflow's names allow", "arms.0.name: 300 characters; at most 224 here",
         lambda t: spec(t, method=None, params=None,
                        arms=[{"name": "a" * 300, "method": "standard", "params": GOOD_PARAMS}])),
    Case("a search-space choice that breaks a rule with the fixed params",
         "search_space: the point {'warmup_steps': 2} breaks a rule of 'standard' with the fixed params: "
         "warmup_steps (2) must be below max_steps (2)",
         lambda t: {**spec(t), "protocol": {"kind": "search", "metric": "test_perplexity", "mode": "min"},
                    "search_space": {"warmup_steps": {"distribution": "categorical", "choices": [0, 2]}}}),
    Case("an ASHA setting given to the median stopping rule",
         "scheduler.max_t: not a setting of scheduler 'median'; its settings: grace_period, min_samples_required",
         lambda t: spec(t, scheduler={"kind": "median", "max_t": 10})),
    Case("population based training under the TPE searcher",
         "scheduler.kind: pbt draws its population itself and perturbs the searched params: it needs a protocol "
         "that searches with searcher 'random' (this spec: protocol 'search', searcher 'tpe')",
         lambda t: {**spec(t), "protocol": {"kind": "search", "metric": "test_perplexity", "mode": "min"},
                    "search_space": {"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}},
                    "scheduler": {"kind": "pbt", "perturbation_interval": 2}}),
    Case("an Optuna study storage without its database driver",
         "protocol.study_storage: 'postgresql://u:***@127.0.0.1:1/db': no database driver for it on this machine",
         lambda t: {**spec(t), "protocol": {"kind": "search", "metric": "test_perplexity", "mode": "min",
                                            "study_storage": "postgresql://u:pw@127.0.0.1:1/db"},
                    "search_space": {"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}}}),
    Case("a storage path nothing can be created in", "storage_path: /proc/raysel-nope cannot be used",
         lambda t: spec(t, storage_path="/proc/raysel-nope")),
    Case("a storage path under a file", "is not a directory); give a writable directory",
         lambda t: spec(t, storage_path=str(write(t, "a-file", "x") / "results"))),
    Case("a storage URI of a filesystem pyarrow does not know", "storage_path: ftp://host/results cannot be used "
         "(ArrowInvalid: Unrecognized filesystem type in URI: ftp://host/results); give a URI",
         lambda t: spec(t, storage_path="ftp://host/results")),
    # ---- resources the (local) cluster does not have: Ray would wait for them forever
    Case("more GPUs per worker than any node has", "resources.gpus_per_worker: a worker needs 64 GPU, but no node "
         "has that; a local Ray on this machine has node 1:", lambda t: spec(t, resources={"workers": 1, "gpus_per_worker": 64})),
    Case("more CPUs per trial than any node has", "resources.cpus_per_worker: a trial needs 4096 CPU",
         lambda t: spec(t, resources={"cpus_per_worker": 4096})),
    Case("a custom resource no node has", "resources.custom_per_worker.TPU: a trial needs 1 TPU",
         lambda t: spec(t, resources={"custom_per_worker": {"TPU": 1}})),
    Case("more workers than the cluster holds at once", "resources.workers: 4096 workers x 1 CPU (and the trial's "
         "driver) do not fit on a local Ray on this machine at once", lambda t: spec(t, resources={"workers": 4096})),
]



def run_case(case: Case, tmp: Path) -> tuple[int, str]:
    """Run ``raysel sweep`` on the case; its exit code and what it printed on stderr."""
    from raysel import cli

    made = case.make(tmp)
    if isinstance(made, Path):
        path = made
    else:
        path = tmp / "spec.yaml"
        path.write_text(made if isinstance(made, str) else yaml.safe_dump(made))
    stderr = io.StringIO()
    original = cli.errors
    cli.errors = type(original)(file=stderr, width=10_000)  # one error line, however long
    try:
        with redirect_stderr(stderr):
            code = cli.main(["sweep", str(path), "--no-progress", *case.args])
    finally:
        cli.errors = original
    return code, stderr.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_gives_one_clear_line_and_exit_code_2_before_anything_starts(case, tmp_path):
    import ray

    code, stderr = run_case(case, tmp_path)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and case.expected in lines[0], lines[0]
    assert not ray.is_initialized()  # nothing started
    assert not (tmp_path / "mlflow.db").exists()  # nothing logged half-way


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c.what for c in CASES}) == len(CASES)


if __name__ == "__main__":  # the README table
    import tempfile

    print("| bad input | what `raysel sweep` prints (exit code 2) |\n|---|---|")
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            code, stderr = run_case(case, Path(tmp))
        line = " ".join(stderr.split()).replace(tmp, "/tmp/x").replace("|", "\\|")
        print(f"| {case.what} | `{line}` |" if code == 2 else f"| {case.what} | UNEXPECTED exit {code}: {line} |")
    sys.exit(0)
