"""The layout's rules, checked on the source: which modules may import which (no Ray needed).

- methods, data, models and metrics never import the orchestration (sweep, trial, tracking, report,
  CLI, progress, telemetry): a recipe runs the same under a sweep, a notebook or a test;
- the spec imports no recipe at module level (validation reaches recipes through the registry);
- no module imports another module's private name;
- a trial process does not import the report package (pandas, matplotlib, MLflow's readers).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "raysel"
ORCHESTRATION = ("raysel.sweep", "raysel.trial", "raysel.run_context", "raysel.train_driver", "raysel.tracking",
                 "raysel.report", "raysel.cli", "raysel.progress", "raysel.telemetry")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def sources(*roots: str) -> list[Path]:
    out = []
    for root in roots:
        path = PACKAGE / root
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def test_methods_data_models_and_metrics_never_import_the_orchestration():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
             for path in sources("methods", "data", "models", "metrics.py")
             for module, _, line in imports(path)
             if any(module == o or module.startswith(o + ".") for o in ORCHESTRATION)]
    assert not found, "\n".join(found)


def test_the_spec_imports_no_recipe_at_module_level():
    recipes = [(module, line) for module, _, line in imports(PACKAGE / "spec.py", top_level_only=True)
               if module.startswith("raysel.methods.") and module != "raysel.methods.base"]
    assert not recipes, recipes


def test_no_module_imports_a_private_name_of_another():
    """``_name`` is private to its module, and ``_module`` to its package (its siblings may import it)."""
    found = []
    for path in sources("."):
        own = module_name(path)
        own_package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
        for module, names, line in imports(path):
            if not module.startswith("raysel") or module == own:
                continue
            parts = module.split(".")
            private_modules = [".".join(parts[:i + 1]) for i, p in enumerate(parts) if p.startswith("_")
                               and not p.startswith("__") and not own.startswith(".".join(parts[:i]) + ".")]
            private_names = [n for n in names if n.startswith("_") and not n.startswith("__")
                             and module != own_package]
            if private_modules or private_names:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {private_modules or private_names}")
    assert not found, "\n".join(found)


def test_a_trial_process_does_not_import_the_report_package():
    code = ("import sys, raysel.trial, raysel.methods.standard; "
            "print(sorted(m for m in sys.modules if m.startswith(('raysel.report', 'matplotlib'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_a_unit_test_that_starts_ray_fails_naming_itself(tmp_path):
    """The tiers hold: a test not marked system (here: this one) cannot start or join Ray."""
    import pytest
    import ray

    import raysel

    with pytest.raises(RuntimeError, match=r"test_layout.py::test_a_unit_test_that_starts_ray_fails_naming_itself "
                                           r"is a unit test but starts Ray: mark it `system`"):
        ray.init(num_cpus=1)
    with pytest.raises(RuntimeError, match="is a unit test but starts Ray"):
        raysel.run_sweep({"name": "u", "method": "standard", "tracking": {"enabled": False},
                          "storage_path": str(tmp_path),
                          "protocol": {"kind": "seeds", "seeds": [0], "metric": "m", "mode": "min"}}, progress=False)


def test_a_job_drivers_late_raysel_imports_are_all_imported_before_ray_can_replace_its_directory():
    """A `ray job submit --working-dir` driver imports DRIVER_MODULES before ray.init (which may delete and
    re-extract the job's directory); every raysel import inside sweep.py's functions must be among them."""
    import ast
    from pathlib import Path

    from raysel import sweep

    tree = ast.parse(Path(sweep.__file__).read_text())
    late = {node.module for function in ast.walk(tree) if isinstance(function, ast.FunctionDef)
            for node in ast.walk(function) if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raysel")}
    assert late and late <= set(sweep.DRIVER_MODULES), sorted(late - set(sweep.DRIVER_MODULES))
