"""GPU checks (``pytest -m gpu``): the same loop on CUDA with bf16 autocast, and DDP over NCCL."""
from __future__ import annotations

import math

import pytest
import torch

from raysel.methods import get_method
from raysel.inputs import DataSpec, ModelSpec
from raysel.run_context import LocalRun

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_standard_loop_trains_on_cuda_with_bf16_autocast():
    standard = get_method("standard")
    run = LocalRun(seed=0, model=ModelSpec(name="tiny-gpt2-random"), data=DataSpec(name="pydocs"),
                   device=torch.device("cuda"))
    final = standard.train_loop(standard.Params(max_steps=10, eval_every=5, lr=3e-3, context_len=64), run)
    first = run.results[0]["test_perplexity"]
    assert math.isfinite(final["test_perplexity"]) and final["test_perplexity"] < first


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")  # before the Ray fixture starts
def test_two_gpu_workers_if_present(lm_spec, ray_session):
    import raysel

    spec = lm_spec(name="nccl", resources={"workers": 2, "gpus_per_worker": 1, "max_concurrent_trials": 1},
                   protocol={"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"})
    result = raysel.run_sweep(spec, progress=False)
    assert result.num_errors == 0


def test_exact_information_gain_on_cuda_equals_the_reference_loop_in_float64():
    from raysel.methods.igf import information_gain
    from raysel.models import load_model

    model, _ = load_model("tiny-gpt2-random", "causal_lm")
    model = model.double().cuda()
    generator = torch.Generator().manual_seed(0)
    contexts = torch.randint(0, model.config.vocab_size, (12, 16), generator=generator).cuda()
    objective = torch.randint(0, model.config.vocab_size, (6, 16), generator=generator).cuda()
    exact = information_gain(model, contexts, objective, lr=1e-3, engine="exact", chunk_size=5)
    loop = information_gain(model, contexts, objective, lr=1e-3, engine="loop")
    torch.testing.assert_close(exact, loop, rtol=1e-8, atol=1e-10)


def test_igf_trial_builds_its_learner_and_trains_on_cuda(tmp_path):
    igf = get_method("igf")
    params = igf.Params(context_len=16, size_objective_set=8, min_len=64, ig_contexts=64, ig_chunk_size=32,
                        secondary_learner_max_epochs=3, learner_lr=1e-3, threshold_units="learner",
                        max_batches=6, batch_size=8, eval_every=3, switch_step=3, lr=1e-3, eval_examples=32)
    run = LocalRun(seed=0, model=ModelSpec(name="tiny-gpt2-random"), data=DataSpec(name="pydocs"),
                   device=torch.device("cuda"), artifact_dir=tmp_path / "trial")
    final = igf.train_loop(params, run)
    assert math.isfinite(final["test_perplexity"]) and final["test_perplexity"] < run.results[1]["test_perplexity"]
    assert run.results[0]["ig_workers"] == 1 and run.results[-1]["contexts_consumed"] >= 6 * 8


def test_kernel_on_cuda_equals_the_cpu_kernel_and_a_trial_runs_there(tmp_path):
    """The eNTK of tiny-bert's prompt logits (padded, length-sorted chunks, compact vocabulary) on
    CUDA against the same computation on CPU, in float64; then a kernel trial on CUDA."""
    from raysel.methods import kernel
    from raysel.models import load_model

    model, _ = load_model("tiny-bert", "masked_lm")
    model = model.double()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 12, (10,), generator=g)
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    batch = {"input_ids": torch.randint(5, 2000, (10, 12), generator=g) * mask, "attention_mask": mask,
             "mask_pos": lengths - 2}
    fn = kernel.prompt_logits_fn(model, [11, 22, 33])
    cpu = kernel.ntk(model, batch, {k: v[:6] for k, v in batch.items()}, logits_fn=fn, chunk_size=3)
    cuda_model = model.cuda()
    on_cuda = {k: v.cuda() for k, v in batch.items()}
    gpu = kernel.ntk(cuda_model, on_cuda, {k: v[:6] for k, v in on_cuda.items()},
                     logits_fn=kernel.prompt_logits_fn(cuda_model, [11, 22, 33]), chunk_size=3)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float64
    torch.testing.assert_close(gpu, cpu, rtol=1e-9, atol=1e-9 * float(cpu.abs().max()))

    method = get_method("kernel")
    run = LocalRun(seed=13, model=ModelSpec(name="tiny-bert"), data=DataSpec(name="pydocs-topics", k=4),
                   device=torch.device("cuda"), artifact_dir=tmp_path / "trial")
    final = method.train_loop(method.Params(label_words=["string", "data", "time", "file", "number"]), run)
    assert 0 <= final["test_accuracy"] <= 1 and final["kernel_entries_per_s"] > 0


def test_opf_on_cuda_mpo_layers_equal_the_cpu_ones_and_a_trial_trains_and_merges(tmp_path):
    """MPOLinear's contraction and its cached W on CUDA against CPU in float64; then an OPF trial on
    CUDA (bf16 autocast over the MPO layers) that decomposes, trains its cores and merges back."""
    from raysel.methods.opf import MPOLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 96).double()
    x = torch.randn(7, 48, dtype=torch.float64)
    on_cpu = MPOLinear.from_layer(linear, [6, 1, 8], [8, 1, 12])
    on_cuda = MPOLinear.from_layer(linear.cuda(), [6, 1, 8], [8, 1, 12])
    torch.testing.assert_close(on_cuda(x.cuda()).cpu(), on_cpu(x), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(on_cuda(x.cuda()).cpu(), linear.cpu()(x), rtol=1e-10, atol=1e-12)

    opf = get_method("opf")
    run = LocalRun(seed=13, model=ModelSpec(name="tiny-bert"), data=DataSpec(name="pydocs-topics", k=4),
                   device=torch.device("cuda"), artifact_dir=tmp_path / "trial")
    final = opf.train_loop(opf.Params(top_n=2, split_num=2, max_steps=9, batch_size=8, eval_every=3,
                                      middle_cores=2, lr=1e-3, mpo_lr=1e-3), run)
    assert final["mpo_matrices"] == 2 * 6 and final["merge_max_abs_diff"] < 1e-3
    assert (tmp_path / "trial" / "merged" / "model.safetensors").is_file()
