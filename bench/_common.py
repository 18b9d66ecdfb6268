"""What every benchmark here records beside its numbers, and how it saves them: the machine, its matmul
rate measured in the same run, and the FLOPs of the timed work counted by torch (the roofline columns)."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch


def machine(device: str) -> dict:
    """CPU count, platform, Python and torch versions, the GPU's name, the load average now."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "load_average": os.getloadavg()}


def save(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def matmul_gflops(size: int = 2048, repeats: int = 10, device: str = "cpu",
                  dtype: torch.dtype = torch.float32) -> float:
    """This machine's matmul rate now (torch's threads as set), GFLOP/s: the best of ``repeats``
    ``size`` × ``size`` products (2048: the yardstick of bench/README.md)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def matmul_rates(device: str) -> dict[str, float]:
    """The rates achieved FLOP/s are compared with: float32 matmul, and bfloat16 on CUDA (GFLOP/s)."""
    rates = {"float32": matmul_gflops(device=device)}
    if device == "cuda":
        rates["bfloat16"] = matmul_gflops(size=8192, device=device, dtype=torch.bfloat16)
    return rates


def count_flops(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, float]:
    """``fn(*args, **kwargs)``'s result and the FLOPs torch's FlopCounterMode counted in it (matmuls,
    convolutions and attention, forward and backward; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return result, float(counter.get_total_flops())


def training_pass_flops(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """The FLOPs torch counts in one forward and backward of a causal LM on token ids ``ids`` (labels = ids)."""
    return count_flops(lambda: model(input_ids=ids, labels=ids).loss.backward())[1]


def roofline(flops: float, seconds: float, matmul: float) -> dict[str, float]:
    """Achieved GFLOP/s of ``flops`` done in ``seconds`` and its fraction of the ``matmul`` rate (GFLOP/s)."""
    achieved = flops / seconds / 1e9
    return {"flops": flops, "gflops": achieved, "fraction_of_matmul": achieved / matmul}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
