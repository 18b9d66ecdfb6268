"""The graceful stop's pieces without Ray (issue 23, item 9); the sweep stopped and resumed for real is in
tests/test_fault_tolerance.py."""
from __future__ import annotations

import json
import os
import signal

import pytest

from raysel.cli import EXIT_BAD_INPUT, main
from raysel.stopping import (STOP_FILE, TrialDeferred, check_not_stopping, clear_stop, request_stop,
                             stop_on_sigterm, stop_requested)
from raysel.storage import Storage


def test_a_stop_request_defers_trials_until_it_is_cleared(tmp_path):
    sweep = Storage.parse(str(tmp_path))
    assert stop_requested(sweep) is None
    check_not_stopping(str(tmp_path), "a-trial")  # nothing asked: the trial starts
    request_stop(sweep, "raysel stop")
    assert stop_requested(sweep)["requested_by"] == "raysel stop"
    with pytest.raises(TrialDeferred, match=r"trial a-trial not started: the sweep is stopping \(raysel stop\); "
                                            r"`raysel sweep SPEC --resume` runs it"):
        check_not_stopping(str(tmp_path), "a-trial")
    clear_stop(sweep)
    clear_stop(sweep)  # idempotent
    assert stop_requested(sweep) is None and not (tmp_path / STOP_FILE).exists()


def test_sigterm_to_the_driver_asks_for_a_graceful_stop_and_the_handler_is_restored(tmp_path, capsys):
    sweep = Storage.parse(str(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_sigterm(sweep, "my-sweep"):
        os.kill(os.getpid(), signal.SIGTERM)  # handled in this (main) thread: the process lives on
    assert signal.getsignal(signal.SIGTERM) == before
    assert stop_requested(sweep)["requested_by"] == "SIGTERM to the driver"
    assert "my-sweep: SIGTERM: running trials finish, no new one starts" in capsys.readouterr().err


def test_raysel_stop_finds_the_sweep_by_directory_or_spec_and_refuses_anything_else(tmp_path, capsys):
    sweep_dir = tmp_path / "results" / "s"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text("{}")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\nmethod: standard\nstorage_path: {tmp_path / 'results'}\n"
                    "protocol: {kind: seeds, seeds: [0], metric: test_perplexity, mode: min}\n")
    assert main(["stop", str(spec)]) == 0
    assert json.loads((sweep_dir / STOP_FILE).read_text())["requested_by"] == "raysel stop"
    (sweep_dir / STOP_FILE).unlink()
    assert main(["stop", str(sweep_dir)]) == 0 and (sweep_dir / STOP_FILE).exists()
    assert "running trials finish, no new trial starts" in capsys.readouterr().out
    assert main(["stop", str(tmp_path / "nothing")]) == EXIT_BAD_INPUT
    assert f"no sweep at {tmp_path / 'nothing'} (no sweep.json)" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "nothing").exists()
