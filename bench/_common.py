"""What every benchmark here records beside its numbers, and how it saves them."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine(device: str) -> dict:
    """CPU count, platform, Python and torch versions, the GPU's name, the load average now."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "load_average": os.getloadavg()}


def save(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def matmul_gflops(size: int = 1024, repeats: int = 10) -> float:
    """This machine's float32 matmul rate now (torch's threads as set), GFLOP/s: the best of ``repeats``."""
    import time

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9
