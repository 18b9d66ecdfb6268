"""A sweep whose storage_path is an S3 URI, on a real S3-compatible server on 127.0.0.1 (moto's standalone
server, as Ray's own tests use): it runs, is interrupted, resumes and is reported from the bucket alone.
The driver runs in a subprocess with its own local Ray; every process reaches the bucket through the AWS
variables of the ``s3`` fixture (conftest.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3_helpers import S3_BUCKET
from sweep_helpers import DRIVER, interrupt_when

pytestmark = pytest.mark.system

BUCKET = S3_BUCKET


def keys(env: dict[str, str], prefix: str, suffix: str = "") -> dict[str, bytes]:
    """The bucket's objects under ``prefix`` (those ending with ``suffix``; a fresh boto3 client in a
    subprocess: the test's own environment stays as it is); an object deleted between the listing and its
    reading (a checkpoint the sweep removed meanwhile) is left out."""
    code = ("import boto3, json, sys; s3 = boto3.client('s3'); out = {}\n"
            f"for page in s3.get_paginator('list_objects_v2').paginate(Bucket={BUCKET!r}, Prefix={prefix!r}):\n"
            f"    for o in [o for o in page.get('Contents', []) if o['Key'].endswith({suffix!r})]:\n"
            "        try:\n"
            f"            body = s3.get_object(Bucket={BUCKET!r}, Key=o['Key'])['Body'].read()\n"
            "        except s3.exceptions.NoSuchKey:\n"
            "            continue\n"
            "        out[o['Key']] = body.decode('latin-1')\n"
            "json.dump(out, sys.stdout)")
    listed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    return {k: v.encode("latin-1") for k, v in json.loads(listed.stdout).items()}


def finished_trials(env: dict[str, str], prefix: str, last_step: int) -> int:
    results = keys(env, prefix, "/result.json")  # only these: reading every checkpoint made a poll take seconds
    return sum(bool(v.strip()) and json.loads(v.splitlines()[-1]).get("step") == last_step for v in results.values())


def test_a_sweep_on_s3_runs_is_interrupted_resumes_and_reports_from_the_bucket(tmp_path, s3):
    started = time.monotonic()
    spec = {"name": "on-s3", "method": "standard", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "pydocs"},
            "params": {"max_steps": 16, "eval_every": 4, "context_len": 32, "batch_size": 8, "eval_examples": 32},
            "protocol": {"kind": "seeds", "seeds": [0, 1, 2, 3], "metric": "test_perplexity", "mode": "min"},
            "resources": {"max_concurrent_trials": 1}, "ray": {"num_cpus": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": f"s3://{BUCKET}/sweeps"}
    env = {**s3, "RAYSEL_CACHE": str(tmp_path / "driver-cache")}  # the driver's local mirror of the sweep
    first = subprocess.Popen([sys.executable, "-c", DRIVER.format(spec=spec, resume=False)], env=env, cwd=tmp_path,
                             start_new_session=True)
    # interrupted once the first of the four trials (one at a time) has finished: three trials of 16 steps
    # are left as margin for the poll (the CI of 2026-12-01 saw 4-step trials all finish before it)
    assert interrupt_when(first, lambda: finished_trials(s3, "sweeps/on-s3/seeds/", 16) >= 1) == 130
    assert 1 <= finished_trials(s3, "sweeps/on-s3/seeds/", 16) < 4

    # resumed from what the bucket holds: the driver's mirror is gone
    env["RAYSEL_CACHE"] = str(tmp_path / "other-cache")
    resumed = subprocess.run([sys.executable, "-c", DRIVER.format(spec=spec, resume=True)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    stored = keys(s3, "sweeps/on-s3/")
    assert {"sweeps/on-s3/sweep.json", "sweeps/on-s3/trials.csv", "sweeps/on-s3/report/report.md"} <= set(stored)
    import io

    import pandas as pd

    trials = pd.read_csv(io.BytesIO(stored["sweeps/on-s3/trials.csv"]))
    assert sorted(trials["seed"]) == [0, 1, 2, 3] and (trials["step"] == 16).all()
    assert not [k for k in stored if "/checkpoint_" in k]  # finished trials keep no checkpoint (logged to MLflow)
    assert not (tmp_path / "raysel_results").exists() and not (tmp_path / "sweeps").exists()

    # the report, on another machine as it were: from the bucket alone (and the MLflow store)
    env["RAYSEL_CACHE"] = str(tmp_path / "reader-cache")
    before = stored["sweeps/on-s3/report/report.md"]
    (tmp_path / "reader").mkdir()
    report = subprocess.run([str(Path(sys.executable).parent / "raysel"), "report", f"s3://{BUCKET}/sweeps/on-s3"],
                            env=env, cwd=tmp_path / "reader", capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "on-s3" in report.stdout and "seed" in report.stdout
    assert keys(s3, "sweeps/on-s3/report/report.md")["sweeps/on-s3/report/report.md"].strip() == before.strip()
    assert not list((tmp_path / "reader").iterdir())  # nothing written where the report was asked for
    print(f"S3 sweep test: {time.monotonic() - started:.0f} s")


def test_files_go_up_and_come_back_through_the_local_mirror(tmp_path, s3, monkeypatch):
    """raysel.storage on S3: a trial's artifacts and the shared files go up when it ends (also when it
    fails) and come back on another machine (another mirror), checkpoints left out when asked."""
    from raysel import storage

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, s3[name])
    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path / "node-a"))
    sweep = storage.Storage.parse(f"s3://{BUCKET}/mirror/sweep")
    assert sweep.check_writable() is None and not sweep.holds_files()
    with pytest.raises(RuntimeError), storage.trial_files(sweep.uri, "trial_1") as artifacts:
        (artifacts / "scores.csv").parent.mkdir(parents=True)
        (artifacts / "scores.csv").write_text("a,b\n1,2\n")
        (artifacts.parent / "shared" / "cache.pt").parent.mkdir(parents=True)
        (artifacts.parent / "shared" / "cache.pt").write_bytes(b"x" * 1000)
        (artifacts.parent / "shared" / "cache.pt.lock").write_text("")
        raise RuntimeError("the trial failed")
    (sweep.local / "seeds" / "trial_1" / "checkpoint_000001").mkdir(parents=True)
    (sweep.local / "seeds" / "trial_1" / "checkpoint_000001" / "state.pt").write_bytes(b"y")
    (sweep.local / "seeds" / "trial_1" / "result.json").write_text("{}")
    sweep.upload("seeds")
    assert sweep.holds_files() and sweep.read_text("artifacts/trial_1/scores.csv") == "a,b\n1,2\n"
    assert sweep.read_text("artifacts/shared/cache.pt.lock") is None  # a node's lock stays on its node

    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path / "node-b"))
    with storage.trial_files(sweep.uri, "trial_2") as artifacts:
        assert (artifacts.parent / "shared" / "cache.pt").read_bytes() == b"x" * 1000  # what trial_1 shared
    copy = sweep.download(skip=("checkpoint_",))
    assert copy == tmp_path / "node-b" / "storage" / copy.name
    assert (copy / "seeds" / "trial_1" / "result.json").is_file()
    assert not (copy / "seeds" / "trial_1" / "checkpoint_000001").exists()
    assert storage.Storage.parse(f"s3://{BUCKET}-missing/x").check_writable().startswith("OSError: ")


def test_a_bucket_nothing_can_be_written_to_is_refused_before_ray_starts(tmp_path, s3):
    spec = {"name": "nowhere", "method": "standard", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "pydocs"},
            "params": {"max_steps": 2}, "protocol": {"kind": "seeds", "seeds": [0], "metric": "test_perplexity",
                                                     "mode": "min"},
            "storage_path": f"s3://{BUCKET}-missing/sweeps", "tracking": {"uri": "sqlite:///mlflow.db"}}
    (tmp_path / "nowhere.yaml").write_text(json.dumps(spec))
    refused = subprocess.run([str(Path(sys.executable).parent / "raysel"), "sweep", "nowhere.yaml"], env=s3,
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = re.sub(r"raysel-check-[0-9a-f]{8}", "raysel-check-XXXXXXXX", refused.stderr.strip().splitlines()[-1])
    assert line == (
        f"error: invalid sweep spec: storage_path: s3://{BUCKET}-missing/sweeps cannot be used (OSError: When "
        f"initiating multiple part upload for key 'sweeps/.raysel-check-XXXXXXXX' in bucket '{BUCKET}-missing': AWS "
        "Error NO_SUCH_BUCKET during CreateMultipartUpload operation: The specified bucket does not exist); give a "
        "URI the filesystem's credentials let this machine write to (e.g. s3://bucket/prefix), or a local path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nowhere.yaml"]  # no MLflow store, no results


def test_a_search_on_s3_keeps_its_study_in_the_bucket_and_logs_its_best_model(tmp_path, s3):
    """A search with the default study storage and log_best_model on an S3 storage: optuna.db goes up to the
    bucket (a reader elsewhere opens it: its trials are the search's), the best model is logged to MLflow,
    and nothing of the staged models stays in the bucket."""
    import optuna

    spec = {"name": "search-s3", "method": "standard", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "pydocs"},
            "params": {"max_steps": 2, "eval_every": 2, "context_len": 32, "batch_size": 8, "eval_examples": 16},
            "search_space": {"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}},
            "protocol": {"kind": "search", "num_samples": 2, "metric": "test_perplexity", "mode": "min"},
            "resources": {"max_concurrent_trials": 1}, "ray": {"num_cpus": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "log_best_model": True},
            "storage_path": f"s3://{BUCKET}/sweeps"}
    env = {**s3, "RAYSEL_CACHE": str(tmp_path / "driver-cache")}
    ran = subprocess.run([sys.executable, "-c", DRIVER.format(spec=spec, resume=False)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-4000:]
    stored = keys(s3, "sweeps/search-s3/")
    assert not [k for k in stored if "/best_models/" in k], "the staged best models are deleted once logged"
    (tmp_path / "optuna.db").write_bytes(stored["sweeps/search-s3/optuna.db"])
    study = optuna.load_study(study_name="search-s3/search-standard", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    import mlflow

    client = mlflow.MlflowClient(spec["tracking"]["uri"])
    parent = json.loads(stored["sweeps/search-s3/sweep.json"])["parent_run_id"]
    assert "best_model/standard/config.json" in {a.path for a in client.list_artifacts(parent, "best_model/standard")}
