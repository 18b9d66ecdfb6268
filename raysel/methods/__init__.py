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


def method_module(name: str) -> str:
    """The module of the method registered under ``name`` (not imported)."""
    if name not in _REGISTRY:
        raise UnknownMethodError(f"unknown method {name!r}; allowed: {', '.join(method_names())}")
    return _REGISTRY[name].split(":")[0]


def get_method(name: str) -> Method:
    """The method registered under ``name``; the error lists the valid names."""
    module_name = method_module(name)
    return getattr(importlib.import_module(module_name), _REGISTRY[name].split(":")[1])()


__all__ = ["Method", "MethodFigure", "MethodParams", "NonFiniteLossError", "RunContext", "check_finite", "get_method", "method_module",
           "method_names",
           "UnknownMethodError"]
