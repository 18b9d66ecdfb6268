"""The best model of each arm, logged to MLflow (``tracking.log_best_model``) without keeping every
trial's weights.

A trial offers its trained model at the loop's end (``RunContext.offer_model``: the shared loop does,
OPF after merging its cores back). The sweep's board (a Ray actor the driver starts) answers whether the
trial's protocol metric beats its arm's best so far; only then does the trial save the model
(``save_pretrained``) into the sweep's storage under ``best_models/ARM/TRIAL``. When a phase ends the
driver logs each arm's best into the parent run under ``best_model/ARM`` (with the tag
``raysel.best_model.ARM``: the trial, the metric and its value) and deletes every staged folder, so the
storage holds at most the models that were once an arm's best, and only while their phase runs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from raysel.storage import Storage

STAGING = "best_models"
ARTIFACT_PATH = "best_model"
TAG = "raysel.best_model."


class BestModelBoard:
    """Each arm's best offer so far (a Ray actor; one call at a time: a check and its record are one step)."""

    def __init__(self, mode: str, best: dict[str, dict[str, Any]] | None = None):
        self.mode = mode
        self.best = dict(best or {})  # arm -> {"trial_id", "value", "staged"}

    def offer(self, arm: str, trial_id: str, value: float) -> bool:
        """Whether ``value`` beats the arm's best so far (the trial then stages its model)."""
        held = self.best.get(arm)
        better = held is None or (value < held["value"] if self.mode == "min" else value > held["value"])
        if better:
            self.best[arm] = {"trial_id": trial_id, "value": value, "staged": False}
        return better

    def staged(self, arm: str, trial_id: str) -> None:
        if self.best.get(arm, {}).get("trial_id") == trial_id:
            self.best[arm]["staged"] = True

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.best)


def start_board(sweep: str, mode: str, best: dict[str, dict[str, Any]]) -> tuple[str, Any]:
    """The board actor for one run of the sweep's driver (``best``: what earlier runs logged), its name."""
    import uuid

    import ray

    name = f"raysel_best_models:{sweep}:{uuid.uuid4().hex[:8]}"
    return name, ray.remote(num_cpus=0)(BestModelBoard).options(name=name).remote(mode, best)


class BestModelOffer:
    """A trial's side: offer the trained model to its arm's board, stage it when it is the best so far."""

    def __init__(self, board: str, storage_path: str, arm: str, trial_id: str, metric: str):
        self.board, self.storage_path, self.arm, self.trial_id, self.metric = board, storage_path, arm, trial_id, metric

    def offer(self, model: Any, value: float | None) -> bool:
        """Stage ``model`` if ``value`` (its protocol metric) is its arm's best so far; whether it was."""
        import ray

        if value is None or value != value:  # no metric (a failed evaluation): nothing to compare
            return False
        board = ray.get_actor(self.board)
        if not ray.get(board.offer.remote(self.arm, self.trial_id, float(value))):
            return False
        folder = f"{STAGING}/{self.arm}/{self.trial_id}"
        storage = Storage.parse(self.storage_path)
        getattr(model, "module", model).save_pretrained(storage.local / folder)
        (storage.local / folder / "raysel_best_model.json").write_text(json.dumps(
            {"arm": self.arm, "trial_id": self.trial_id, "metric": self.metric, "value": float(value)}))
        storage.upload(folder)
        ray.get(board.staged.remote(self.arm, self.trial_id))
        return True


def log_staged(board: Any, sweep_dir: Storage, tracking_uri: str, parent_run_id: str, metric: str,
               logged: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """After a phase: log each arm whose best changed into the parent run (``best_model/ARM``, the tag
    ``raysel.best_model.ARM``), then delete every staged folder. Returns what is logged now per arm."""
    import ray

    from raysel.tracking import log_artifacts, set_run_tags

    best = ray.get(board.snapshot.remote())
    for arm, held in best.items():
        if not held["staged"] or logged.get(arm, {}).get("trial_id") == held["trial_id"]:
            continue
        folder = sweep_dir.download(f"{STAGING}/{arm}/{held['trial_id']}")
        log_artifacts(tracking_uri, parent_run_id, sorted(folder.iterdir()), f"{ARTIFACT_PATH}/{arm}")
        set_run_tags(tracking_uri, parent_run_id, {TAG + arm: json.dumps(
            {"trial_id": held["trial_id"], "metric": metric, "value": held["value"]})})
        logged = {**logged, arm: held}
    _delete_staging(sweep_dir)
    return logged


def logged_before(tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What a parent run's tags say was logged (a resumed sweep's board starts from it)."""
    return {key[len(TAG):]: {**json.loads(value), "staged": True} for key, value in tags.items() if key.startswith(TAG)}


def _delete_staging(sweep_dir: Storage) -> None:
    shutil.rmtree(sweep_dir.local / STAGING, ignore_errors=True)
    if not sweep_dir.is_local:
        fs, path = sweep_dir.filesystem()
        try:
            fs.delete_dir(f"{path}/{STAGING}")
        except (FileNotFoundError, OSError):
            pass


def load_best_model(tracking_uri: str, parent_run_id: str, arm: str, dst: str | Path) -> Path:
    """Download an arm's logged best model: a directory ``from_pretrained`` loads."""
    from raysel.tracking import download_artifact

    return Path(download_artifact(tracking_uri, parent_run_id, f"{ARTIFACT_PATH}/{arm}", str(dst)))
