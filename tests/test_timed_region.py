"""What runs between a start and a stop of a run's clock, traced on a CPU run and checked
against the list in docs/timing.md ("Inside the timed region"): each item there names the
code that does it in backticks, every call the timed stretches make from hlb/train.py into the
method is one of those, every item happens, and nothing of the bench (the progress table, its
estimate) nor a divergence read runs inside."""

import importlib
import io
import re
import sys
from pathlib import Path

import pytest

from conftest import synthetic_cifar
from hlb.bench.overrides import override
from hlb.bench.report import Progress, Table
from hlb.bench.runs import PreparedRecipe
from hlb.recipes import RECIPES

train = importlib.import_module("hlb.train")     # hlb.train is also the API's function
ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "hlb" / "train.py")
BENCH = str(ROOT / "hlb" / "bench")
# train.py's own plumbing of the timed stretches: they hold the listed work, they are not it.
PLUMBING = {"PreparedRun._train_epoch", "PreparedRun.prepare_data", "TestSet.tta_accuracy"}


def listed():
    """[(item, its code names)] from docs/timing.md's "Inside the timed region"."""
    text = (ROOT / "docs" / "timing.md").read_text()
    section = re.search(r"^## Inside the timed region\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "docs/timing.md has no '## Inside the timed region' section"
    items = re.findall(r"^- (.*?)(?=^- |^\s*$|\Z)", section.group(1), re.M | re.S)
    return [(" ".join(item.split()), re.findall(r"`([A-Za-z_][\w.]*)`", item))
            for item in items]


class Tracer:
    """A profile hook that, while a run's Stopwatch runs, keeps the method's functions that
    hlb/train.py calls, the `.item()` reads and their callers, and any bench or test code."""

    def __init__(self):
        self.inside = False
        self.called, self.reads, self.foreign = set(), set(), set()

    def __call__(self, frame, event, arg):
        if not self.inside or event not in ("call", "c_call"):
            return
        caller = frame if event == "c_call" else frame.f_back
        if event == "c_call":
            if getattr(arg, "__name__", "") == "item" and caller.f_code.co_filename == TRAIN:
                self.reads.add(caller.f_code.co_qualname)
            return
        code = frame.f_code
        if code.co_qualname.endswith(("Stopwatch.start", "Stopwatch.stop")):
            return                                  # the clock itself
        if code.co_filename.startswith(BENCH) or code.co_filename == __file__:
            self.foreign.add(f"{frame.f_globals['__name__']}.{code.co_qualname}")
        elif frame.f_globals["__name__"].startswith("hlb."):
            while caller is not None and not caller.f_globals["__name__"].startswith("hlb."):
                caller = caller.f_back          # through torch's decorators (no_grad)
            if caller is not None and caller.f_code.co_filename == TRAIN:
                self.called.add(code.co_qualname)


@pytest.fixture
def tracer(monkeypatch):
    tracer = Tracer()

    class TracedStopwatch(train.Stopwatch):
        def start(self):
            super().start()
            tracer.inside = True

        def stop(self):
            tracer.inside = False
            super().stop()

    monkeypatch.setattr(train, "Stopwatch", TracedStopwatch)
    return tracer


def traced_run(tracer, recipe, target_acc=None):
    """One CPU run of `recipe` through the bench (a live progress table) with the tracer on."""
    prepared = PreparedRecipe(recipe, "cpu", synthetic_cifar(128, 64), seed=0)
    table = Table(stream=io.StringIO(), live=True, min_interval=0.0,
                  progress=Progress(long_s=0.0))
    table.planned(1, recipe.total_steps())
    sys.setprofile(tracer)
    try:
        result = prepared.run(0, 1, table, target_acc)
    finally:
        sys.setprofile(None)
    assert "step" in table.stream.getvalue()       # the progress line was drawn, outside
    return result


def matches(name, called):
    return name in called or f"{name}.__init__" in called


def test_what_runs_inside_the_timed_region_is_what_docs_timing_lists(tracer):
    recipe = override(RECIPES["smoke"], [
        "train_images=128", "test_images=64", "batch_size=64", "epochs=2", "widths=8,8,8",
        "whiten_init_images=64", "eval_batch_size=64", "lookahead_every=2"])
    traced_run(tracer, recipe)
    traced_run(tracer, recipe, target_acc=0.0)     # stops after the first epoch's TTA check
    items = listed()
    assert len(items) >= 7 and all(names for _, names in items), items
    named = {name for _, names in items for name in names}
    assert not tracer.foreign, f"bench or test code ran inside the timed region: {tracer.foreign}"
    assert tracer.reads <= {"TargetCheck.measure"}, f"reads inside: {tracer.reads}"
    unlisted = {c for c in tracer.called - PLUMBING
                if not any(c in (n, f"{n}.__init__") for n in named)}
    assert not unlisted, f"inside the timed region but not in docs/timing.md: {unlisted}"
    for item, names in items:
        assert any(matches(n, tracer.called) for n in names), f"listed but never ran: {item}"
