"""The search phases' persistent Optuna studies (``protocol.study_storage``).

Each search phase asked of an Optuna searcher (tpe, random, cmaes) keeps its trials in an Optuna study
named ``{sweep}/{phase}`` (e.g. ``opf-search/search-opf``) in an RDB storage: by default the SQLite file
``optuna.db`` in the sweep's directory, or any SQLAlchemy URL the spec gives (a database every driver
reaches, on a cluster). ``optuna-dashboard URL`` shows the search live; ``--resume`` goes on in the same
study; the report reads its trials (each carries the Tune trial id as the user attribute
``raysel.trial_id``).

A driver killed between asking Optuna for a trial and saving Tune's state leaves that trial RUNNING in the
study while Tune never heard of it: on resume it is marked FAIL with the user attribute
``raysel.abandoned``, so that no trial stays RUNNING forever and the COMPLETE ones are one for one the
trials that ran to their end.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

STUDY_FILE = "optuna.db"
TRIAL_ID_ATTR = "raysel.trial_id"
ABANDONED_ATTR = "raysel.abandoned"


def study_name(sweep: str, phase_label: str) -> str:
    return f"{sweep}/{phase_label}"


def storage_url(given: str | None, sweep_dir: Path) -> str:
    """The spec's ``protocol.study_storage``, or the SQLite file in the sweep's directory (on this machine:
    a URI storage's local mirror)."""
    return given or f"sqlite:///{Path(sweep_dir) / STUDY_FILE}"


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot hold the studies (not an SQLAlchemy URL, its driver missing, its database not
    answering, a SQLite file's directory missing), or None. Creates nothing."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    allowed = "an SQLAlchemy URL such as sqlite:////abs/path/optuna.db or postgresql://user@host/db"
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return f"{url!r} is not an SQLAlchemy URL; give {allowed}"
    shown = parsed.render_as_string(hide_password=True)
    try:
        parsed.get_dialect().import_dbapi()
    except (sqlalchemy.exc.NoSuchModuleError, ImportError) as err:
        return f"{shown!r}: no database driver for it on this machine ({err}); install the driver, or give {allowed}"
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return f"{shown!r} is not a SQLite file (a study in memory would not persist); give {allowed}"
        folder = Path(database).expanduser().parent
        if not folder.is_dir():
            return f"{shown!r}: the directory {folder} does not exist"
        return None
    try:
        sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5}).connect().close()
    except Exception as err:  # the drivers' own errors: whatever stops us from connecting
        return f"{shown!r}: the database does not answer ({type(err).__name__}: {str(err).splitlines()[0]})"
    return None


def open_storage(url: str):
    """The RDB storage at ``url`` (its tables made if new)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.RDBStorage(url)


def load_study(url: str, name: str) -> Any:
    """The study ``name`` at ``url``, or None when there is none (nothing is created)."""
    import optuna

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None  # opening it would create it
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:  # no study of that name
        return None


def close_abandoned(study: Any, known: set[int]) -> int:
    """Mark FAIL (with ``raysel.abandoned``) the study's RUNNING trials that Tune does not know (numbers not
    in ``known``): a killed driver's. Returns how many."""
    import optuna

    abandoned = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                 if t.number not in known]
    for trial in abandoned:
        study._storage.set_trial_user_attr(trial._trial_id, ABANDONED_ATTR,
                                           "the driver stopped before Tune recorded this trial")
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(abandoned)


def __getattr__(name: str) -> Any:
    # StudySearch subclasses a Ray class: made on first use, so that the report reads studies without Ray
    if name == "StudySearch":
        return _study_search_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _study_search_class() -> type:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    running, failed = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL

    class StudySearch(OptunaSearch):
        """Ray Tune's OptunaSearch with the Tune trial id on each Optuna trial, a trial whose metric Optuna
        refuses (NaN) told as FAIL instead of left RUNNING, reports without the metric (e.g. IGF's learner
        numbers before its first evaluation) passed over instead of crashing the sweep, and abandoned
        trials closed on restore."""

        def suggest(self, trial_id: str) -> dict | None:
            new = trial_id not in self._ot_trials
            config = super().suggest(trial_id)
            if new and trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr(TRIAL_ID_ATTR, trial_id)
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id not in getattr(self, "_told_before", ()) and self.metric in result:
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in getattr(self, "_told_before", ()):
                return
            super().on_trial_complete(trial_id, result, error)
            trial = self._ot_trials.get(trial_id)
            if trial is not None and self._storage.get_trial(trial._trial_id).state == running:
                self._ot_study.tell(trial, state=failed)  # Optuna refused the value (NaN, inf)

        def restore(self, checkpoint_path: str) -> None:
            """Tune's saved state may be older than the study: a trial it restarts may have been told to the
            study already (its result there stands: Optuna's trials cannot change once finished), and a
            trial asked of the study after the save is not Tune's at all (closed as abandoned)."""
            super().restore(checkpoint_path)
            known = {t.number: trial_id for trial_id, t in self._ot_trials.items()}
            self._told_before = {known[t.number] for t in self._ot_study.get_trials(deepcopy=False)
                                 if t.number in known and t.state.is_finished()}
            close_abandoned(self._ot_study, known=set(known))

    StudySearch.__module__ = __name__
    StudySearch.__qualname__ = "StudySearch"
    return StudySearch


# ---------------------------------------------------------------- the report's side (no Ray)
PARAM_PREFIX = "variant/params/"  # how Ray Tune names a searched parameter in the study


def arm_trials(url: str, sweep: str, arms: list[str]) -> dict[str, list]:
    """Per arm, the trials (Optuna's FrozenTrial) of its search phase's study; arms without one left out."""
    from raysel.protocols import search_label

    found = {}
    for arm in arms:
        study = load_study(url, study_name(sweep, search_label(arm)))
        if study is not None:
            found[arm] = study.get_trials(deepcopy=False)
    return found


def searched(trial: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A study trial's searched params and their distributions, named as the spec names them."""
    return ({k.removeprefix(PARAM_PREFIX): v for k, v in trial.params.items()},
            {k.removeprefix(PARAM_PREFIX): v for k, v in trial.distributions.items()})


def trial_table(trials_by_arm: dict[str, list]) -> pd.DataFrame:
    """One row per study trial: arm, trial_id (Tune's), optuna_trial (its number), optuna_state."""
    import pandas as pd

    rows = [{"arm": arm, "trial_id": t.user_attrs.get(TRIAL_ID_ATTR), "optuna_trial": t.number,
             "optuna_state": t.state.name} for arm, trials in trials_by_arm.items() for t in trials]
    return pd.DataFrame(rows, columns=["arm", "trial_id", "optuna_trial", "optuna_state"])


def studies_note(url: str, trials_by_arm: dict[str, list]) -> str:
    """The report's line on the studies: where they are, their trials' states, the dashboard command."""
    counts = []
    for arm, trials in trials_by_arm.items():
        states = _state_counts([t.state.name.lower() for t in trials])
        abandoned = sum(ABANDONED_ATTR in t.user_attrs for t in trials)
        counts.append(f"{arm} {states}" + (f" ({abandoned} abandoned by a stopped driver)" if abandoned else ""))
    return (f"Optuna studies in {url}: {'; '.join(counts)}; browse them with: optuna-dashboard {url}")


def _state_counts(states: list[str]) -> str:
    order = ["complete", "pruned", "fail", "running", "waiting"]
    return ", ".join(f"{states.count(s)} {s}" for s in order if states.count(s))
