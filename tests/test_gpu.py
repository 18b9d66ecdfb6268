"""GPU checks (``pytest -m gpu``): the same loop on CUDA with bf16 autocast, and DDP over NCCL."""
from __future__ import annotations

import math

import pytest
import torch

from raysel.methods import get_method
from raysel.spec import DataSpec, ModelSpec
from raysel.trial import LocalRun

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_standard_loop_trains_on_cuda_with_bf16_autocast():
    standard = get_method("standard")
    run = LocalRun(seed=0, model=ModelSpec(name="tiny-gpt2-random"), data=DataSpec(name="pydocs"),
                   device=torch.device("cuda"))
    final = standard.train_loop(standard.Params(max_steps=10, eval_every=5, lr=3e-3, context_len=64), run)
    first = run.results[0]["test_perplexity"]
    assert math.isfinite(final["test_perplexity"]) and final["test_perplexity"] < first


def test_two_gpu_workers_if_present(lm_spec, ray_session):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    import raysel

    spec = lm_spec(name="nccl", resources={"workers": 2, "gpus_per_worker": 1, "max_concurrent_trials": 1},
                   protocol={"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"})
    result = raysel.run_sweep(spec, progress=False)
    assert result.num_errors == 0
