"""raysel: a Ray-distributed experiment scheduler for selective and efficient LM fine-tuning.

    import raysel
    result = raysel.run_sweep("tune_configs/quickstart.yaml", protocol__num_samples=4)
    result.trials        # one row per trial (pandas)
    result.best_config   # the best search trial's params

``raysel.trainable("standard", ...)`` gives a Ray Tune trainable for your own Tuner code.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # the heavy imports (Ray, torch) wait until first use
    from raysel.spec import SweepSpec
    from raysel.sweep import SweepResult


def load_spec(source: Any, overrides: Any = None) -> "SweepSpec":
    """Load and validate a sweep spec (a YAML path, a dict or a SweepSpec) with overrides."""
    from raysel.spec import load_spec as _load

    return _load(source, overrides)


def run_sweep(spec_or_path: Any, **kwargs: Any) -> "SweepResult":
    """Run a sweep; the same as ``raysel sweep``. See raysel.sweep.run_sweep."""
    from raysel.sweep import run_sweep as _run

    return _run(spec_or_path, **kwargs)


def stop_sweep(sweep: str) -> Any:
    """Ask a running sweep to stop gracefully; the same as ``raysel stop``. See raysel.stopping.stop_sweep."""
    from raysel.stopping import stop_sweep as _stop

    return _stop(sweep)


def trainable(method: str, **kwargs: Any):
    """A Ray Tune trainable running ``method``; see raysel.trial.trainable."""
    from raysel.trial import trainable as _trainable

    return _trainable(method, **kwargs)


__all__ = ["load_spec", "run_sweep", "stop_sweep", "trainable", "__version__"]
