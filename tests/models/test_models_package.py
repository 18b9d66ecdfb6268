"""raysel.models imports transformers, and raysel.methods torch, only when a model function or the method contract
is first used: the CLI's commands that load no model (stop, validate, list) start without them, and every public
name still resolves to its defining module's."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import raysel.models
from raysel.methods import method_names

ROOT = Path(__file__).resolve().parents[2]


def test_the_cli_and_model_errors_import_no_transformers():
    probe = ("import sys, raysel.cli, raysel.report, raysel.sweep\n"
             "from raysel.models import ModelError, cache_dir\n"
             "from raysel.models.errors import ModelError as Same\n"
             "assert ModelError is Same\n"
             "print(sorted(m for m in ('transformers', 'mlflow', 'ray.tune') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_validating_a_spec_of_every_method_imports_no_model_code():
    """`raysel validate` (and the report's method figures) look methods up: their modules call models.load_model
    at run time, so transformers' model code (~1.5 s of imports) is not loaded to check a spec; nor is the report,
    whose ReportError the CLI imports only once an error was raised."""
    specs = [str(ROOT / "tune_configs" / name) for name in ("camels_eval.yaml", "igf_search.yaml", "kernel_5seed.yaml", "quickstart.yaml")]
    probe = ("import sys\n"
             "from raysel.cli import main\n"
             "from raysel.methods import get_method, method_names\n"
             f"assert all(main(['validate', spec]) == 0 for spec in {specs!r})\n"
             "methods = [get_method(name) for name in method_names()]\n"
             "print(len(methods), 'transformers.modeling_utils' in sys.modules, 'raysel.report' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == f"{len(method_names())} False False"  # nor the report's pandas


def test_every_public_name_is_its_defining_modules_object():
    for name, module in raysel.models._LAZY.items():
        assert getattr(raysel.models, name) is getattr(importlib.import_module(f"raysel.models.{module}"), name)
    assert all(hasattr(raysel.models, name) for name in raysel.models.__all__)
    assert set(raysel.models.__all__) <= set(dir(raysel.models))
    from raysel.models import load_model, tokenizers  # a function, and a submodule by the same syntax

    assert callable(load_model) and tokenizers.__name__ == "raysel.models.tokenizers"


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="'raysel.models' has no attribute 'load_modle'"):
        raysel.models.load_modle
    with pytest.raises(ImportError, match="load_modle"):
        exec("from raysel.models import load_modle", {})  # the statement users write


def test_raysel_list_imports_no_torch_and_shows_every_method_and_built_in():
    probe = ("import sys\n"
             "from raysel.cli import main\n"
             "assert main(['list']) == 0\n"
             "print(sorted(m for m in ('torch', 'transformers', 'raysel.methods.base') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "COLUMNS": "400"})  # one table row per line
    assert out.stdout.strip().splitlines()[-1] == "[]"
    from raysel.methods import method_summary
    from raysel.models import BUILTIN_MODELS

    rows = [line.strip("│ ") for line in out.stdout.splitlines()]
    for name in method_names():
        assert any(row.startswith(name) and row.endswith(method_summary(name)) for row in rows), name
    assert all(any(row.startswith(name) and text in row for row in rows) for name, text in BUILTIN_MODELS.items())


def test_a_methods_summary_is_the_first_line_of_its_class_docstring():
    from raysel.methods import get_method, method_summary

    for name in method_names():
        summary = method_summary(name)
        assert summary and summary == type(get_method(name)).__doc__.strip().splitlines()[0]


def test_the_method_contract_resolves_lazily_and_subpackages_still_import():
    import raysel.methods
    import raysel.methods.base

    for name in ("Method", "MethodFigure", "MethodParams", "NonFiniteLossError", "RunContext", "check_finite"):
        assert getattr(raysel.methods, name) is getattr(raysel.methods.base, name)
    assert all(hasattr(raysel.methods, name) for name in raysel.methods.__all__)
    from raysel.methods import kernel  # a subpackage, by the same syntax

    assert kernel.__name__ == "raysel.methods.kernel"
    with pytest.raises(AttributeError, match="'raysel.methods' has no attribute 'Methd'"):
        raysel.methods.Methd
