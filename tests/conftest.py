"""Shared fixtures: everything offline, one local Ray for the whole session (2 CPUs); the test tiers.

Tiers (markers): ``unit`` — no Ray, no servers, no subprocess clusters (given to every test that is
not marked otherwise; such a test that starts Ray fails, naming itself); ``system`` — starts Ray, an
MLflow server or a cluster (a test that uses one of SYSTEM_FIXTURES is marked automatically, others
say so themselves); ``slow`` — minutes each; ``gpu`` — needs CUDA. The README's test command runs
every tier but ``gpu``; ``pytest -m unit`` is the quick one while editing."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import pytest  # noqa: E402
from mlflow_helpers import serve_mlflow  # noqa: E402
from s3_helpers import s3_server  # noqa: E402


SYSTEM_FIXTURES = {"ray_session", "lm_spec", "mlflow_server", "local_cluster", "s3"}
TIERS = ("system", "slow", "gpu")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SYSTEM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request, monkeypatch):
    """A ``unit`` test that would start (or join) Ray fails with its name: mark it ``system``."""
    if request.node.get_closest_marker("unit") is not None:
        import ray

        def refuse(*args, **kwargs):
            raise RuntimeError(f"{request.node.nodeid} is a unit test but starts Ray: mark it `system`")

        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", refuse)
    yield


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray (2 CPUs, small object store, no dashboard) shared by every test that needs it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests: as fast, and it stays fast when other
    processes load the cores (two spinning OpenMP threads then made such a file 5x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def lm_spec(tmp_path):
    """``lm_spec(**sections)``: a small causal-LM sweep spec on the tiny random GPT-2 (seconds per trial)."""
    return lambda **sections: tiny_lm_spec(tmp_path, **sections)


def tiny_lm_spec(tmp_path, **sections) -> dict:
    spec = {
        "name": "t",
        "method": "standard",
        "model": {"name": "tiny-gpt2-random"},
        "data": {"name": "pydocs"},
        "params": {"task": "causal_lm", "max_steps": 6, "eval_every": 3, "context_len": 32, "batch_size": 8,
                   "eval_examples": 32},
        "protocol": {"kind": "seeds", "seeds": [0, 1], "metric": "test_perplexity", "mode": "min"},
        "resources": {"max_concurrent_trials": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "storage_path": str(tmp_path / "results"),
    }
    for key, value in sections.items():
        if value is None:
            spec.pop(key, None)
        elif isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1:<free port>, started but not yet waited for (the test
    calls ``wait_healthy()`` after the other fixtures, so the server's ~30 s start-up overlaps them)."""
    root = tmp_path / "mlflow-server"
    with serve_mlflow(root, str(root / "artifacts"), os.environ) as server:
        yield server


@pytest.fixture
def s3():
    """A real S3-compatible server on a free port with an empty bucket (s3_helpers.S3_BUCKET); the
    environment that reaches it."""
    with s3_server() as env:
        yield env
