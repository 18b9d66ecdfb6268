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
