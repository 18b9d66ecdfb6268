"""The built-ins are identical in separate processes (no salted hash() anywhere), and the
standard-library modules they import do nothing visible on import."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DIGEST = """
import hashlib
from raysel.data import generate_facts, load_mixed_pool, load_pydocs, load_topics
h = hashlib.sha256()
for part in ("pretrain", "finetune", "objective", "test"):
    for a in load_pydocs(part):
        h.update(f"{part}|{a.key}|{a.text}".encode())
for a in load_mixed_pool(0.5, seed=0):
    h.update(f"{a.key}|{a.in_domain}|{a.text}".encode())
for split in ("train", "dev", "test"):
    for text, label in load_topics(split):
        h.update(f"{split}|{label}|{text}".encode())
h.update(repr(generate_facts(20, seed=7)).encode())
print(h.hexdigest())
"""

# Imports every module of _stdlib.MODULES first thing in a fresh interpreter, so that each
# module body really runs here; reports what they wrote and how many failed.
IMPORTS = """
import importlib, io, json, sys, warnings
names = json.loads(sys.argv[1])
out, err = sys.stdout, sys.stderr
sys.stdout = sys.stderr = buf = io.StringIO()
failed = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            failed.append(name)
sys.stdout, sys.stderr = out, err
print(json.dumps({"printed": buf.getvalue(), "failed": failed}))
"""


def _run(script: str, *args: str, hash_seed: str = "0", cache: Path | None = None) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if cache is not None:
        env["RAYSEL_CACHE"] = str(cache)
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_same_digest_in_two_processes_and_from_the_cache(tmp_path):
    # each builds the pydocs corpus itself (a private cache each); a third reads the first one's file
    a = _run(DIGEST, hash_seed="1", cache=tmp_path / "a")
    b = _run(DIGEST, hash_seed="2", cache=tmp_path / "b")
    assert len(a) == 64 and a == b
    assert list((tmp_path / "a" / "corpora").glob("pydocs-*.json"))
    assert _run(DIGEST, hash_seed="3", cache=tmp_path / "a") == a


def test_stdlib_modules_do_not_print_on_import():
    import json

    source = (ROOT / "raysel" / "data" / "_stdlib.py").read_text(encoding="utf-8")
    assign = next(n for n in ast.parse(source).body
                  if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "MODULES")
    names = ast.literal_eval(assign.value)
    assert names == tuple(sorted(set(names)))  # a fixed, sorted list
    assert not {"this", "antigravity", "tkinter", "idlelib", "turtle", "test"} & set(names)
    result = json.loads(_run(IMPORTS, json.dumps(names)))
    assert result["printed"] == ""
    assert len(result["failed"]) < 10  # a few optional modules may be missing from a build
