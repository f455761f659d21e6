"""The runner (hlb.bench.runs.run_rounds) in one process, with a stand-in for training so that the
rounds, the round hook, stopping, filing in run order and failures are checked in seconds."""

import pytest
import torch

from conftest import synthetic_cifar
from hlb.bench.overrides import override
from hlb.bench.report import Listener
from hlb.bench.runs import LocalScheduler, PreparedRecipe, Stopped, run_rounds
from hlb.errors import HlbError, Unexpected
from hlb.recipes import RECIPES
from hlb.train import EpochRow, PreparedRun, RunResult

RECIPE = override(RECIPES["smoke"], ["train_images=256", "test_images=128", "batch_size=64",
                                     "whiten_init_images=128", "widths=8,16,16"])


@pytest.fixture
def fake_training(monkeypatch):
    """A run answers at once: accuracy 0.5 + seed / 1000; `failing` maps a run to the
    exception it raises."""
    failing = {}

    def train_run(self, seed, run=0, on_epoch=None, **kwargs):
        if run in failing:
            raise failing[run]
        row = EpochRow(run, 1, 2.0, 0.3, 2.1, 0.3, 0.1)
        if on_epoch:
            on_epoch(row)
        return RunResult(run=run, seed=seed, tta_acc=0.5 + seed / 1000, val_acc=0.3,
                         train_time_s=0.1, epochs=[row])

    monkeypatch.setattr(PreparedRun, "run", train_run)
    return failing


class Log(Listener):
    """Remembers what it heard; only the methods a test looks at are overridden."""

    def __init__(self, name, heard):
        self.name, self.heard = name, heard

    def run_started(self, run, runs):
        self.heard.append((self.name, "start", run))

    def run_finished(self, result):
        self.heard.append((self.name, "done", result.run))


def _prepared(seed=0, n=1):
    data = synthetic_cifar(256, 128)
    return [PreparedRecipe(RECIPE, "cpu", data, seed) for _ in range(n)]


def test_rounds_take_turns_and_file_in_run_order(fake_training):
    heard, rounds = [], []
    prepared = _prepared(seed=3, n=2)
    records = run_rounds(prepared, 3, [Log("A", heard), Log("B", heard)],
                         LocalScheduler("cpu"),
                         on_round=lambda records, finished: rounds.append(
                             ([len(r.results) for r in records], finished,
                              records[0].stopped)))
    # Locally each run is shown whole before the next recipe's run starts.
    assert heard == [(arm, what, i) for i in range(3) for arm in "AB"
                     for what in ("start", "done")]
    assert [[r.seed for r in rec.results] for rec in records] == [[3, 4, 5], [3, 4, 5]]
    assert rounds == [([1, 1], False, "unfinished: 1 of 3 run(s) gathered"),
                      ([2, 2], False, "unfinished: 2 of 3 run(s) gathered"),
                      ([3, 3], True, None)]
    assert all(r.stopped is None and r.summary.n == 3 for r in records)


def test_the_round_hook_can_stop_a_recipe_which_keeps_its_runs(fake_training):
    heard = []
    records = run_rounds(_prepared(n=2), 4, [Log("A", heard), Log("B", heard)],
                         LocalScheduler("cpu"),
                         on_round=lambda records, finished: {1} if len(
                             records[0].results) == 2 else ())
    assert [len(r.results) for r in records] == [4, 2]
    assert records[1].summary.n == 2 and records[1].stopped is None
    assert ("B", "start", 2) not in heard


def test_runs_already_in_a_record_are_kept_and_not_run_again(fake_training):
    """What a resume would do: the record arrives holding runs 0 and 2."""
    prepared, = _prepared()
    kept = [RunResult(run=i, seed=i, tta_acc=0.9, train_time_s=1.0) for i in (0, 2)]
    prepared.record.results = list(kept)
    heard = []
    planned = []
    log = Log("A", heard)
    log.planned = lambda runs, steps: planned.append((runs, steps))
    record, = run_rounds([prepared], 4, [log], LocalScheduler("cpu"))
    assert [r.run for r in record.results] == [0, 1, 2, 3]
    assert record.results[0] is kept[0] and record.results[2] is kept[1]
    assert [h[2] for h in heard if h[1] == "start"] == [1, 3]
    assert planned == [(2, RECIPE.total_steps())]       # told before, for the time left
    assert record.runs_asked == 4


@pytest.mark.parametrize("fault, kind, text", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB."), HlbError,
     "out of GPU memory (Tried to allocate 3.00 GiB) at batch_size 64"),
    (RuntimeError("deep inside"), Unexpected, "unexpected RuntimeError (deep inside) at"),
    (HlbError("a known problem", 3), HlbError, "a known problem"),
])
def test_a_failing_run_stops_with_the_finished_runs(fake_training, fault, kind, text):
    fake_training[2] = fault
    with pytest.raises(Stopped) as stopped:
        run_rounds(_prepared(), 4, [Listener()], LocalScheduler("cpu"))
    record, = stopped.value.records
    assert [r.run for r in record.results] == [0, 1] and record.summary.n == 2
    error = stopped.value.error
    assert type(error) is kind and text in str(error) and record.stopped == str(error)
    if kind is Unexpected:
        assert "Traceback" in error.traceback and "deep inside" in error.traceback


def test_a_failing_round_hook_stops_the_runs(fake_training):
    def hook(records, finished):
        raise HlbError("could not write the record")

    with pytest.raises(Stopped) as stopped:
        run_rounds(_prepared(), 3, [Listener()], LocalScheduler("cpu"), on_round=hook)
    assert len(stopped.value.records[0].results) == 1
    assert "could not write the record" in str(stopped.value.error)


def test_ctrl_c_keeps_every_run_shown_as_finished(fake_training):
    fake_training[1] = KeyboardInterrupt()
    heard = []
    with pytest.raises(Stopped) as stopped:
        run_rounds(_prepared(), 3, [Log("A", heard)], LocalScheduler("cpu"))
    assert isinstance(stopped.value.error, KeyboardInterrupt)
    record, = stopped.value.records
    assert [r.run for r in record.results] == [h[2] for h in heard if h[1] == "done"] == [0]
    assert record.stopped == "interrupted"


def test_ctrl_c_while_a_finished_run_is_shown_keeps_it(fake_training):
    class Interrupted(Listener):
        def run_finished(self, result):
            raise KeyboardInterrupt

    with pytest.raises(Stopped) as stopped:
        run_rounds(_prepared(), 3, [Interrupted()], LocalScheduler("cpu"))
    assert [r.run for r in stopped.value.records[0].results] == [0]


def test_the_listener_declares_its_calls():
    for name in ("planned", "warmup_started", "warmup_finished", "run_started", "step", "epoch",
                 "run_finished"):
        assert callable(getattr(Listener, name))
    with pytest.raises(AttributeError):
        Listener().run_finshed          # a misspelt call fails, not silently
