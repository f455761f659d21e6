"""One picture of one or more records: accuracy over time, final accuracies, losses.

    python main.py plot a.json b.json -o plot.png

Tooling beside the recipe: it draws what the JSON records of `main.py --json` hold. Needs
matplotlib (requirements-plot.txt), imported only when called.
"""

import math
import random
from pathlib import Path

from hlb.bench.records import (TUNE_FORMAT, check_shown, number, one_line, overrides_of,
                               read_record, whole)
from hlb.bench.stats import confidence_interval, mean, std
from hlb.bench.sweep import FORMAT as SWEEP_FORMAT
from hlb.errors import HlbError, UsageError
from hlb.files import write_atomic

INSTALL_HINT = "plotting needs matplotlib: python -m pip install -r requirements-plot.txt"
DPI = 120
MAX_LABEL = 48      # characters; a long --set list would squeeze the panels
BOX_MIN_RUNS = 5    # quartiles of fewer runs say less than the dots themselves


def _matplotlib():
    try:
        # A Figure with its own Agg canvas, not pyplot: no global backend switch, no window,
        # and nothing left open in a notebook that imports this.
        import matplotlib  # noqa: F401  (first: submodules may be cached without it)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise HlbError(INSTALL_HINT) from None
    return Figure, FigureCanvasAgg, Line2D


def plain_text(text, limit=None):
    """`text` as matplotlib draws it literally: on one line, cut to `limit`, and with its
    dollar signs escaped (a pair of them would start mathtext, which can fail to parse)."""
    return one_line(text, limit).replace("$", r"\$")


def _check_plottable(record, path):
    """Refuse, in one line, a record whose fields the picture shows are of another type."""
    env = record.get("environment") if isinstance(record.get("environment"), dict) else {}
    recipe = record.get("recipe") if isinstance(record.get("recipe"), dict) else {}
    check_shown(path, {"recipe name": (recipe.get("name"), "text"),
                       "device": (record.get("device"), "text"),
                       "gpu": (env.get("gpu"), "text"), "torch": (env.get("torch"), "text")})
    if not all(isinstance(o, str) for o in record.get("overrides") or []):
        raise HlbError(f"{path}: its overrides are not all text (edited?)")
    if not all("run" not in row or whole(row["run"]) for row in record.get("epochs") or []):
        raise HlbError(f"{path}: an epoch row's run is not a whole number (edited?)")
    return record


def _mean(values):
    """The mean of the finite values (NaN when there are none): a null in a record is a
    missing number, not a reason to lose the curve."""
    finite = [v for v in values if math.isfinite(v)]
    return mean(finite) if finite else math.nan


class _Arm:
    """What the panels need from one record, with nulls read as NaN."""

    def __init__(self, record, path):
        self.path = Path(path)
        self.record = record
        runs = record["runs"]
        self.finished = [r for r in runs if not r.get("diverged")]
        self.diverged = len(runs) - len(self.finished)
        self.tta = [100 * number(r.get("tta_acc")) for r in self.finished]
        self.train_time = [number(r.get("train_time_s")) for r in self.finished]
        self.curves = {}        # run number -> its epoch rows, in epoch order
        for row in record.get("epochs", []):
            self.curves.setdefault(row.get("run"), []).append(row)
        for rows in self.curves.values():
            rows.sort(key=lambda row: number(row.get("epoch")))
        finished_runs = {r.get("run") for r in self.finished}
        # Means over finished runs only: a diverged run's last epochs would drag them down.
        self.mean_rows = {}     # epoch -> {key: mean over runs}
        by_epoch = {}
        for run, rows in self.curves.items():
            if run in finished_runs:
                for row in rows:
                    by_epoch.setdefault(number(row.get("epoch")), []).append(row)
        for epoch, rows in sorted(by_epoch.items()):
            self.mean_rows[epoch] = {k: _mean([number(r.get(k)) for r in rows])
                                     for k in ("val_acc", "time_s", "train_loss", "val_loss")}

    def base_label(self):
        recipe = self.record.get("recipe")
        name = recipe.get("name") if isinstance(recipe, dict) else None
        if not name:
            return self.stem()
        return plain_text(" ".join([str(name)] + overrides_of(self.record)), MAX_LABEL)

    def stem(self):
        # Records saved by hlb.bench.records are all named record.json; their folder says more.
        return plain_text(self.path.parent.name if self.path.stem == "record"
                          else self.path.stem, MAX_LABEL)

    def count(self):
        n = f"n={len(self.finished)}"
        return n + (f", {self.diverged} diverged" if self.diverged else "")


def _labels(arms, labels):
    if labels is not None:
        if len(labels) != len(arms):
            raise UsageError(f"{len(labels)} labels for {len(arms)} records")
        return [f"{label} ({arm.count()})" for label, arm in zip(labels, arms)]
    base = [arm.base_label() for arm in arms]
    # Two arms of one recipe without --set would look the same: tell them apart by file.
    return [f"{b} [{arm.stem()}] ({arm.count()})" if base.count(b) > 1 else
            f"{b} ({arm.count()})" for b, arm in zip(base, arms)]


def _panel_accuracy(ax, arms, colors, Line2D):
    for arm, color in zip(arms, colors):
        for rows in arm.curves.values():
            ax.plot([number(r.get("time_s")) for r in rows],
                    [100 * number(r.get("val_acc")) for r in rows],
                    color=color, lw=0.8, alpha=0.45)
        means = list(arm.mean_rows.values())
        ax.plot([m["time_s"] for m in means], [100 * m["val_acc"] for m in means],
                color=color, lw=2.5, marker="o", ms=4)
        # A dotted step from each run's last epoch to its TTA star says which star is whose.
        for run in arm.finished:
            rows = arm.curves.get(run.get("run"))
            if rows:
                ax.plot([number(rows[-1].get("time_s")), number(run.get("train_time_s"))],
                        [100 * number(rows[-1].get("val_acc")), 100 * number(run.get("tta_acc"))],
                        color=color, lw=0.8, ls=":", alpha=0.6)
        ax.scatter(arm.train_time, arm.tta, marker="*", s=120, color=color,
                   edgecolors="black", linewidths=0.6, zorder=3)
    ax.set_title("(a) test accuracy during training")
    ax.set_xlabel("timed seconds since the run started (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    key = [Line2D([], [], color="gray", lw=0.8, alpha=0.6, label="one run, plain, per epoch"),
           Line2D([], [], color="gray", lw=2.5, marker="o", ms=4, label="mean over runs"),
           Line2D([], [], color="gray", marker="*", ms=11, ls="", markeredgecolor="black",
                  label="final TTA accuracy of a run (dotted from its last epoch)")]
    ax.legend(handles=key, loc="best", fontsize=8)


def _seconds(x):
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def _arm_stats(arm):
    accs = [a for a in arm.tta if math.isfinite(a)]
    if not accs:
        return ""
    spread = f" ± {std(accs):.2f} sd" if len(accs) > 1 else ""
    return f"\nmean {_mean(accs):.2f}%{spread}\nmean time {_seconds(_mean(arm.train_time))}"


def _panel_final(ax, arms, colors, names):
    jitter = random.Random(0)       # the same picture for the same records
    positions = list(range(1, len(arms) + 1))
    for pos, arm, color in zip(positions, arms, colors):
        accs = [a for a in arm.tta if math.isfinite(a)]
        if not accs:
            continue
        if len(accs) >= BOX_MIN_RUNS:
            box = ax.boxplot([accs], positions=[pos], widths=0.5, showfliers=False,
                             patch_artist=True, medianprops={"color": color, "lw": 1.5})
            for patch in box["boxes"]:
                patch.set(facecolor=color, alpha=0.15, edgecolor=color)
        ax.scatter([pos + jitter.uniform(-0.13, 0.13) for _ in accs], accs, color=color,
                   s=40, alpha=0.85, edgecolors="black", linewidths=0.4, zorder=3)
        ax.scatter([pos], [mean(accs)], marker="D", s=60, color="white", edgecolors="black",
                   linewidths=1.2, zorder=4)
    # The numbers go under each arm, not beside it: many arms cannot overlap them there.
    ticks = [name.replace(" (", "\n(") + _arm_stats(arm) for name, arm in zip(names, arms)]
    ax.set_xticks(positions, ticks, fontsize=8)
    ax.set_xlim(0.4, len(arms) + 0.6)
    ax.set_title(f"(b) final TTA accuracy, a dot per run (◇ mean, box at n ≥ {BOX_MIN_RUNS})")
    ax.set_ylabel("TTA test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)


def _panel_loss(ax, arms, colors, Line2D):
    for arm, color in zip(arms, colors):
        epochs = list(arm.mean_rows)
        means = list(arm.mean_rows.values())
        ax.plot(epochs, [m["train_loss"] for m in means], color=color, ls="--", marker="o",
                ms=3)
        ax.plot(epochs, [m["val_loss"] for m in means], color=color, ls="-", marker="o", ms=3)
    # Both label-smoothed, so they compare (records without hlb_version hold a plain test loss).
    ax.set_title("(c) label-smoothed loss, mean over runs")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per image")
    ax.grid(alpha=0.3)
    if any(float(e).is_integer() for arm in arms for e in arm.mean_rows):
        ax.xaxis.get_major_locator().set_params(integer=True)
    key = [Line2D([], [], color="gray", ls="--", label="train (augmented batches)"),
           Line2D([], [], color="gray", ls="-", label="test (plain view)")]
    ax.legend(handles=key, loc="upper right", fontsize=8)


def _title(arms):
    where = []
    for arm in arms:
        env = arm.record.get("environment")
        env = env if isinstance(env, dict) else {}
        device = env.get("gpu") or arm.record.get("device") or "unknown device"
        torch = f"torch {env['torch']}" if env.get("torch") else ""
        text = plain_text(", ".join(x for x in (str(device), torch) if x), MAX_LABEL)
        if text not in where:
            where.append(text)
    title = f"CIFAR-10, {len(arms)} record{'s' * (len(arms) != 1)} on " + "; ".join(where)
    if len(where) > 1:
        title += "  (different machines: compare times with care)"
    return title


def _readable(paths, apart):
    """[(index, record)] of the files at `paths` that can be drawn. One that cannot is an
    HlbError, or with a list `apart`, goes there as (path, its one-line reason)."""
    found = []
    for i, path in enumerate(paths):
        try:
            found.append((i, _check_plottable(read_record(path), path)))
        except HlbError as e:
            if apart is None:
                raise
            apart.append((path, str(e)))
    if not found:
        raise HlbError(apart[0][1] if len(apart) == 1 else f"nothing to plot: none of the "
                       f"{len(apart)} files is a record (the first: {apart[0][1]})")
    return found


def plot_records(paths, out_png, labels=None, apart=None):
    """Draw the records at `paths` into one PNG at `out_png` (written atomically); return it.

    labels: names for the records in the legend (default: recipe and --set values, with the
    file's name when two would read the same); each gets its run count appended.
    apart: None (a file that is not a record is an error), or a list that gets (path, its
    one-line reason) for each such file, left out of the picture.
    """
    Figure, FigureCanvasAgg, Line2D = _matplotlib()
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("nothing to plot: give at least one record written by main.py --json")
    out = Path(out_png)
    if not out.parent.is_dir():
        raise HlbError(f"cannot write the plot {out}: folder {out.parent} does not exist")
    if labels is not None and len(labels) != len(paths):
        raise UsageError(f"{len(labels)} labels for {len(paths)} records")
    found = _readable(paths, apart)
    records, paths = [r for _, r in found], [paths[i] for i, _ in found]
    labels = None if labels is None else [labels[i] for i, _ in found]
    if len(records) == 1 and records[0].get("format") == SWEEP_FORMAT:
        return plot_sweep(paths[0], out, records[0])
    if len(records) == 1 and records[0].get("format") == TUNE_FORMAT:
        return plot_tune(records[0], out)
    arms = [_Arm(record, p) for record, p in zip(records, paths)]
    names = _labels(arms, labels)
    colors = [f"C{i % 10}" for i in range(len(arms))]

    fig = Figure(figsize=(17, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_final, ax_loss = fig.subplots(1, 3, width_ratios=[1.3, 1, 1])
    _panel_accuracy(ax_acc, arms, colors, Line2D)
    _panel_final(ax_final, arms, colors, names)
    _panel_loss(ax_loss, arms, colors, Line2D)
    fig.suptitle(_title(arms))
    handles = [Line2D([], [], color=c, lw=2.5) for c in colors]
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(arms), 4))
    _save_atomic(fig, out)
    return out


def _save_atomic(fig, out):
    try:
        write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=DPI))
    except OSError as e:
        raise HlbError(f"could not write the plot {out} ({e.strerror or e})") from None


def figure(size):
    """(a figure with its own canvas, no pyplot; its one axes), for other tools' plots."""
    Figure, FigureCanvasAgg, _ = _matplotlib()
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def save_png(fig, out_png):
    """Write `fig` to out_png atomically (its folder must exist); return the path."""
    out = Path(out_png)
    if not out.parent.is_dir():
        raise HlbError(f"cannot write the plot {out}: folder {out.parent} does not exist")
    _save_atomic(fig, out)
    return out


# A sweep record (hlb.bench.sweep, `main.py sweep`): one point per cell, and a heat map of two keys.


def _sweep_cells(record):
    """(name, finished runs, dropped) for the base and then each cell of a sweep record."""
    cells = [c for c in record.get("cells") or [] if isinstance(c, dict)]
    found = [("base", record["runs"], None)]
    found += [(str(c.get("name")), c.get("runs") or [], c.get("dropped")) for c in cells]
    return [(name, [r for r in runs if isinstance(r, dict) and not r.get("diverged")], dropped)
            for name, runs, dropped in found]


def _mean_and_bar(values):
    """The mean and its 95% interval as matplotlib's error bar ([[below], [above]] or None)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, None
    m, (lo, hi) = mean(finite), confidence_interval(finite)
    return m, None if math.isnan(lo) else [[m - lo], [hi - m]]


def _panel_sweep_points(ax, record):
    for i, (name, done, dropped) in enumerate(_sweep_cells(record)):
        acc, acc_bar = _mean_and_bar([100 * number(r.get("tta_acc")) for r in done])
        time, time_bar = _mean_and_bar([number(r.get("train_time_s")) for r in done])
        if math.isnan(acc) or math.isnan(time):
            continue
        color = "black" if i == 0 else "0.55" if dropped else f"C{(i - 1) % 10}"
        ax.errorbar([time], [acc], xerr=time_bar, yerr=acc_bar, fmt="s" if i == 0 else "o",
                    color=color, mfc="white" if dropped else color, capsize=3, ms=6)
        label = (f"{plain_text(name, MAX_LABEL)} (n={len(done)}"
                 f"{', dropped' if dropped else ''})")
        ax.annotate(label, (time, acc), textcoords="offset points", xytext=(6, 4),
                    fontsize=8, color=color)
    ax.set_title("(a) mean TTA accuracy against mean time, 95% intervals (base ■, dropped ○)")
    ax.set_xlabel("timed seconds per run (s)")
    ax.set_ylabel("TTA test accuracy (%)")
    ax.grid(alpha=0.3)


def _heat_text(row):
    """A heat-map cell's text: its mean, and cell - base with ▲/▼ when outside the noise."""
    acc = 100 * number(row.get("acc_mean"))
    diff = row.get("acc") if isinstance(row.get("acc"), dict) else {}
    said = str(row.get("verdict") or "")
    mark = "▲" if said.startswith("more") else "▼" if said.startswith("less") else ""
    text = f"{acc:.2f}\n{100 * number(diff.get('diff')):+.2f}{mark}"
    return text + ("\ndropped" if row.get("dropped") else "")


def _panel_sweep_heat(ax, fig, record):
    (key_y, values_y), (key_x, values_x) = [(a["key"], a["values"]) for a in record["vary"]]
    rows = {(str(r["values"].get(key_y)), str(r["values"].get(key_x))): r
            for r in record.get("table") or [] if isinstance(r, dict)
            and isinstance(r.get("values"), dict)}
    rows = {(y, x): r for (y, x), r in rows.items() if y in values_y and x in values_x}
    grid = [[100 * number(rows[(y, x)].get("acc_mean")) if (y, x) in rows else math.nan
             for x in values_x] for y in values_y]
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    finite = [v for line in grid for v in line if math.isfinite(v)]
    middle = (min(finite) + max(finite)) / 2 if finite else 0
    for (y, x), row in rows.items():
        value = grid[values_y.index(y)][values_x.index(x)]
        ax.text(values_x.index(x), values_y.index(y), _heat_text(row), ha="center",
                va="center", fontsize=8, color="white" if value < middle else "black")
    ax.set_xticks(range(len(values_x)), [plain_text(v, MAX_LABEL) for v in values_x])
    ax.set_yticks(range(len(values_y)), [plain_text(v, MAX_LABEL) for v in values_y])
    ax.set_xlabel(plain_text(key_x, MAX_LABEL))
    ax.set_ylabel(plain_text(key_y, MAX_LABEL))
    ax.set_title("(b) mean TTA accuracy (%); below: cell - base in points\n"
                 "(▲▼: the simultaneous interval leaves out zero)")
    fig.colorbar(image, ax=ax, label="mean TTA accuracy (%)")


def plot_sweep(path, out_png, record=None):
    """Draw a sweep record (read from `path` unless given): accuracy against time per cell
    with 95% intervals, and for a two-key grid a heat map of mean accuracy. Written
    atomically to out_png, returned."""
    Figure, FigureCanvasAgg, _ = _matplotlib()
    record, out = record or _check_plottable(read_record(path), path), Path(out_png)
    vary = record.get("vary") if isinstance(record.get("vary"), list) else []
    # Each axis as sweep writes it: a key and its values, all text.
    heat = len(vary) == 2 and all(
        isinstance(a, dict) and isinstance(a.get("key"), str) and isinstance(a.get("values"), list)
        and all(isinstance(v, str) for v in a["values"]) for a in vary)
    fig = Figure(figsize=(16 if heat else 9, 6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if heat else 1, squeeze=False)[0]
    _panel_sweep_points(axes[0], record)
    if heat:
        _panel_sweep_heat(axes[1], fig, record)
    recipe = record.get("recipe") if isinstance(record.get("recipe"), dict) else {}
    fig.suptitle(f"sweep of recipe {plain_text(recipe.get('name', '?'), MAX_LABEL)}: "
                 f"{len(_sweep_cells(record)) - 1} cells against the base, "
                 f"{plain_text(record.get('runs_asked', '?'), 20)} runs each; "
                 f"{_title([_Arm(record, path)])}")
    _save_atomic(fig, out)
    return out


# A search (hlb.bench.tune, `hlb tune`): the value per trial, accuracy against cost, each knob


def _tune_trials(record):
    """The tune record's finished trials (complete or pruned) as dicts with numbers only."""
    trials = record.get("trials") if isinstance(record.get("trials"), list) else []
    return [t for t in trials if isinstance(t, dict) and t.get("state") in ("complete", "pruned")
            and whole(t.get("number")) and isinstance(t.get("values"), list)
            and not math.isnan(number(t.get("value")))]


def _panel_tune_value(ax, record, trials):
    maximise = record.get("objective") != "time"
    done = [t for t in trials if t["state"] == "complete" and t.get("feasible") is not False]
    for state, marker in (("complete", "o"), ("pruned", "x")):
        shown = [t for t in trials if t["state"] == state]
        ax.scatter([t["number"] for t in shown], [number(t["value"]) for t in shown],
                   marker=marker, label=state, alpha=0.7)
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t["number"]):
        v = number(t["value"])
        best = v if best is None else max(best, v) if maximise else min(best, v)
        xs.append(t["number"])
        ys.append(best)
    ax.step(xs, ys, where="post", color="k", label="best so far (feasible)")
    ax.set_xlabel("trial")
    ax.set_ylabel("mean TTA accuracy" if maximise else "mean time s")
    ax.legend(fontsize=8)


def _tune_cost(record, t):
    return number(t.get("gflops")) if record.get("accuracy_only") else number(t.get("time_mean"))


def _panel_tune_front(ax, record, trials):
    """Accuracy against cost, the front of trials no other beats on both."""
    done = [t for t in trials if t["state"] == "complete"]
    points = [(_tune_cost(record, t), 100 * number(t.get("acc_mean"))) for t in done]
    ax.scatter(*zip(*points) if points else ([], []), alpha=0.7)
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    if front:
        ax.step(*zip(*front), where="post", color="C3", label="front")
    target = number(record.get("target"))
    if not math.isnan(target):
        ax.axhline(100 * target, color="grey", ls="--", label="target")
    ax.set_xlabel("GFLOP per run" if record.get("accuracy_only") else "mean time s")
    ax.set_ylabel("mean TTA accuracy %")
    ax.legend(fontsize=8)


def _panel_tune_knob(ax, trials, index):
    key = None
    xs, ys = [], []
    for t in trials:
        if index < len(t["values"]) and isinstance(t["values"][index], str):
            key, _, text = t["values"][index].partition("=")
            xs.append(text)
            ys.append(number(t["value"]))
    try:
        xs = [float(x) for x in xs]
    except ValueError:
        pass                          # choices stay text: one column each
    ax.scatter(xs, ys, alpha=0.7)
    ax.set_xlabel(key or "?")
    ax.set_ylabel("value")


def plot_tune(record, out_png):
    """The search in one PNG: each trial's value and the best so far, accuracy against time
    (or FLOPs) with the front, and each searched knob against the value."""
    trials = _tune_trials(record)
    space = record.get("space") if isinstance(record.get("space"), list) else []
    Figure, FigureCanvasAgg, _ = _matplotlib()
    fig = Figure(figsize=(6 * (2 + min(len(space), 4)), 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 + min(len(space), 4), squeeze=False)[0]
    _panel_tune_value(axes[0], record, trials)
    _panel_tune_front(axes[1], record, trials)
    for k, ax in enumerate(axes[2:]):
        _panel_tune_knob(ax, trials, k)
    fig.suptitle(f"hlb tune: study {one_line(record.get('study'), 40)}, objective "
                 f"{one_line(record.get('objective'), 20)}, {len(trials)} trial(s)")
    return save_png(fig, out_png)
