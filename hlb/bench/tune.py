"""A search over a recipe's knobs on Optuna: its TPE sampler and its storages, many workers.

    hlb tune --recipe smoke --space lr=4:12 --space label_smoothing=0.05:0.3 --runs 3 --trials 20

Every trial runs the same seeds (seed .. seed+runs-1), so trials compare paired. The study
lives in an Optuna storage (a SQLite file under the runs folder by default; any database URL;
a journal file with `journal:PATH`), so the same command started again, elsewhere, or under
torchrun is another worker of the same study. Nothing here samples or stores by hand.

The rules, each at its stated level:
- `--objective accuracy` maximises the mean TTA accuracy of a trial's runs;
- `--objective time --target ACC` minimises their mean timed seconds among the feasible
  trials: those whose accuracy is not below ACC by a one-sided one-sample t-test at level
  ALPHA (Optuna's constraint, set on the trial: ACC minus the upper 1 - ALPHA bound of the
  mean, feasible when <= 0);
- `--prune`: after PRUNE_MIN_RUNS runs and before the last, a trial stops once it is below
  the target (time) or below the best complete trial (accuracy, paired over the same seeds)
  by a one-sided test at PRUNE_ALPHA / looks (a union bound over the looks one trial takes);
- a trial with a diverged run, or whose values break a rule between fields, fails, and the
  search goes on; failed trials do not count towards --trials.
The best of many noisy trials is biased upward: `--confirm K` runs the K best again on fresh
seeds beside the base, through the sweep's paired, Holm-corrected table (hlb.bench.tune_report).
"""

import contextlib
import dataclasses
import itertools
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hlb.bench.overrides import override, parse_value, settable
from hlb.bench.records import TUNE_FORMAT, default_runs_dir
from hlb.bench.report import Listener, jsonable, record_dict
from hlb.bench.runs import (LocalScheduler, PreparedRecipe, Record, Stopped,
                            out_of_memory_error, run_rounds)
from hlb.bench.stats import mean, one_sided_p, paired_test, std, summarize, t_quantile
from hlb.bench.sweep import MAX_CRITICAL_T, critical_t
from hlb.errors import HlbError, UsageError
from hlb.files import reason
from hlb.knobs import OneOf, Span
from hlb.recipes import Recipe

FORMAT = TUNE_FORMAT
INSTALL_HINT = 'hlb tune needs Optuna: pip install ".[tune]" (or pip install optuna)'
ALPHA = 0.05              # one-sided level of the feasibility test (time objective)
PRUNE_ALPHA = 0.05        # a trial's chance of being pruned wrongly, over all its looks
PRUNE_MIN_RUNS = 2        # runs before a trial may be pruned (a t-test needs two)
MAX_FAILS_IN_A_ROW = 10   # a worker whose trials all fail stops and says why
OBJECTIVES = ("accuracy", "time")


def optuna_module():
    """Optuna, or one line naming the extra that installs it."""
    try:
        import optuna
    except ImportError:
        raise HlbError(INSTALL_HINT) from None
    return optuna


# The space: which fields vary, over what


@dataclass(frozen=True)
class Dim:
    key: str
    low: object = None        # numbers: the range, both ends included
    high: object = None
    log: bool = False
    choices: tuple = ()       # texts, as --set takes them; empty for a numeric range
    integer: bool = False

    def suggest(self, trial):
        """The "key=value" text of the value Optuna's sampler picks for this trial."""
        if self.choices:
            return self.value_text(trial.suggest_categorical(self.key, list(self.choices)))
        if self.integer:
            return self.value_text(trial.suggest_int(self.key, self.low, self.high,
                                                     log=self.log))
        return self.value_text(trial.suggest_float(self.key, self.low, self.high, log=self.log))

    def value_text(self, value):
        """"key=value" as --set takes it, for a value Optuna holds for this Dim."""
        if self.choices or self.integer:
            return f"{self.key}={value}"
        return f"{self.key}={value:.6g}"

    def text(self):
        if self.choices:
            return f"{self.key}={','.join(self.choices)}"
        return f"{self.key}={self.low:g}:{self.high:g}" + (":log" if self.log else "")


def _knob(key):
    return next(f.metadata.get("allowed") for f in dataclasses.fields(Recipe) if f.name == key)


def _allowed(base, key, text, item):
    """The value of `text` for `key`, checked as --set checks it (its range, the rules
    between fields, with the base's other values)."""
    try:
        return getattr(override(base, [f"{key}={text}"]), key)
    except UsageError as e:
        said = str(e)
        said = said[len("--set "):] if said.startswith("--set ") else said
        raise UsageError(f"--space {item}: {said}") from None


def _choices(base, key, text, item):
    between = "/" if settable()[key] is tuple else ","
    texts = tuple(t.strip() for t in text.split(between))
    if not all(texts) or len(texts) < 2:
        raise UsageError(f"--space {item}: give at least two choices, {key}=A{between}B...")
    values = [_allowed(base, key, t, item) for t in texts]
    if len(set(values)) < len(values):
        raise UsageError(f"--space {item}: a choice is given twice")
    return Dim(key, choices=texts)


def _number(key, text, item):
    try:
        return parse_value(key, text)
    except ValueError:
        kind = "an integer" if settable()[key] is int else "a number"
        raise UsageError(f"--space {item}: {text!r} is not {kind}") from None


def _range(base, key, text, item):
    """KEY=LOW:HIGH[:log] over a numeric field with a declared span."""
    parts = text.split(":")
    log = len(parts) == 3 and parts[2].strip() == "log"
    if len(parts) not in (2, 3) or len(parts) == 3 and not log:
        raise UsageError(f"--space {item}: expected {key}=LOW:HIGH or {key}=LOW:HIGH:log")
    if not isinstance(_knob(key), Span):
        raise UsageError(f"--space {item}: {key} takes one of a few values; list them, "
                         f"{key}=A,B")
    low, high = (_number(key, p.strip(), item) for p in parts[:2])
    if not low < high:
        raise UsageError(f"--space {item}: LOW must be below HIGH, not {low:g} >= {high:g}")
    if log and low <= 0:
        raise UsageError(f"--space {item}: a log range must stay above zero, not start at "
                         f"{low:g}; give LOW > 0 or drop :log")
    for value in (parts[0], parts[1]):         # a span holds what lies between its ends
        _allowed(base, key, value.strip(), item)
    return Dim(key, low, high, log, integer=settable()[key] is int)


def parse_space(item, base):
    """"KEY=LOW:HIGH[:log]" or "KEY=A,B,C" -> a Dim, every bound and choice checked against
    the field's declared range before any training (one UsageError line otherwise)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if key == "name":
        raise UsageError(f"--space {item}: name cannot vary (it names the recipe)")
    if not sep or not text.strip():
        raise UsageError(f"--space {item}: expected KEY=LOW:HIGH[:log] or KEY=A,B,C")
    if key not in settable():
        raise UsageError(f"--space {item}: unknown key {key!r}; valid keys: "
                         + ", ".join(sorted(settable())))
    numeric = settable()[key] in (int, float) and isinstance(_knob(key), (Span, OneOf))
    if ":" in text and numeric:
        return _range(base, key, text, item)
    if ":" in text:
        raise UsageError(f"--space {item}: {key} is not a number; list its choices, {key}=A,B")
    return _choices(base, key, text, item)


def make_space(items, base, sets):
    """The Dims of every --space item: none twice, none also given with --set."""
    if not items:
        raise UsageError("tune needs at least one --space KEY=LOW:HIGH[:log] or KEY=A,B,C")
    set_keys = {s.partition("=")[0].strip() for s in sets}
    dims = []
    for item in items:
        dim = parse_space(item, base)
        if dim.key in set_keys:
            raise UsageError(f"--space {item}: {dim.key} is also given with --set; set it or "
                             "search it")
        if dim.key in [d.key for d in dims]:
            raise UsageError(f"--space {dim.key} is given twice")
        dims.append(dim)
    return dims


# What one search is


@dataclass
class Plan:
    base: Recipe              # the recipe with the --set items
    sets: list                # those items
    dims: list                # Dim per --space
    objective: str = "accuracy"
    target: float = None      # ACC of the time objective (a fraction)
    runs: int = 2
    trials: int = 20
    seed: int = 0
    study: str = None         # the study's name (default: recipe and objective)
    storage: str = None       # a database URL or journal:PATH (default: runs/tune.db)
    sampler_seed: int = None
    prune: bool = False
    accuracy_only: bool = False
    heartbeat_s: int = 10     # a worker's sign of life; silent for twice this: failed, retried
    confirm: int = 0
    confirm_runs: int = None

    def identity(self):
        """What makes two commands workers of the same study (kept in the study)."""
        return jsonable({"format": FORMAT, "recipe": self.base.to_dict(),
                         "overrides": list(self.sets),
                         "space": [d.text() for d in self.dims], "objective": self.objective,
                         "target": self.target, "runs": self.runs, "seed": self.seed,
                         "accuracy_only": self.accuracy_only})


def check_plan(plan):
    if plan.objective not in OBJECTIVES:
        raise UsageError(f"--objective {plan.objective}: choose accuracy or time")
    if plan.objective == "time" and plan.target is None:
        raise UsageError("--objective time needs --target ACC (e.g. 0.94): the least time at "
                         "what accuracy?")
    if plan.target is not None and not 0 < plan.target <= 1:
        raise UsageError(f"--target is a fraction in (0, 1], not {plan.target}")
    if plan.objective == "time" and plan.accuracy_only:
        raise UsageError("--objective time needs the GPU to itself; --accuracy-only shares it "
                         "(use --objective accuracy there)")
    if plan.runs < 1 or plan.trials < 1:
        raise UsageError(f"--runs and --trials must be at least 1, not {plan.runs} and "
                         f"{plan.trials}")
    if plan.prune and plan.runs <= PRUNE_MIN_RUNS:
        raise UsageError(f"--prune needs --runs above {PRUNE_MIN_RUNS}: a trial is judged "
                         f"after {PRUNE_MIN_RUNS} runs at the earliest")
    if plan.confirm < 0 or plan.heartbeat_s < 1:
        raise UsageError("--confirm must not be negative and --heartbeat at least 1 s")
    plan.study = plan.study or f"{plan.base.name}-{plan.objective}"
    plan.storage = plan.storage or f"sqlite:///{default_runs_dir() / 'tune.db'}"
    if plan.confirm:
        plan.confirm_runs = plan.confirm_runs or next(
            n for n in itertools.count(max(plan.runs, 2))
            if critical_t(plan.confirm, n) <= MAX_CRITICAL_T)
        _check_confirm(plan.confirm, plan.confirm_runs)
    return plan


def _check_confirm(k, runs):
    """The confirmation's size, checked before any training as a sweep checks its cells."""
    if runs < 2 or critical_t(k, runs) > MAX_CRITICAL_T:
        need = next(n for n in itertools.count(2) if critical_t(k, n) <= MAX_CRITICAL_T)
        raise UsageError(f"--confirm {k} needs --confirm-runs {need} or more: with {runs}, a "
                         f"difference from the base must exceed {critical_t(k, runs):.0f} "
                         f"standard errors to count at the Bonferroni level 0.05/{k}")


# The statistics of one trial


def upper_bound(accs, alpha):
    """The one-sided upper (1 - alpha) bound of the mean accuracy (the mean alone for fewer
    than two runs or no spread)."""
    if len(accs) < 2 or std(accs) == 0:
        return mean(accs)
    return mean(accs) + t_quantile(1 - alpha, len(accs) - 1) * std(accs) / math.sqrt(len(accs))


def constraint(accs, target):
    """Optuna's constraint value: <= 0 when the accuracy is not below the target by the test."""
    return target - upper_bound(accs, ALPHA)


def prune_level(runs):
    return PRUNE_ALPHA / (runs - PRUNE_MIN_RUNS)     # the looks: runs 2 .. runs-1


def prune_reason(plan, accs, best_accs):
    """Why a trial whose runs so far gave `accs` stops now, or None; `best_accs` are the best
    complete trial's, by run (accuracy objective)."""
    n, level = len(accs), prune_level(plan.runs)
    if not PRUNE_MIN_RUNS <= n < plan.runs:
        return None
    if plan.objective == "time":
        bound = upper_bound(accs, level)
        if bound < plan.target:
            return (f"below the target {100 * plan.target:.2f}% after {n} runs (upper "
                    f"{100 * (1 - level):.2f}% bound {100 * bound:.2f}%)")
        return None
    if not best_accs or len(best_accs) < n:
        return None
    t = paired_test(accs, best_accs[:n])            # best - this, over the same seeds
    p = one_sided_p(t)
    if p < level:
        return (f"below the best trial by {100 * t.diff:.2f} points over {n} paired runs "
                f"(one-sided p={p:.2g} < {level:.2g})")
    return None


# Storage: Optuna's, opened in one line or refused in one


def shown_url(url):
    """A storage URL as printed and kept: without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _check_file(path, what):
    parent = Path(path).resolve().parent
    if not parent.is_dir() and Path(path).parent == default_runs_dir():
        with contextlib.suppress(OSError):
            parent.mkdir(parents=True, exist_ok=True)
    if not parent.is_dir():
        raise UsageError(f"--storage {what}: folder {parent} does not exist")
    if Path(path).exists() and not Path(path).is_file():
        raise UsageError(f"--storage {what}: {path} is not a file")
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise UsageError(f"--storage {what}: cannot write {path} "
                         f"({e.strerror or reason(e)})") from None


def make_storage(optuna, url, heartbeat_s):
    """Optuna's storage for `url`: journal:PATH a JournalStorage on a file (shared disks,
    no heartbeat), anything else an RDBStorage with a heartbeat whose silent trials are
    failed and retried once."""
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        _check_file(path, url)
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        _check_file(url[len("sqlite:///"):], url)
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s,
                      grace_period=2 * heartbeat_s,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(1))


def storage_error(e, url):
    first = (reason(e).splitlines() or [""])[0][:160]
    return HlbError(f"storage {shown_url(url)}: {type(e).__name__}: {first} (nothing in it "
                    "was changed; check the URL or file, or give another --storage)")


@contextlib.contextmanager
def storage_faults(url):
    """A storage that fails (locked, corrupt, unreachable) as one HlbError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")         # Optuna's experimental-feature notes
            yield
    except (HlbError, KeyboardInterrupt):
        raise
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("sqlalchemy", "optuna", "sqlite3") or \
                isinstance(e, (OSError, ImportError)):
            raise storage_error(e, url) from None
        raise


def open_study(plan, optuna):
    """The study of `plan`, created or loaded; refused when it was made for another search."""
    # The time objective's trials carry their constraint (Trial.set_constraint), which the
    # sampler reads: it proposes from the feasible trials.
    sampler = optuna.samplers.TPESampler(seed=plan.sampler_seed)      # reseeded per trial
    for attempt in range(3):
        try:
            with storage_faults(plan.storage):
                storage = make_storage(optuna, plan.storage, plan.heartbeat_s)
                study = optuna.create_study(
                    study_name=plan.study, storage=storage, sampler=sampler,
                    load_if_exists=True,
                    direction="maximize" if plan.objective == "accuracy" else "minimize")
                made = study.user_attrs.get("identity")
                if made is None:
                    study.set_user_attr("identity", plan.identity())
            break
        except HlbError:
            if attempt == 2:
                raise
            time.sleep(0.5)         # two workers creating one new database's tables race
    if made is not None and made != plan.identity():
        differ = [k for k in made if made.get(k) != plan.identity().get(k)] or ["format"]
        raise UsageError(
            f"study {plan.study!r} in {shown_url(plan.storage)} was made for another search "
            f"(its {', '.join(differ)} differ: {made.get('space')}, objective "
            f"{made.get('objective')}, {made.get('runs')} runs); give its flags again, or "
            "another --study")
    return study


# One worker: trials until the study holds enough


class _Failed(Exception):
    """A trial that failed (a diverged run, values that break a rule between fields, an
    out-of-memory): recorded as failed, the search goes on."""


class _Surplus(Exception):
    """A trial asked for after the study already held enough trials (workers raced)."""


def _states(optuna, *names):
    return tuple(getattr(optuna.trial.TrialState, n) for n in names)


def _results_json(results):
    rows = [dataclasses.asdict(r) for r in results]
    return jsonable({"epochs": [e for r in rows for e in r.pop("epochs")], "runs": rows})


@dataclass
class Worker:
    """One process's share of a study: each trial its seeds, its runs kept in the study."""
    plan: Plan
    study: object
    cifar: object
    device: str
    show: object = None               # a function of one line, or None (the Python API)
    listener: object = field(default_factory=Listener)
    failed_in_a_row: int = 0
    last_failure: str = ""

    def _line(self, text):
        if self.show:
            self.show(text)

    def _count(self, optuna, *states):
        return sum(t.state in _states(optuna, *states)
                   for t in self.study.get_trials(deepcopy=False))

    def _surplus(self, optuna, trial):
        ahead = [t for t in self.study.get_trials(deepcopy=False)
                 if t.number < trial.number and t.state in _states(
                     optuna, "COMPLETE", "PRUNED", *(("RUNNING",) if self._heartbeat() else ()))]
        return len(ahead) >= self.plan.trials

    def _heartbeat(self):
        return not self.plan.storage.startswith("journal:")

    def work(self, optuna):
        """Trials until the study holds plan.trials complete or pruned ones; waits while the
        last ones run elsewhere (a silent worker's trial fails after the grace period)."""
        while True:
            with storage_faults(self.plan.storage):
                if self._heartbeat():
                    optuna.storages.fail_stale_trials(self.study)
                done = self._count(optuna, "COMPLETE", "PRUNED")
                running = self._count(optuna, "RUNNING") if self._heartbeat() else 0
            if done >= self.plan.trials:
                return
            if done + running >= self.plan.trials:
                time.sleep(min(1.0, self.plan.heartbeat_s / 2))
                continue
            with storage_faults(self.plan.storage):
                self.study.optimize(self._objective, n_trials=1, catch=(_Failed, _Surplus))
            if self.failed_in_a_row >= MAX_FAILS_IN_A_ROW:
                raise HlbError(f"the last {MAX_FAILS_IN_A_ROW} trials here all failed (the "
                               f"last: {self.last_failure}); narrow the --space")

    def _objective(self, trial):
        optuna = optuna_module()
        if self._surplus(optuna, trial):
            trial.set_user_attr("surplus", True)
            raise _Surplus("the study already held enough trials")
        if self.plan.sampler_seed is not None:
            # Draws that follow the trial's number, not the worker's: the same seed gives the
            # same first trials, and two workers started alike never draw the same values.
            self.study.sampler = optuna.samplers.TPESampler(
                seed=self.plan.sampler_seed + trial.number)
        texts = [d.suggest(trial) for d in self.plan.dims]
        try:
            value = self._run(trial, texts, optuna)
        except _Failed as e:
            self.failed_in_a_row += 1
            self.last_failure = str(e)
            trial.set_user_attr("failure", str(e))
            self._line(f"trial {trial.number:>3}  {' '.join(texts)}  failed: {e}")
            raise
        self.failed_in_a_row = 0
        return value

    def _run(self, trial, texts, optuna):
        plan = self.plan
        try:
            recipe = override(plan.base, texts)
        except UsageError as e:
            raise _Failed(str(e)) from None
        try:
            prepared = PreparedRecipe(recipe, self.device, self.cifar, plan.seed,
                                      [*plan.sets, *texts], plan.accuracy_only)
        except torch.cuda.OutOfMemoryError as e:
            raise _Failed(str(out_of_memory_error(e, recipe))) from None
        except HlbError as e:
            raise _Failed(str(e)) from None
        best = best_accs(self.study, optuna) if plan.objective == "accuracy" else None
        pruned = []

        def on_round(records, finished):
            results = records[0].results
            if results and results[-1].diverged:
                return {0}
            accs = [r.tta_acc for r in results]
            trial.report(mean(accs) if plan.objective == "accuracy"
                         else mean([r.train_time_s for r in results]), len(results))
            why = plan.prune and prune_reason(plan, accs, best)
            if why:
                pruned.append(why)
                return {0}
            return ()

        try:
            results = run_rounds([prepared], plan.runs, [self.listener],
                                 LocalScheduler(self.device), on_round=on_round)[0].results
        except Stopped as e:
            trial.set_user_attr("runs", _results_json(e.records[0].results))
            if isinstance(e.error, KeyboardInterrupt):
                raise e.error from None
            raise _Failed(str(e.error)) from None
        return self._finish(trial, texts, results, pruned, optuna)

    def _finish(self, trial, texts, results, pruned, optuna):
        plan = self.plan
        trial.set_user_attr("runs", _results_json(results))
        if any(r.diverged for r in results):
            raise _Failed(f"run {results[-1].run} diverged")
        accs, times = [r.tta_acc for r in results], [r.train_time_s for r in results]
        if plan.objective == "time":
            trial.set_user_attr("constraint", constraint(accs, plan.target))
            trial.set_constraint("below_target", constraint(accs, plan.target))
        value = mean(accs) if plan.objective == "accuracy" else mean(times)
        shown = (f"trial {trial.number:>3}  {' '.join(texts)}  acc {100 * mean(accs):.2f}%"
                 f"  {mean(times):.3f} s  n={len(results)}")
        if pruned:
            trial.set_user_attr("pruned", pruned[0])
            self._line(f"{shown}  pruned: {pruned[0]}")
            raise optuna.TrialPruned(pruned[0])
        feasible = plan.target is None or constraint(accs, plan.target) <= 0
        self._line(shown + ("" if plan.objective == "accuracy"
                            else "  feasible" if feasible else "  below the target"))
        return value


def best_accs(study, optuna):
    """The accuracies, by run, of the best complete trial so far (None before one)."""
    done = [t for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    best = max(done, key=lambda t: t.value)
    return [r["tta_acc"] for r in best.user_attrs["runs"]["runs"]]


def trial_record(plan, row, cifar_fingerprint, device, argv):
    """A plain record (hlb.bench.report.record_dict) of one trial's runs."""
    record = Record(recipe=override(plan.base, row.texts), device=device,
                    data_fingerprint=cifar_fingerprint, seed=plan.seed,
                    overrides=[*plan.sets, *row.texts], accuracy_only=plan.accuracy_only,
                    runs_asked=plan.runs, results=row.results)
    record.summary = summarize(row.results)
    return record_dict(record, argv)
