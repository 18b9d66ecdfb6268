"""What the sweep shows and keeps of its trials without Ray: the progress bar's counts and the
trials table (fake trial and result objects with Tune's fields)."""
from __future__ import annotations


def test_trials_frame_keeps_errors_as_plain_text():
    from types import SimpleNamespace

    from raysel.protocols import Phase
    from raysel.sweep import trials_frame

    failed = SimpleNamespace(config={"variant": {"arm": "a", "method": "standard", "stage": "seeds", "params": {}},
                                     "seed": 0},
                             metrics={"trial_id": "t1"}, path="/x",
                             error=RuntimeError("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1) failed"))
    frame = trials_frame([failed], Phase(label="seeds", stage="seeds", variants=[], seeds=[0]))
    assert frame.loc[0, "error"] == "RuntimeError: ray::ImplicitFunc.train() (pid=1) failed"


def test_the_progress_bar_counts_trials_from_their_statuses_and_a_resumed_phase_from_its_results():
    from types import SimpleNamespace

    from raysel.progress import SweepProgress

    def trial(i, status, value=None):
        return SimpleNamespace(trial_id=f"t{i}", status=status, path="/x",
                               last_result={} if value is None else {"dev_loss": value, "step": 3,
                                                                     "done": status == "TERMINATED"})

    bar = SweepProgress("s", "seeds", 4, "dev_loss", "min", enabled=False)
    restored = [trial(0, "TERMINATED", 2.0), trial(1, "TERMINATED", 1.5), trial(2, "PENDING")]
    bar.on_step_begin(0, restored)  # a resumed phase: two trials ended before, without callbacks now
    assert (bar.done, bar.failed, bar.running, bar.best) == (2, 0, set(), 1.5)
    running = trial(2, "RUNNING")
    bar.on_trial_start(1, restored[:2] + [running], running)
    assert bar.running == {"t2"}
    bar.on_trial_error(2, restored[:2] + [running], running)  # Tune calls back before setting ERROR
    assert (bar.done, bar.failed, bar.running) == (2, 1, set())

    fresh = SweepProgress("s", "seeds", 4, "dev_loss", "min", enabled=False)  # a restored Tuner never calls it
    results = [SimpleNamespace(metrics={"dev_loss": v, "done": True}, error=None) for v in (2.0, 1.5, 1.2)]
    failed = SimpleNamespace(metrics={}, error=RuntimeError("boom"))
    interrupted = SimpleNamespace(metrics={"dev_loss": 1.9}, error=None)  # TERMINATED by a Ctrl+C, not done
    fresh.count_results(_Grid(results + [failed, interrupted]))
    assert (fresh.done, fresh.failed, fresh.best) == (3, 1, 1.2)


class _Grid(list):
    @property
    def num_errors(self) -> int:
        return sum(result.error is not None for result in self)
