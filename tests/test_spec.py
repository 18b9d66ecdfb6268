"""Spec loading, overrides and validation: one test per class of bad input, each naming the field."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raysel.spec import SEED_PRESETS, SpecError, load_spec, parse_value

ROOT = Path(__file__).resolve().parents[1]


def base() -> dict:
    return {
        "name": "s",
        "method": "standard",
        "params": {"max_steps": 10},
        "search_space": {"lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3}},
        "protocol": {"kind": "search", "metric": "dev_perplexity", "mode": "min"},
    }


def problems(raw: dict, overrides=None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(raw, overrides)
    return info.value.problems


def test_a_valid_spec_loads_with_defaults():
    spec = load_spec(base())
    assert spec.resolved_arms()[0].name == "standard"
    assert spec.resources.workers == 0
    assert spec.tracking.uri == "sqlite:///mlflow.db"
    assert spec.protocol.seed_list == list(range(50))  # the 50-run protocol by default


@pytest.mark.parametrize("path", sorted((ROOT / "tune_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    spec = load_spec(path)
    assert spec.name and spec.resolved_arms()
    assert path.read_text().startswith("#"), "configs open with a comment showing the command"


def test_unknown_method_lists_the_valid_ones():
    (msg,) = problems({**base(), "method": "igff"})
    assert msg.startswith("method:") and "'igff'" in msg and "standard" in msg


def test_misspelt_keys_are_named():
    raw = base()
    raw["protocoll"] = {}
    raw["params"]["max_step"] = 3
    found = problems(raw)
    assert any(p.startswith("protocoll: unknown key") for p in found)
    assert any(p.startswith("params.max_step") and "no parameter" not in p for p in found) or \
        any("max_step" in p for p in found)


def test_negative_lr_in_params_and_in_search_space():
    raw = base()
    raw["params"]["lr"] = -1e-4
    raw["search_space"] = {"weight_decay": {"distribution": "uniform", "low": -0.1, "high": 0.1}}
    found = problems(raw)
    assert any(p.startswith("params.lr") and "greater than 0" in p for p in found)
    assert any(p.startswith("search_space.weight_decay") and "-0.1" in p for p in found)


def test_empty_search_space_for_a_search_protocol():
    raw = base()
    raw["search_space"] = {}
    (msg,) = problems(raw)
    assert msg.startswith("search_space: empty") and "loguniform" in msg


def test_unknown_distribution_lists_the_allowed_ones():
    raw = base()
    raw["search_space"] = {"lr": {"distribution": "lognormal", "low": 1e-5, "high": 1e-3}}
    (msg,) = problems(raw)
    assert msg.startswith("search_space.lr") and "'lognormal'" in msg and "categorical" in msg


def test_distribution_bounds_are_checked():
    raw = base()
    raw["search_space"] = {"lr": {"distribution": "loguniform", "low": 0.0, "high": 1e-3},
                           "max_steps": {"distribution": "int", "low": 20, "high": 10},
                           "warmup_steps": {"distribution": "categorical", "choices": []}}
    found = problems(raw)
    assert any(p.startswith("search_space.lr.low") and "low > 0" in p for p in found)
    assert any(p.startswith("search_space.max_steps") and "below high" in p for p in found)
    assert any(p.startswith("search_space.warmup_steps.choices") for p in found)


def test_search_space_key_must_be_a_parameter():
    raw = base()
    raw["search_space"]["learning_rate"] = {"distribution": "uniform", "low": 0.1, "high": 0.2}
    (msg,) = problems(raw)
    assert msg.startswith("search_space.learning_rate") and "allowed:" in msg and "lr" in msg


def test_cross_field_rules_of_a_method():
    raw = base()
    raw["params"].update(warmup_steps=10, max_steps=10)
    (msg,) = problems(raw)
    assert msg.startswith("params") and "warmup_steps (10) must be below max_steps (10)" in msg


def test_literal_fields_say_what_is_allowed():
    raw = base()
    raw["protocol"]["kind"] = "grid"
    raw["params"]["task"] = "regression"
    found = problems(raw)
    assert any(p.startswith("protocol.kind") and "'per_seed_grid'" in p for p in found)
    assert any(p.startswith("params.task") and "'classification'" in p for p in found)


def test_protocol_specific_rules():
    raw = base()
    raw["protocol"] = {"kind": "seeds", "metric": "test_perplexity", "mode": "min", "seeds": [1, 1]}
    found = problems(raw)
    assert any(p.startswith("protocol.seeds") for p in found)
    assert any("protocol 'seeds' runs a fixed config" in p for p in found)
    raw["protocol"] = {"kind": "per_seed_grid", "metric": "dev_accuracy", "mode": "max", "seeds": "5-seed"}
    (msg,) = problems(raw)
    assert "only categorical and int distributions" in msg


def test_resources_and_tracking_are_checked():
    raw = base()
    raw["resources"] = {"workers": -1, "max_concurrent_trials": 0}
    raw["tracking"] = {"uri": "mlruns"}
    found = problems(raw)
    assert any(p.startswith("resources.workers") for p in found)
    assert any(p.startswith("resources.max_concurrent_trials") for p in found)
    assert any(p.startswith("tracking.uri") and "sqlite:///" in p for p in found)


@pytest.mark.parametrize("method", ["camels", "opf", "pruning"])
def test_methods_that_run_in_one_process_refuse_several_workers_before_ray_starts(method):
    raw = {"name": "w", "arms": [{"name": "one", "method": method}], "resources": {"workers": 2},
           "protocol": {"kind": "seeds", "metric": "m", "mode": "min"}}
    (msg,) = problems(raw)
    assert msg == (f"resources.workers: 2, but arm 'one' (method {method!r}) runs on at most 1 worker(s) per trial; "
                   "allowed: 0 (the trial's own process) to 1")
    raw["resources"]["workers"] = 1
    assert load_spec(raw).resources.workers == 1


def test_all_problems_are_reported_at_once():
    raw = base()
    raw["method"] = "nope"
    raw["resources"] = {"workers": -2}
    raw["tracking"] = {"uri": "x"}
    assert len(problems(raw)) >= 2


def test_arms_share_seeds_and_have_distinct_names():
    raw = {"name": "a", "protocol": {"kind": "seeds", "seeds": [0, 1], "metric": "m", "mode": "min"},
           "arms": [{"name": "x", "method": "standard", "params": {"lr": 1e-4}},
                    {"name": "x", "method": "standard", "params": {"lr": 1e-3}}]}
    (msg,) = problems(raw)
    assert msg.startswith("arms: names must be distinct")
    raw["arms"][1]["name"] = "y"
    spec = load_spec(raw)
    assert [a.params["lr"] for a in spec.resolved_arms()] == [1e-4, 1e-3]


def test_overrides_by_dotted_path():
    spec = load_spec(base(), ["protocol.num_samples=3", "params.lr=1e-4", "protocol.kind=search+seeds",
                              "protocol.seeds=[1,2]", "resources.max_concurrent_trials=2"])
    assert spec.protocol.num_samples == 3 and spec.params["lr"] == 1e-4
    assert spec.protocol.seed_list == [1, 2]
    assert load_spec(base(), {"protocol.seeds": "5-seed"}).protocol.seed_list == SEED_PRESETS["5-seed"]


def test_bad_overrides_are_spec_errors():
    assert "KEY=VALUE" in problems(base(), ["params.lr"])[0]
    assert problems(base(), ["params.lrr=1"])[0].startswith("params")
    assert "index" in problems({**base(), "arms": []}, ["arms.3.name=x"])[0]


def test_parse_value_reads_yaml_and_exponent_floats():
    assert parse_value("1e-4") == 1e-4 and isinstance(parse_value("1e-4"), float)
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("gpt2") == "gpt2"


def test_files_missing_or_not_yaml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(bad)


def test_the_file_name_is_the_default_sweep_name(tmp_path):
    path = tmp_path / "my-sweep.yaml"
    raw = base()
    del raw["name"]
    path.write_text(yaml.safe_dump(raw))
    assert load_spec(path).name == "my-sweep"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysel.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_cli_exits_2_with_one_message_and_starts_nothing(tmp_path):
    raw = base()
    raw["params"]["lr"] = -1
    raw["storage_path"] = str(tmp_path / "results")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    for command in ("validate", "sweep"):
        done = _cli(command, str(path), cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "params.lr" in done.stderr and "greater than 0" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
    assert not list(tmp_path.glob("ray*"))


def test_cli_validate_accepts_a_good_spec_with_overrides(tmp_path):
    done = _cli("validate", str(ROOT / "tune_configs" / "quickstart.yaml"), "--set", "protocol.num_samples=2",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 trial(s)" in done.stdout.replace("\n", " ")


def test_arms_runs_only_the_named_arms_in_the_specs_order(tmp_path):
    kernel = ROOT / "tune_configs" / "kernel_5seed.yaml"
    spec = load_spec(kernel, arms=["kernel-asignsgd-binary", "kernel-sgd"])
    assert [a.name for a in spec.resolved_arms()] == ["kernel-sgd", "kernel-asignsgd-binary"]
    assert load_spec(kernel, ["data.k=64"], arms=["kernel-sgd"]).resolved_arms()[0].data.k == 64
    done = _cli("validate", str(kernel), "--arms", "kernel-sgd,adam-ft", cwd=tmp_path)
    assert done.returncode == 0 and "arms ['kernel-sgd', 'adam-ft']" in done.stdout.replace("\n", " "), done.stderr
    with pytest.raises(SpecError, match=r"--arms: 'nope' not in the spec; its arms: kernel-sgd, sgd-ft, adam-ft, "):
        load_spec(kernel, arms=["kernel-sgd", "nope"])
    with pytest.raises(SpecError, match=r"arm 'winning-ticket' runs after 'score', which --arms leaves out"):
        load_spec(ROOT / "tune_configs" / "pruning.yaml", arms=["winning-ticket"])
    done = _cli("sweep", str(kernel), "--arms", "nope", "--set", f"storage_path={tmp_path / 'results'}", cwd=tmp_path)
    assert done.returncode == 2 and "--arms: 'nope' not in the spec" in done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("section,value,expected", [
    ("model", {"name": "gpt2"}, "HF_HUB_OFFLINE is set"),
    ("model", {"name": "minilm"}, "cannot do task 'causal_lm'"),
    ("data", {"name": "/no/such/corpus.txt"}, "corpus.txt"),
])
def test_cli_rejects_a_model_or_data_that_cannot_load_before_ray_starts(tmp_path, section, value, expected):
    raw = {"name": "pre", "method": "standard", "params": {"max_steps": 2},
           "protocol": {"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"},
           "storage_path": str(tmp_path / "results"), section: value}
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = _cli("sweep", str(path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr.replace("\n", " ") and "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("command", ["sweep", "validate", "list", "report", "prepare", "quickstart"])
def test_every_command_has_help_with_examples(command, capsys):
    from raysel.cli import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_list_shows_methods_protocols_configs_and_builtins(capsys):
    from raysel.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for expected in ("standard", "per_seed_grid", "quickstart.yaml", "tiny-gpt2", "minilm", "pydocs-topics"):
        assert expected in out


def test_x_keys_hold_yaml_anchors_shared_by_arms(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("x-common: &common {task: causal_lm, max_steps: 7}\n"
                    "arms:\n"
                    "  - {name: a, method: standard, params: {<<: *common, lr: 1.0e-4}}\n"
                    "  - {name: b, method: standard, params: {<<: *common, lr: 1.0e-3}}\n"
                    "protocol: {kind: seeds, seeds: [0], metric: test_perplexity, mode: min}\n")
    spec = load_spec(path)
    assert [a.params for a in spec.arms] == [{"task": "causal_lm", "max_steps": 7, "lr": 1e-4},
                                             {"task": "causal_lm", "max_steps": 7, "lr": 1e-3}]


def test_an_arms_data_and_model_are_laid_over_the_specs_field_by_field():
    raw = {"name": "a", "model": {"name": "minilm"}, "data": {"name": "pydocs-topics", "k": 16},
           "protocol": {"kind": "seeds", "seeds": [13], "metric": "dev_accuracy", "mode": "max"},
           "arms": [{"name": "five", "method": "standard", "params": {"task": "classification"}},
                    {"name": "two", "method": "standard", "params": {"task": "classification"},
                     "data": {"labels": ["text", "math"]}},
                    {"name": "other", "method": "standard", "params": {"task": "classification"},
                     "data": {"name": "/data/k-shot/SST-2"}, "model": {"name": "tiny-bert"}}]}
    arms = {a.name: a for a in load_spec(raw, ["data.k=64"]).resolved_arms()}
    assert arms["five"].data.k == arms["two"].data.k == arms["other"].data.k == 64
    assert arms["two"].data.name == "pydocs-topics" and arms["two"].data.labels == ["text", "math"]
    assert arms["five"].data.labels is None and arms["five"].model.name == "minilm"
    assert arms["other"].data.name == "/data/k-shot/SST-2" and arms["other"].model.name == "tiny-bert"
