"""A sweep: many variants of one recipe at once, each paired with the base, ranked honestly.

    python main.py sweep --recipe smoke --vary bias_lr=0.04,0.08 --vary epochs=1,3 --runs 5

The grid is the cartesian product of the --vary lists; a cell is the base recipe (--recipe
plus --set) with one value per varied key. The base and every cell run interleaved, run i of
each with seed seed+i, so every cell pairs with the base seed by seed.

The rules, at family level ALPHA over the m cells:
- a cell's mean accuracy gets its own 95% Student-t interval (a description, not a test);
- cell - base, in accuracy and in time, is a paired t-test over the seeds both finished; its
  interval is simultaneous (Bonferroni: each at 1 - ALPHA/m) and its p-value Holm-adjusted;
- the verdict calls a cell more or less accurate (faster, slower) only when that simultaneous
  interval leaves out zero, which implies a Holm p below ALPHA: a difference inside the noise
  is never a win. Holm alone below ALPHA is said, but not called a finding;
- too many cells for the runs: with runs - 1 degrees of freedom the Bonferroni critical t must
  not exceed MAX_CRITICAL_T (beyond, only a gap of that many standard errors would count);
- --prune: after round r >= PRUNE_MIN_PAIRS, before the last, a cell is dropped when a
  one-sided paired t-test says its accuracy is below the best contender's (the base counts as
  a contender and is never dropped) at level ALPHA / ((k - 1) * looks), k the contenders at the
  start and looks the rounds that may prune. The union bound over every rival and round keeps
  the chance of ever dropping the truly best under ALPHA. Time plays no part in pruning.
"""

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

from hlb.bench.overrides import override, parse_flags, settable
from hlb.bench.report import Listener, jsonable, record_dict
from hlb.bench.stats import (DiffTest, confidence_interval, holm_adjust, mean, one_sided_p,
                             paired_test, summarize, t_quantile)
from hlb.errors import UsageError
from hlb.recipes import Recipe, get_recipe

FORMAT = "hlb-cifar10 sweep v1"
ALPHA = 0.05              # family-wise error over all cells
MAX_CELLS = 64
MAX_CRITICAL_T = 10.0     # standard errors a difference would need at the Bonferroni level
PRUNE_MIN_PAIRS = 3       # paired runs before a cell may be dropped


@dataclass(frozen=True)
class Cell:
    name: str             # "bias_lr=0.04 epochs=1", or "base"
    values: dict          # varied key -> the value's text as given
    recipe: Recipe
    overrides: tuple = ()     # the --set texts that make it, the varied ones last


@dataclass
class Grid:
    base: Cell
    axes: list            # (key, [value texts]) per --vary, in order
    cells: list           # Cell per combination, the first key slowest (or per --cell)
    runs: int
    prune: bool = False
    cell_flags: list = field(default_factory=list)     # the --cell texts, when given


def _checked(recipe, key, text):
    """The recipe with key=text, or one line that names --vary instead of --set."""
    try:
        return override(recipe, [f"{key}={text}"])
    except UsageError as e:
        said = str(e)
        if said.startswith("--set "):
            raise UsageError("--vary " + said[len("--set "):]) from None
        raise UsageError(f"--vary {key}={text}: {said}") from None


def parse_vary(item, base):
    """"KEY=V1,V2,..." (a tuple key takes / between values) -> (key, [texts]), each value
    checked as --set checks it."""
    key, sep, text = item.partition("=")
    key, fields = key.strip(), settable()
    if not sep:
        raise UsageError(f"--vary {item}: expected KEY=V1,V2,...")
    if key not in fields:
        raise UsageError(f"--vary {item}: unknown key {key!r}; valid keys: "
                         + ", ".join(sorted(fields)))
    between = "/" if fields[key] is tuple else ","
    texts = [t.strip() for t in text.split(between)]
    if not all(texts):
        raise UsageError(f"--vary {item}: an empty list or value; give {key}=V1{between}V2...")
    seen = {}
    for t in texts:
        value = getattr(_checked(base, key, t), key)
        if value in seen:
            raise UsageError(f"--vary {item}: {t} and {seen[value]} are the same value")
        seen[value] = t
    return key, texts


def critical_t(cells, runs):
    """The t a paired difference must reach over runs pairs at the Bonferroni level."""
    return t_quantile(1 - ALPHA / (2 * cells), runs - 1) if runs >= 2 else math.inf


def _check_size(cells, runs, prune):
    if runs < 2:
        raise UsageError(f"--runs must be at least 2 for a sweep (a paired test needs two "
                         f"pairs), not {runs}")
    if cells > MAX_CELLS:
        raise UsageError(f"{cells} cells is more than {MAX_CELLS}; vary fewer values at once")
    if critical_t(cells, runs) > MAX_CRITICAL_T:
        need = next(n for n in itertools.count(runs) if critical_t(cells, n) <= MAX_CRITICAL_T)
        raise UsageError(f"{cells} cells need --runs {need} or more: with {runs}, a difference "
                         f"must exceed {critical_t(cells, runs):.0f} standard errors to count "
                         f"at the Bonferroni level {ALPHA}/{cells}")
    if prune and runs <= PRUNE_MIN_PAIRS:
        raise UsageError(f"--prune needs --runs above {PRUNE_MIN_PAIRS}: cells are dropped "
                         f"after {PRUNE_MIN_PAIRS} paired runs at the earliest")


def make_grid(recipe, sets, varies, runs, prune=False, cells=()):
    """The base (recipe with the --set items) and every cell, checked: the cells of the
    --vary grid, or each --cell as given."""
    base = override(recipe, sets)
    if bool(varies) == bool(cells):
        raise UsageError("a sweep needs --vary KEY=V1,V2,... (a grid) or --cell FLAGS (each "
                         "variant as given), one or the other")
    if cells:
        return _listed(base, sets, cells, runs, prune)
    set_keys = {s.partition("=")[0].strip() for s in sets}
    axes = []
    for item in varies:
        key, texts = parse_vary(item, base)
        if key in set_keys:
            raise UsageError(f"--vary {item}: {key} is also given with --set; set it or vary it")
        if key in dict(axes):
            raise UsageError(f"--vary {key} is given twice; list all its values in one --vary")
        axes.append((key, texts))
    _check_size(math.prod(len(texts) for _, texts in axes), runs, prune)
    cells = []
    for combo in itertools.product(*(texts for _, texts in axes)):
        values = dict(zip(dict(axes), combo))
        varied = [f"{k}={v}" for k, v in values.items()]
        name = " ".join(varied)
        try:
            cell = override(base, varied)
        except UsageError as e:
            raise UsageError(f"cell {name}: {e}") from None
        cells.append(Cell(name, values, cell, (*sets, *varied)))
    return Grid(Cell("base", {}, base, tuple(sets)), axes, cells, runs, prune)


def _listed(base, sets, flags, runs, prune):
    """A sweep of the --cell variants: each the base with its own --set items, or, naming
    --recipe, that recipe with them (compare's arms are written alike)."""
    _check_size(len(flags), runs, prune)
    cells = []
    for text in flags:
        name, cell_sets = parse_flags(text, f"--cell {text!r}")
        try:
            recipe = override(base if name is None else get_recipe(name), cell_sets)
        except UsageError as e:
            raise UsageError(f"--cell {text!r}: {e}") from None
        label = " ".join(([f"recipe {name}"] if name else []) + cell_sets) or "(the base)"
        if label in [c.name for c in cells]:
            raise UsageError(f"--cell {text!r} is given twice")
        cells.append(Cell(label, {}, recipe, tuple(cell_sets) if name else (*sets, *cell_sets)))
    return Grid(Cell("base", {}, base, tuple(sets)), [], cells, runs, prune, list(flags))


# Statistics: one row per cell


@dataclass
class Row:
    name: str
    values: dict
    n: int                    # finished runs
    diverged: int
    acc_mean: float           # fraction
    acc_ci95: tuple           # the cell's own 95% interval of the mean
    time_mean: float          # seconds
    pairs: int = 0            # seeds where both the cell and the base finished
    acc: DiffTest = None      # cell - base, simultaneous interval; None for the base
    time: DiffTest = None
    acc_p_holm: float = math.nan
    time_p_holm: float = math.nan
    verdict: str = ""
    dropped: dict = None      # {"after_runs": r, "why": text} when pruned


def _finished(results):
    return {r.seed: r for r in results if not r.diverged}


def _row(cell, results):
    done = list(_finished(results).values())
    accs, times = [r.tta_acc for r in done], [r.train_time_s for r in done]
    return Row(cell.name, cell.values, len(done), len(results) - len(done),
               mean(accs) if done else math.nan, confidence_interval(accs),
               mean(times) if done else math.nan)


def _paired(base_results, results, level):
    """cell - base over the seeds both finished: (pairs, accuracy test, time test)."""
    base, cell = _finished(base_results), _finished(results)
    seeds = [s for s in base if s in cell]
    tests = [paired_test([getattr(base[s], k) for s in seeds],
                         [getattr(cell[s], k) for s in seeds], level)
             for k in ("tta_acc", "train_time_s")]
    return len(seeds), *tests


def verdict(acc, time, acc_p_holm):
    """Words for a row, from the simultaneous intervals (see the module's rules)."""
    if acc is None or math.isnan(acc.p_value):
        return "too few runs"
    lo, hi = acc.ci95
    words = ("more accurate" if lo > 0 else "less accurate" if hi < 0
             else "no detectable difference")
    if lo <= 0 <= hi and acc_p_holm < ALPHA:
        words += " (Holm p < 0.05 alone; more runs would tell)"
    if not math.isnan(time.p_value) and not time.ci95[0] <= 0 <= time.ci95[1]:
        words += ", slower" if time.diff > 0 else ", faster"
    return words


def rank(grid, base_results, cell_results, dropped=None):
    """The base's row, then one row per cell: kept cells first, best mean accuracy first."""
    dropped = dropped or {}
    m = len(grid.cells)
    level = 1 - ALPHA / m
    rows = []
    for i, (cell, results) in enumerate(zip(grid.cells, cell_results)):
        row = _row(cell, results)
        row.pairs, row.acc, row.time = _paired(base_results, results, level)
        row.dropped = dropped.get(i + 1)
        rows.append(row)
    for key in ("acc", "time"):
        for row, p in zip(rows, holm_adjust([getattr(r, key).p_value for r in rows])):
            setattr(row, f"{key}_p_holm", p)
    for row in rows:
        row.verdict = verdict(row.acc, row.time, row.acc_p_holm)
    rows.sort(key=lambda r: (r.dropped is not None,
                             -r.acc_mean if not math.isnan(r.acc_mean) else math.inf))
    return [_row(grid.base, base_results)] + rows


# Pruning: drop the cells that cannot catch the best any more


def prune_level(grid):
    """The one-sided level of each pruning test (see the module's rules)."""
    looks = grid.runs - PRUNE_MIN_PAIRS         # rounds PRUNE_MIN_PAIRS .. runs - 1
    return ALPHA / (len(grid.cells) * looks)    # k - 1 rivals, k = cells + the base


def to_drop(grid, results, active, finished):
    """{bench index: {"after_runs", "why"}} for the cells to drop once `finished` runs of
    every active bench are in; bench 0 is the base, never dropped."""
    if not grid.prune or not PRUNE_MIN_PAIRS <= finished < grid.runs:
        return {}
    names = [grid.base.name] + [c.name for c in grid.cells]
    done = {j: _finished(results[j]) for j in active}
    scores = {j: mean([r.tta_acc for r in done[j].values()]) for j in active if done[j]}
    if not scores:
        return {}
    best, level = max(scores, key=scores.get), prune_level(grid)
    drops = {}
    for j in sorted(set(scores) - {0, best}):
        seeds = [s for s in done[j] if s in done[best]]
        if len(seeds) < PRUNE_MIN_PAIRS:
            continue
        t = paired_test([done[j][s].tta_acc for s in seeds],
                        [done[best][s].tta_acc for s in seeds])      # best - cell
        p = one_sided_p(t)
        if p < level:
            drops[j] = {"after_runs": finished, "why": (
                f"below {names[best]} by {100 * t.diff:.2f} points over {len(seeds)} pairs "
                f"(one-sided paired p={p:.2g} < {level:.2g} = {ALPHA}/({len(grid.cells)}x"
                f"{grid.runs - PRUNE_MIN_PAIRS}))")}
    return drops


# Running: every bench interleaved, run by run, with the same seeds (hlb.bench.cli runs the
# benches: the base, then each cell)


class RunLines(Listener):
    """The sweep's live output: one line per finished run, named by its cell."""

    def __init__(self, name, width, stream=None):
        self.name, self.width, self.stream = name, width, stream

    def run_finished(self, result):
        acc = "diverged" if result.diverged else f"TTA {100 * result.tta_acc:.2f}%"
        print(f"  run {result.run:>3}  {self.name:<{self.width}}  {acc:>12}  "
              f"{result.train_time_s:8.3f} s", file=self.stream, flush=True)


@dataclass
class Outcome:
    grid: Grid
    records: list             # hlb.bench.runs.Record per bench: the base, then each cell
    dropped: dict = field(default_factory=dict)     # bench index -> {"after_runs", "why"}
    error: BaseException = None       # why the sweep stopped early (KeyboardInterrupt: Ctrl-C)

    def rows(self):
        return rank(self.grid, self.records[0].results, [r.results for r in self.records[1:]],
                    self.dropped)


class SweepRun:
    """What a sweep adds to the runner's rounds: a line per finished run, the pruning after
    each round (announced as it drops a cell), and the Outcome of the runs so far."""

    def __init__(self, grid, stream=None):
        self.grid, self.stream = grid, stream
        self.names = [grid.base.name] + [c.name for c in grid.cells]
        width = max(len(name) for name in self.names)
        self.listeners = [RunLines(name, width, stream) for name in self.names]
        self.dropped = {}         # bench index -> {"after_runs", "why"}

    def outcome(self, records, error=None):
        return Outcome(self.grid, records, self.dropped, error)

    def _prune(self, records, finished, show=True):
        active = [j for j in range(len(records)) if j not in self.dropped]
        drops = to_drop(self.grid, [r.results for r in records], active, finished)
        self.dropped.update(drops)
        for j, drop in drops.items() if show else ():
            print(f"  dropped {self.names[j]} after run {finished} of {self.grid.runs}: "
                  f"{drop['why']}", file=self.stream, flush=True)
        return drops.keys()

    def on_round(self, records, finished):
        """After each round, on the reporting process: the benches to drop."""
        return self._prune(records, len(records[0].results))     # the base runs every round

    def restore(self, saved, records, leader):
        """A resumed sweep, its runs put back: the cells dropped before stay dropped, and
        when whole rounds had finished, the look an interruption may have cut off is taken
        now. Returns the benches stopped from the start."""
        self.dropped.update({j: record["dropped"] for j, (record, _) in enumerate(saved)
                             if j and record.get("dropped")})
        counts = {len(r.results) for j, r in enumerate(records) if j not in self.dropped}
        if len(counts) == 1:
            self._prune(records, counts.pop(), leader)
        return set(self.dropped)


# What the user sees and keeps

def correction(m):
    """How the differences of m cells are tested, in words (the table's note, the record)."""
    return (f"Δ = cell - base, paired by seed; intervals simultaneous over the {m} cells "
            f"(Bonferroni: each at {100 * (1 - ALPHA / m):.2f}%); p-values Holm-adjusted over "
            f"them; family level {ALPHA}")


def sweep_dict(outcome, argv=None):
    """The record: the base as a plain record (runs, summary: `main.py runs` lists it), each
    cell's runs under "cells", the grid and the ranked table. JSON values only. Mid-sweep
    the records carry the runner's "unfinished" mark."""
    for record in outcome.records:
        record.summary = summarize(record.results)      # an Outcome made by hand has none
    grid = outcome.grid
    data = record_dict(outcome.records[0], argv)
    cells = []
    for j, (cell, record) in enumerate(zip(grid.cells, outcome.records[1:]), 1):
        part = {k: v for k, v in record_dict(record, argv).items()
                if k not in ("format", "argv", "environment")}
        cells.append({"name": cell.name, "values": cell.values,
                      "dropped": outcome.dropped.get(j), **part})
    data.update(format=FORMAT, runs_asked=grid.runs, prune=grid.prune, alpha=ALPHA,
                correction=correction(len(grid.cells)),
                vary=[{"key": k, "values": v} for k, v in grid.axes],
                cell_flags=grid.cell_flags, cells=cells,
                table=jsonable([dataclasses.asdict(r) for r in outcome.rows()]))
    return data


def _p(p):
    return "" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _interval(t, scale, digits):
    if t is None or math.isnan(t.p_value):
        return "" if t is None else f"{scale * t.diff:+.{digits}f}"
    lo, hi = t.ci95
    return f"{scale * t.diff:+.{digits}f} ({scale * lo:+.{digits}f} to {scale * hi:+.{digits}f})"


def _cells(i, row):
    n = f"{row.n}" + (f"+{row.diverged}d" if row.diverged else "")
    lo, hi = row.acc_ci95
    acc = f"{100 * row.acc_mean:.2f}" + ("" if math.isnan(lo) else
                                         f" ({100 * lo:.2f} to {100 * hi:.2f})")
    verdict = row.verdict + (f"; dropped after run {row.dropped['after_runs']}"
                             if row.dropped else "")
    return [str(i) if i else "-", row.name, n, acc, f"{row.time_mean:.3f}",
            _interval(row.acc, 100, 2), _p(row.acc_p_holm), _interval(row.time, 1, 3),
            _p(row.time_p_holm), verdict]


def table_lines(outcome):
    """The ranked table (base first, then the cells, best first), how to read it, and why
    each dropped cell was dropped."""
    rows, grid = outcome.rows(), outcome.grid
    header = ["#", "cell", "n", "acc % (95% CI)", "time s", "Δacc points (sim. CI)",
              "p Holm", "Δtime s (sim. CI)", "p Holm", "verdict"]
    body = [_cells(i, row) for i, row in enumerate(rows)]
    widths = [max(len(h), *(len(c[k]) for c in body)) for k, h in enumerate(header)]
    left = {1, 3, 5, 7, 9}          # text and intervals read from the left

    def line(cells):
        return "  ".join(c.ljust(w) if k in left else c.rjust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(header)] + [line(c) for c in body] + [correction(len(grid.cells))]
    names = {j: c.name for j, c in enumerate(grid.cells, 1)}
    for j, drop in sorted(outcome.dropped.items()):
        lines.append(f"dropped {names[j]} after run {drop['after_runs']} of {grid.runs}: "
                     f"{drop['why']}")
    return lines
