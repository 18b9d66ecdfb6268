"""A sweep logged to a real ``mlflow server`` (SQLite backend), checked only through its REST API.

This is the cluster set-up (trials log over HTTP, not into a shared SQLite file): the parent run
per sweep, one child run per trial, flattened params, and metric histories at the loop's own
global steps.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import raysel
from browser_helpers import ARTIFACTS, CHROMIUM, chromium
from mlflow_helpers import Rest

SEEDS = [0, 1]
PARAMS = {"max_steps": 6, "eval_every": 3, "context_len": 32, "batch_size": 8, "eval_examples": 32}


def _kv(entries: list[dict] | None) -> dict[str, str]:
    return {e["key"]: e["value"] for e in entries or []}


def test_sweep_logs_parent_and_child_runs_to_mlflow_server(mlflow_server, ray_session, tmp_path):
    url = mlflow_server.wait_healthy()
    spec = {
        "name": "server-sweep",
        "method": "standard",
        "model": {"name": "tiny-gpt2-random"},
        "data": {"name": "pydocs"},
        "params": dict(PARAMS),
        "protocol": {"kind": "seeds", "seeds": SEEDS, "metric": "test_perplexity", "mode": "min"},
        "tracking": {"uri": url, "system_metrics": True, "system_metrics_interval_s": 1.0},
        "ray": {"num_cpus": 2},
        "storage_path": str(tmp_path / "results"),
    }
    result = raysel.run_sweep(spec, progress=False)
    assert result.num_errors == 0, result.trials.get("error")
    assert result.tracking_uri == url

    rest = Rest(url)
    experiment = rest.experiment_by_name("server-sweep")  # the sweep's name is the default experiment
    runs = rest.search_runs(experiment["experiment_id"])

    parents = [r for r in runs if _kv(r["data"].get("tags")).get("raysel.role") == "sweep"]
    assert len(parents) == 1, [r["info"]["run_id"] for r in runs]
    parent = parents[0]
    parent_id = parent["info"]["run_id"]
    assert parent_id == result.parent_run_id
    assert parent["info"]["status"] == "FINISHED"

    children = [r for r in runs if _kv(r["data"].get("tags")).get("mlflow.parentRunId") == parent_id]
    assert len(children) == len(SEEDS) == len(runs) - 1, [_kv(r["data"].get("tags")) for r in runs]
    by_seed = {}
    for child in children:
        tags = _kv(child["data"].get("tags"))
        for key in ("raysel.method", "raysel.arm", "raysel.seed", "raysel.stage", "raysel.trial_id"):
            assert tags.get(key), f"child run {child['info']['run_id']} lacks tag {key}: {tags}"
        assert tags["raysel.method"] == "standard" and tags["raysel.stage"] == "seeds"
        assert tags["raysel.role"] == "trial"
        assert child["info"]["status"] == "FINISHED", child["info"]
        by_seed[int(tags["raysel.seed"])] = child
    assert sorted(by_seed) == SEEDS  # one child per seed
    assert len({_kv(c["data"]["tags"])["raysel.trial_id"] for c in children}) == len(SEEDS)

    for seed, child in by_seed.items():
        run_id = child["info"]["run_id"]
        params = _kv(child["data"].get("params"))
        assert params["params.max_steps"] == "6"
        assert params["params.eval_every"] == "3"
        assert params["params.context_len"] == "32"
        assert params["model.name"] == "tiny-gpt2-random"
        assert params["data.name"] == "pydocs"
        assert params["seed"] == str(seed)
        assert not any(isinstance(v, str) and v.startswith("{") for k, v in params.items()
                       if k in ("params", "model", "data")), "nested dicts must be flattened"

        # steps are the loop's global optimizer steps, not the count of report calls
        test_ppl = rest.metric_history(run_id, "test_perplexity")
        assert sorted(m["step"] for m in test_ppl) == [0, 3, 6], test_ppl
        assert all(float(m["value"]) > 1 for m in test_ppl)
        train_loss = rest.metric_history(run_id, "train_loss")
        assert sorted(m["step"] for m in train_loss) == [1, 2, 3, 4, 5, 6], train_loss
        # tracking.system_metrics: MLflow's monitor sampled the machine at least once (a last sample at the end)
        cpu = rest.metric_history(run_id, "system/cpu_utilization_percentage")
        memory = rest.metric_history(run_id, "system/system_memory_usage_megabytes")
        assert cpu and all(0 <= float(m["value"]) <= 100 for m in cpu)
        assert memory and all(float(m["value"]) > 0 for m in memory)

    _check_provenance(parent, by_seed, result.storage_path)

    # the report is rebuilt from the tracking server alone, after the sweep's storage is gone
    import shutil

    from raysel import report

    summary = result.summary.set_index("arm")
    shutil.rmtree(tmp_path / "results")
    rebuilt = report.build(parent_id, tracking_uri=url, out_dir=tmp_path / "rebuilt")
    assert rebuilt.source == "mlflow" and rebuilt.frame["trial_id"].nunique() == len(SEEDS)
    assert not [c for c in rebuilt.frame if c.startswith("system/")]  # not on the loop's steps: not in the table
    again = rebuilt.summary.set_index("arm")
    assert again.loc["standard", "n"] == len(SEEDS)
    assert again.loc["standard", "mean"] == pytest.approx(summary.loc["standard", "mean"])
    assert set(rebuilt.figures) == {"curves", "box", "bars"}
    final = [float(max(rest.metric_history(c["info"]["run_id"], "test_perplexity"), key=lambda m: m["step"])["value"])
             for c in children]
    assert again.loc["standard", "mean"] == pytest.approx(sum(final) / len(final))
    by_name = report.load("server-sweep", tracking_uri=url)  # the experiment's newest sweep
    assert set(by_name["run_id"]) == {c["info"]["run_id"] for c in children}


def _check_provenance(parent: dict, children: dict[int, dict], sweep_dir: Path) -> None:
    """Every run names the commit, the spec's hash and the packages; each trial the digests of the model
    and data it loaded, and its data splits as MLflow dataset inputs."""
    import json

    import torch

    from raysel.data import lm_splits
    from raysel.inputs import DataSpec
    from raysel.provenance import content_digest, git_state, spec_sha256

    spec_hash = spec_sha256(json.loads((sweep_dir / "sweep.json").read_text())["spec"])
    commit, dirty = git_state()
    splits = lm_splits(DataSpec(name="pydocs"))
    for run in (parent, *children.values()):
        tags = _kv(run["data"].get("tags"))
        assert tags["raysel.spec_sha256"] == spec_hash and tags["mlflow.source.name"] == "raysel sweep"
        assert tags["raysel.pkg.torch"] == torch.__version__ and tags["raysel.version"] == raysel.__version__
        if commit is not None:  # a checkout (CI's is): MLflow's own tag links the run to its commit
            assert tags["mlflow.source.git.commit"] == commit and tags["raysel.git.dirty"] == str(dirty).lower()
    for child in children.values():
        tags = _kv(child["data"].get("tags"))
        assert tags["raysel.model.tiny-gpt2-random"].endswith("(built-in, random init)")
        assert tags["raysel.data.pydocs"].endswith("(built-in)")
        inputs = child.get("inputs", {}).get("dataset_inputs", [])
        logged = {_kv(i.get("tags"))["mlflow.data.context"]: i["dataset"] for i in inputs}
        assert set(logged) == {"train", "dev", "test"}, inputs
        for split, dataset in logged.items():
            assert dataset["name"] == "pydocs" and dataset["digest"] == content_digest(splits[split])
            assert json.loads(dataset["profile"]) == {"num_rows": len(splits[split])}


def test_planted_secrets_never_reach_the_tracking_store(mlflow_server, ray_session, tmp_path, monkeypatch):
    """A password in the tracking URI (user:password@host) and tokens in the environment: after a sweep
    and its report, neither appears anywhere in the server's database or artifact files."""
    url = mlflow_server.wait_healthy()
    password, token = "planted-password-4f1c", "hf_planted_token_9a2e"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    secret_url = url.replace("http://", f"http://raysel:{password}@")
    spec = {"name": "secret-sweep", "method": "standard", "model": {"name": "tiny-gpt2-random"},
            "data": {"name": "pydocs"}, "params": dict(PARAMS),
            "protocol": {"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"},
            "tracking": {"uri": secret_url}, "storage_path": str(tmp_path / "results")}
    result = raysel.run_sweep(spec, progress=False)
    assert result.num_errors == 0
    runs = Rest(url).search_runs(Rest(url).experiment_by_name("secret-sweep")["experiment_id"])
    assert len(runs) == 2  # the parent and the trial: the store was written to
    store = mlflow_server.log_path.parent
    files = [p for p in store.rglob("*") if p.is_file() and p.name != "server.log"]
    assert any(p.name == "sweep.json" for p in files) and any(p.name == "report.md" for p in files)
    for path in files:
        data = path.read_bytes()
        assert password.encode() not in data and token.encode() not in data, f"secret found in {path}"


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium package (.ci/run installs it)")
def test_the_mlflow_ui_shows_the_sweeps_runs_in_headless_chromium(mlflow_server, ray_session, tmp_path):
    """The MLflow UI of a sweep's experiment, opened in headless Chromium: the page lists the sweep's
    parent run and counts its runs (parent + one per trial); its screenshot is kept in test-artifacts/."""
    url = mlflow_server.wait_healthy()
    spec = {"name": "ui-sweep", "method": "standard", "model": {"name": "tiny-gpt2-random"},
            "data": {"name": "pydocs"}, "params": dict(PARAMS),
            "protocol": {"kind": "seeds", "seeds": SEEDS, "metric": "test_perplexity", "mode": "min"},
            "tracking": {"uri": url}, "storage_path": str(tmp_path / "results")}
    assert raysel.run_sweep(spec, progress=False).num_errors == 0
    experiment = Rest(url).experiment_by_name("ui-sweep")["experiment_id"]
    page = f"{url}/#/experiments/{experiment}/runs"
    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    text = " ".join(re.sub(r"<[^>]+>", " ", dom.stdout).split())
    assert "ui-sweep" in text and f"{len(SEEDS) + 1} matching runs" in text, text[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow-ui-experiment.png"
    chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 20_000
