"""Registry of fine-tuning methods: a specs' ``method:`` name → its recipe class (lazy imports)."""
from __future__ import annotations

import importlib

from raysel.methods.base import Method, MethodFigure, MethodParams, NonFiniteLossError, RunContext, check_finite

# name -> "module:Class"; imported on first use so that `raysel list` stays fast.
_REGISTRY: dict[str, str] = {
    "camels": "raysel.methods.camels:Camels",
    "igf": "raysel.methods.igf:IGF",
    "kernel": "raysel.methods.kernel:Kernel",
    "opf": "raysel.methods.opf:OPF",
    "pruning": "raysel.methods.pruning:Pruning",
    "standard": "raysel.methods.standard:Standard",
}


class UnknownMethodError(ValueError):
    pass


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The method registered under ``name``; the error lists the valid names."""
    if name not in _REGISTRY:
        raise UnknownMethodError(f"unknown method {name!r}; allowed: {', '.join(method_names())}")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = ["Method", "MethodFigure", "MethodParams", "NonFiniteLossError", "RunContext", "check_finite", "get_method", "method_names",
           "UnknownMethodError"]
