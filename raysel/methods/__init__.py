"""Registry of fine-tuning methods: a specs' ``method:`` name → its recipe class (lazy imports).

Importing this package imports no torch: the method contract (``raysel.methods.base``) and each recipe load
on first use, so `raysel list` shows the methods without importing them (:func:`method_summary`).
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

# name -> "defining module:Class"; imported on first use
_REGISTRY: dict[str, str] = {
    "camels": "raysel.methods.camels.recipe:Camels",
    "igf": "raysel.methods.igf.recipe:IGF",
    "kernel": "raysel.methods.kernel.recipe:Kernel",
    "opf": "raysel.methods.opf.recipe:OPF",
    "pruning": "raysel.methods.pruning.recipe:Pruning",
    "standard": "raysel.methods.standard:Standard",
}
# the method contract, from raysel.methods.base on first use (it imports torch)
_BASE = ("Method", "MethodFigure", "MethodParams", "NonFiniteLossError", "RunContext", "check_finite")

if TYPE_CHECKING:
    from raysel.methods.base import Method, MethodFigure, MethodParams, NonFiniteLossError, RunContext, check_finite


class UnknownMethodError(ValueError):
    pass


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The method registered under ``name``; the error lists the valid names."""
    module_name, class_name = _registered(name)
    return getattr(importlib.import_module(module_name), class_name)()


def method_summary(name: str) -> str:
    """The first line of method ``name``'s class docstring, read from its source file without importing it."""
    module_name, class_name = _registered(name)
    path = Path(__file__).parent.joinpath(*module_name.split(".")[2:])
    source = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
    classes = [node for node in ast.parse(source.read_text()).body if isinstance(node, ast.ClassDef)]
    doc = next((ast.get_docstring(node) or "" for node in classes if node.name == class_name), "")
    return doc.splitlines()[0] if doc else ""


def _registered(name: str) -> tuple[str, str]:
    if name not in _REGISTRY:
        raise UnknownMethodError(f"unknown method {name!r}; allowed: {', '.join(method_names())}")
    module_name, class_name = _REGISTRY[name].split(":")
    return module_name, class_name


def __getattr__(name: str) -> Any:
    if name not in _BASE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("raysel.methods.base"), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


__all__ = ["Method", "MethodFigure", "MethodParams", "NonFiniteLossError", "RunContext", "UnknownMethodError", "check_finite",
           "get_method", "method_names", "method_summary"]
