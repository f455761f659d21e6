"""The end of a search (hlb.bench.tune): its trials ranked, the best confirmed, one record.

    hlb.tune("smoke", space=["lr=4:12"], runs=3, trials=20)  # -> TuneResult, nothing printed

The ranked table lists the complete trials, best first (the time objective: feasible ones
first, least time first). `--confirm K` runs the K best again on fresh seeds (seed + runs
onwards, which no trial ran) interleaved with the base recipe, through the sweep's machinery
(hlb.bench.sweep: paired by seed, simultaneous intervals, Holm-adjusted p-values), because
the best of many noisy trials is biased upward. The record (FORMAT) is a plain record of the
best trial's runs (`runs` and `compare` read it so) with every trial and the confirmation.
"""

import dataclasses
import math
import time
from dataclasses import dataclass, field

from hlb.bench import tune as search
from hlb.bench.flops import run_flops
from hlb.bench.overrides import override
from hlb.bench.records import runs_of
from hlb.bench.report import Listener, jsonable
from hlb.bench import runs as runner
from hlb.bench.dist import placement
from hlb.bench.runs import LocalScheduler, PreparedRecipe, resolve_device, run_rounds
from hlb.bench.stats import confidence_interval, mean
from hlb.bench.sweep import SweepRun, make_grid, sweep_dict, table_lines
from hlb.errors import UsageError
from hlb.recipes import get_recipe


@dataclass
class TrialRow:
    number: int
    state: str                # complete, pruned, failed, running, waiting
    texts: list               # the "key=value" of its values
    value: float = math.nan
    results: list = field(default_factory=list)
    why: str = None           # why it was pruned or failed
    constraint: float = None  # the time objective's: <= 0 feasible
    gflops: float = None      # accuracy-only: the timed GFLOPs of one run

    @property
    def accs(self):
        return [r.tta_acc for r in self.results if not r.diverged]

    @property
    def acc_mean(self):
        return mean(self.accs) if self.accs else math.nan

    @property
    def time_mean(self):
        done = [r.train_time_s for r in self.results if not r.diverged]
        return mean(done) if done else math.nan

    @property
    def feasible(self):
        return self.constraint is None or self.constraint <= 0

    def to_dict(self):
        rows = [dataclasses.asdict(r) for r in self.results]
        return jsonable({"number": self.number, "state": self.state, "values": self.texts,
                         "value": self.value, "n": len(self.accs), "acc_mean": self.acc_mean,
                         "acc_ci95": confidence_interval(self.accs), "time_mean": self.time_mean,
                         "constraint": self.constraint, "feasible": self.feasible,
                         "gflops": self.gflops, "why": self.why,
                         "runs": [{k: v for k, v in r.items() if k != "epochs"} for r in rows]})


_STATES = {"FAIL": "failed"}       # Optuna's names, as the table says them


def trial_rows(plan, study, optuna):
    """Every trial of the study but the surplus ones, in number order."""
    rows, flops = [], {}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        texts = [d.value_text(t.params[d.key]) for d in plan.dims if d.key in t.params]
        saved = t.user_attrs.get("runs") or {"runs": [], "epochs": []}
        row = TrialRow(t.number, _STATES.get(t.state.name, t.state.name.lower()), texts,
                       t.value if t.value is not None else math.nan,
                       runs_of(saved, f"study {plan.study} trial {t.number}"),
                       t.user_attrs.get("pruned") or t.user_attrs.get("failure"),
                       t.user_attrs.get("constraint"))
        if plan.accuracy_only and row.state == "complete":
            key = tuple(texts)
            if key not in flops:
                flops[key] = run_flops(override(plan.base, texts)).timed / 1e9
            row.gflops = flops[key]
        rows.append(row)
    return rows


def ranked(plan, rows):
    """The complete trials, best first."""
    done = [r for r in rows if r.state == "complete"]
    if plan.objective == "accuracy":
        return sorted(done, key=lambda r: (-r.value, r.number))
    return sorted(done, key=lambda r: (not r.feasible, r.value, r.number))


def _acc(row):
    lo, hi = confidence_interval(row.accs)
    return f"{100 * row.acc_mean:.2f}" + ("" if math.isnan(lo) else
                                          f" ({100 * lo:.2f} to {100 * hi:.2f})")


def best_lines(plan, rows, top=10):
    """The ranked table of the best trials and a count of every state."""
    best = ranked(plan, rows)[:top]
    cost = "GFLOP" if plan.accuracy_only else "time s"
    header = ["#", "trial", "values", "n", "acc % (95% CI)", cost]
    header += ["feasible"] if plan.objective == "time" else []
    body = []
    for i, r in enumerate(best, 1):
        cells = [str(i), str(r.number), " ".join(r.texts), str(len(r.accs)), _acc(r),
                 f"{r.gflops:.1f}" if plan.accuracy_only else f"{r.time_mean:.3f}"]
        body.append(cells + (["yes" if r.feasible else "no"] if plan.objective == "time"
                             else []))
    counts = {s: sum(r.state == s for r in rows) for s in ("complete", "pruned", "failed")}
    tail = (f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} "
            f"failed trial(s) in study {plan.study} ({search.shown_url(plan.storage)})")
    if not body:
        return ["no complete trial yet", tail]
    widths = [max(len(h), *(len(c[k]) for c in body)) for k, h in enumerate(header)]
    left = {2, 4}

    def line(cells):
        return "  ".join(c.ljust(w) if k in left else c.rjust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header)] + [line(c) for c in body] + [tail, _rule(plan)]


def _rule(plan):
    if plan.objective == "accuracy":
        return "ranked by mean TTA accuracy over the same seeds (higher is better)"
    return (f"ranked by mean time among the feasible trials: accuracy not below "
            f"{100 * plan.target:.2f}% by a one-sided t-test at level {search.ALPHA}")


# Confirmation: the best again, on fresh seeds, beside the base


def confirm(plan, rows, cifar, device, show=None):
    """The sweep Outcome of the K best trials rerun on fresh seeds with the base, or None."""
    best = [r for r in ranked(plan, rows) if r.feasible][:plan.confirm]
    if not best:
        return None
    cells = [" ".join(f"--set {t}" for t in r.texts) for r in best]
    grid = make_grid(plan.base, plan.sets, [], plan.confirm_runs, cells=cells)
    sweep = SweepRun(grid)
    listeners = sweep.listeners if show else [Listener() for _ in sweep.listeners]
    prepared = [PreparedRecipe(c.recipe, device, cifar, plan.seed + plan.runs, c.overrides,
                               plan.accuracy_only) for c in [grid.base] + grid.cells]
    records = run_rounds(prepared, plan.confirm_runs, listeners, LocalScheduler(device))
    return sweep.outcome(records)


def verdict_lines(plan, outcome, best):
    """Which confirmed trial beat the base, and by how much."""
    lines = []
    by_name = {r.name: r for r in outcome.rows()[1:]}
    for cell, trial in zip(outcome.grid.cells, best):
        row = by_name[cell.name]
        if row.acc is None or math.isnan(row.acc.p_value):
            lines.append(f"trial {trial.number}: too few runs to tell")
            continue
        (alo, ahi), (tlo, thi) = row.acc.ci95, row.time.ci95
        acc = (f"{100 * row.acc.diff:+.2f} points ({100 * alo:+.2f} to {100 * ahi:+.2f})")
        secs = f"{row.time.diff:+.3f} s ({tlo:+.3f} to {thi:+.3f})"
        if plan.objective == "accuracy":
            won = alo > 0
            what = f"accuracy {acc}"
        else:
            reached = search.constraint([r.tta_acc for r in outcome.records[
                outcome.grid.cells.index(cell) + 1].results if not r.diverged],
                plan.target) <= 0
            won = thi < 0 and reached
            what = (f"time {secs}, accuracy {100 * row.acc_mean:.2f}% "
                    + ("not below" if reached else "below") + " the target")
        lines.append(f"trial {trial.number} ({cell.name}): {what} against the base: "
                     + ("beats it" if won else "does not beat it"))
    return lines


# The record and the Python API


@dataclass
class TuneResult:
    plan: object
    rows: list                # TrialRow per trial, by number
    best: list                # the complete ones, best first
    confirmation: object = None   # the sweep Outcome of --confirm, or None
    fingerprint: str = ""
    device: str = ""
    wall_s: float = 0.0

    def lines(self):
        out = best_lines(self.plan, self.rows)
        if self.confirmation is not None:
            out += [f"confirmation: the {len(self.confirmation.grid.cells)} best on fresh "
                    f"seeds {self.plan.seed + self.plan.runs}.."
                    f"{self.plan.seed + self.plan.runs + self.plan.confirm_runs - 1}, "
                    "interleaved with the base"]
            out += table_lines(self.confirmation)
            out += verdict_lines(self.plan, self.confirmation, self.best)
        return out


def tune_dict(result, argv=None):
    """The record: a plain record of the best trial's runs, with every trial, the search and
    the confirmation (its sweep record without the parts it repeats). JSON values only."""
    plan = result.plan
    if result.best:
        data = search.trial_record(plan, result.best[0], result.fingerprint, result.device,
                                   argv)
    else:
        data = search.trial_record(plan, TrialRow(-1, "none", []), result.fingerprint,
                                   result.device, argv)
        data["stopped"] = "no trial finished"
    confirmation = None
    if result.confirmation is not None:
        confirmation = {k: v for k, v in sweep_dict(result.confirmation, argv).items()
                        if k not in ("argv", "environment", "format")}
    data.update(format=search.FORMAT, study=plan.study,
                storage=search.shown_url(plan.storage), objective=plan.objective,
                target=plan.target, alpha=search.ALPHA, prune=plan.prune,
                prune_alpha=search.PRUNE_ALPHA if plan.prune else None,
                space=[d.text() for d in plan.dims], trials_asked=plan.trials,
                best_trials=[r.number for r in result.best],
                trials=[r.to_dict() for r in result.rows], confirmation=confirmation,
                wall_s=result.wall_s)
    return jsonable(data)


def run_search(plan, load, device, show=None, listener=None):
    """Open the study (a storage fault is one line before any data), load the data
    (`load()`), work on the study until it holds plan.trials trials, then rank and confirm;
    the TuneResult. `show` prints a line per trial (None: nothing)."""
    optuna = search.optuna_module()
    wall = time.perf_counter()
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)     # failures are our lines, not logs
    try:
        study = search.open_study(plan, optuna)
        cifar = load()
        worker = search.Worker(plan, study, cifar, device, show, listener or Listener())
        worker.work(optuna)
        with search.storage_faults(plan.storage):
            rows = trial_rows(plan, study, optuna)
    finally:
        optuna.logging.set_verbosity(previous)
    result = TuneResult(plan, rows, ranked(plan, rows), None, cifar.fingerprint,
                        device, 0.0)
    if plan.confirm:
        result.confirmation = confirm(plan, rows, cifar, device, show)
    result.wall_s = time.perf_counter() - wall
    return result


def tune(recipe="94", space=(), objective="accuracy", target=None, runs=2, trials=20,
         overrides=(), seed=0, study=None, storage=None, sampler_seed=None, prune=False,
         confirm=0, confirm_runs=None, device=None, data_dir=None, accuracy_only=False,
         heartbeat_s=10):
    """Search `space` ("key=LOW:HIGH[:log]" or "key=A,B,C" texts) of `recipe` on Optuna and
    return a TuneResult (its `lines()` are what the command prints). Prints nothing."""
    base = override(get_recipe(recipe) if isinstance(recipe, str) else recipe, overrides)
    if not isinstance(space, (list, tuple)):
        raise UsageError("space is a list of \"key=LOW:HIGH\" or \"key=A,B\" texts")
    plan = search.check_plan(search.Plan(
        base, list(overrides), search.make_space(space, base, overrides), objective, target,
        runs, trials, seed, study, storage, sampler_seed, prune, accuracy_only, heartbeat_s,
        confirm, confirm_runs))
    search.optuna_module()
    device = resolve_device(device)
    return run_search(plan, data_loader(data_dir), device)


def data_loader(data_dir):
    """CIFAR-10, loaded when the study is open (hlb.bench.runs.load_data)."""
    return lambda: runner.load_data(data_dir)


def tune_device(device, world, accuracy_only):
    """This worker's device: under torchrun each rank is a worker of its own, on its GPU
    (several ranks a GPU with --accuracy-only), with no process group: the storage is
    what they share."""
    if world is None or device != "cuda":
        return device
    import torch
    return placement(world.local_rank, device, accuracy_only, torch.cuda.device_count())[0]
