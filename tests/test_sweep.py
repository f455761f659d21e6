"""Sweeps (hlb.bench.sweep): the grid and its checks, the statistics of the table, pruning, the
command line end to end (training replaced by a planted accuracy, so it is fast and exact),
--resume (interrupted before, in and after a pruning look; the refusals), and a real tiny
sweep under torchrun against one process."""

import json
import math
import sys
from types import SimpleNamespace

import pytest

import hlb.bench.runs
import hlb.bench.sweep
from conftest import synthetic_cifar
from hlb.bench import cli
from hlb.bench.stats import holm_adjust, paired_test
from hlb.bench.sweep import (ALPHA, Grid, critical_t, make_grid, prune_level, rank, to_drop,
                             verdict)
from hlb.errors import UsageError
from hlb.recipes import get_recipe
from hlb.train import PreparedRun, RunResult

SMOKE = get_recipe("smoke")


# The grid and the bad inputs


def test_the_grid_is_every_combination_with_values_parsed_as_set_parses_them():
    grid = make_grid(SMOKE, ["epochs=1"], ["bias_lr=4,12", "widths=8,16,16/16,32,32"], runs=5)
    assert grid.base.recipe.epochs == 1.0 and grid.base.name == "base"
    assert [c.name for c in grid.cells] == [
        "bias_lr=4 widths=8,16,16", "bias_lr=4 widths=16,32,32",
        "bias_lr=12 widths=8,16,16", "bias_lr=12 widths=16,32,32"]
    last = grid.cells[-1].recipe
    assert (last.bias_lr, last.widths, last.epochs) == (12.0, (16, 32, 32), 1.0)
    assert grid.cells[0].values == {"bias_lr": "4", "widths": "8,16,16"}
    assert grid.axes == [("bias_lr", ["4", "12"]), ("widths", ["8,16,16", "16,32,32"])]


@pytest.mark.parametrize("sets, varies, runs, message", [
    ([], ["speed=1,2"], 5, "--vary speed=1,2: unknown key 'speed'; valid keys:"),
    ([], ["bias_lr=4,fast"], 5, "--vary bias_lr=fast: expected a number"),
    ([], ["widths=8,16/16,32,32"], 5, "--vary widths=8,16: recipe 'smoke': widths=(8, 16): "
                                      "expected 3 comma-separated"),
    ([], ["batch_size=100,20000"], 5, "--vary batch_size=20000: recipe 'smoke': "
                                      "batch_size=20000: expected at most train_images"),
    (["whiten_init_images=400"], ["batch_size=100,800", "train_images=500,1000"], 5,
     "cell batch_size=800 train_images=500: recipe 'smoke': batch_size=800: expected at "
     "most train_images"),
    (["bias_lr=4"], ["bias_lr=4,12"], 5, "--vary bias_lr=4,12: bias_lr is also given with --set"),
    ([], ["bias_lr="], 5, "--vary bias_lr=: an empty list or value"),
    ([], ["bias_lr=4,,12"], 5, "an empty list or value"),
    ([], ["bias_lr"], 5, "--vary bias_lr: expected KEY=V1,V2,..."),
    ([], ["bias_lr=4,4.0"], 5, "4.0 and 4 are the same value"),
    ([], ["bias_lr=4", "bias_lr=12"], 5, "--vary bias_lr is given twice"),
    ([], [], 5, "a sweep needs --vary KEY=V1,V2,... (a grid) or --cell FLAGS"),
    ([], ["bias_lr=4"], 1, "--runs must be at least 2 for a sweep"),
    ([], ["bias_lr=1,2,3,4,5,6,7,8"], 3, "8 cells need --runs 4 or more: with 3, a difference "
                                    "must exceed 13 standard errors"),
    ([], ["bias_lr=1,2,3,4,5,6,7,8,9", "epochs=1,2,3,4,5,6,7,8"], 50, "72 cells is more than 64"),
])
def test_bad_input_is_one_line(sets, varies, runs, message):
    with pytest.raises(UsageError) as e:
        make_grid(SMOKE, sets, varies, runs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_runs_rule_follows_the_bonferroni_critical_t():
    # Student's t with 2 df in closed form: F^-1(p) = (2p - 1) sqrt(2 / (4p(1 - p))).
    p = 1 - ALPHA / 16
    assert critical_t(8, 3) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))))
    assert critical_t(1, 10) == pytest.approx(2.2622, abs=1e-4)      # t(0.975, 9), tables
    assert critical_t(8, 4) < 10 < critical_t(8, 3)
    make_grid(SMOKE, [], ["bias_lr=1,2,3,4,5,6,7,8"], 4)
    with pytest.raises(UsageError, match="--prune needs --runs above 3"):
        make_grid(SMOKE, [], ["bias_lr=4"], 3, prune=True)


def test_bad_input_on_the_command_line_exits_2_with_one_line(capsys):
    assert cli.main(["sweep", "--recipe", "smoke", "--set", "bias_lr=4",
                     "--vary", "bias_lr=4,12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --vary bias_lr=4,12: bias_lr is also given with --set")
    assert len(err.strip().splitlines()) == 1


# The statistics of the table, on planted runs


def _runs(shift=0.0, n=10, noise=0.0002, time=3.0, seeds=None):
    """Accuracy shared by seed (0.5 points of spread), a planted shift and a little noise
    of the cell's own; the time moves with the shift so that time has a difference too."""
    return [SimpleNamespace(seed=s, diverged=False, train_time_s=time + 0.01 * math.cos(s),
                            tta_acc=0.9 + 0.005 * math.sin(3 * s) + shift
                            + noise * math.cos(7 * s + 100 * shift))
            for s in (range(n) if seeds is None else seeds)]


def _grid(names, runs=10, prune=False):
    cells = [hlb.bench.sweep.Cell(name, {}, SMOKE) for name in names]
    return Grid(hlb.bench.sweep.Cell("base", {}, SMOKE), [], cells, runs, prune)


def test_rows_are_ranked_with_simultaneous_intervals_and_holm_p_values():
    names = ["same", "better", "worse", "up", "down"]
    base = _runs(noise=0)
    cells = [_runs(), _runs(0.003, time=3.5), _runs(-0.002), _runs(0.0001), _runs(-0.0001)]
    rows = rank(_grid(names), base, cells)
    assert [r.name for r in rows][:2] == ["base", "better"] and rows[-1].name == "worse"
    assert rows[0].acc is None and rows[0].n == 10
    better = rows[1]
    # Each interval at 1 - 0.05/5 = 99%: t(0.995, 9 df) = 3.2498 from tables.
    plain = paired_test([r.tta_acc for r in base], [r.tta_acc for r in cells[1]])
    half = better.acc.ci95[1] - better.acc.diff
    assert half == pytest.approx(3.2498 * plain.se, rel=1e-4)
    raw = [paired_test([r.tta_acc for r in base], [r.tta_acc for r in c]).p_value
           for c in cells]
    holm = dict(zip(names, holm_adjust(raw)))
    assert {r.name: r.acc_p_holm for r in rows[1:]} == pytest.approx(holm)
    said = {r.name: r.verdict for r in rows[1:]}
    assert said["better"] == "more accurate, slower"
    assert said["same"] == "no detectable difference"
    assert said["worse"] == "less accurate"
    for row in rows[1:]:        # the verdict and the simultaneous interval agree
        assert row.verdict.startswith("no detectable") == (row.acc.ci95[0] <= 0
                                                           <= row.acc.ci95[1])
    assert better.pairs == 10 and better.time.diff == pytest.approx(0.5)


def test_verdicts_follow_the_interval_never_the_raw_p_value():
    nan_test = paired_test([1.0], [2.0])
    assert verdict(nan_test, nan_test, math.nan) == "too few runs"
    wide = SimpleNamespace(diff=0.001, ci95=(-0.0001, 0.0021), p_value=0.01)
    flat = SimpleNamespace(diff=0.0, ci95=(-1.0, 1.0), p_value=1.0)
    said = verdict(wide, flat, 0.04)          # Holm below 0.05, interval holds 0
    assert said.startswith("no detectable difference (Holm p < 0.05 alone")
    assert verdict(wide, flat, 0.2) == "no detectable difference"


def test_cells_pair_with_the_base_by_seed_and_skip_diverged_runs():
    base = _runs(n=6)
    cell = _runs(0.001, seeds=[0, 1, 2, 3])     # stopped after four runs
    cell[1].diverged = True
    row = rank(_grid(["x"], runs=6), base, [cell])[1]
    assert (row.n, row.diverged, row.pairs) == (3, 1, 3)


# Pruning


def test_a_cell_clearly_below_the_best_is_dropped_after_three_pairs():
    grid = _grid(["good", "bad", "close"], runs=6, prune=True)
    runs = [_runs(n=3), _runs(0.004, n=3), _runs(-0.01, n=3), _runs(0.002, n=3, noise=0.003)]
    assert prune_level(grid) == pytest.approx(0.05 / (3 * 3))
    drops = to_drop(grid, runs, [0, 1, 2, 3], 3)
    assert list(drops) == [2]                       # the base (0) is never dropped
    assert drops[2]["after_runs"] == 3
    assert drops[2]["why"].startswith("below good by 1.39 points over 3 pairs (one-sided "
                                      "paired p=")
    assert "< 0.0056 = 0.05/(3x3)" in drops[2]["why"]
    assert to_drop(grid, [r[:2] for r in runs], [0, 1, 2, 3], 2) == {}   # too few pairs
    assert to_drop(grid, runs, [0, 1, 2, 3], 6) == {}       # the last round saves nothing
    assert to_drop(_grid(["good", "bad", "close"], runs=6), runs, [0, 1, 2, 3], 3) == {}


# The command line end to end, training replaced by a planted accuracy per bias_lr

TINY = ["--recipe", "smoke", "--device", "cpu", "--set", "train_images=256",
        "--set", "test_images=128", "--set", "batch_size=64", "--set", "whiten_init_images=128",
        "--set", "widths=8,16,16"]
EFFECT = {1.0: -0.05, 8.0: 0.0, 10.0: 0.004, 12.0: 0.01}


def planted_lr(recipe):
    """The cell's bias_lr, the base's (smoke's own) read as 8."""
    return 8.0 if recipe.bias_lr == SMOKE.bias_lr else recipe.bias_lr


@pytest.fixture
def planted(monkeypatch):
    """A run replaced by a planted accuracy per bias_lr (the fixture's value: that run)."""
    def train_run(self, seed, run, **kwargs):
        lr = planted_lr(self.recipe)
        noise = 0.02 if lr == 10.0 else 0.0005
        acc = 0.5 + 0.01 * math.sin(7 * seed) + EFFECT[lr] + noise * math.cos(seed + 1)
        return RunResult(run=run, seed=seed, tta_acc=acc, val_acc=acc,
                         train_time_s=2.0 + lr / 100)
    monkeypatch.setattr(PreparedRun, "run", train_run)
    monkeypatch.setattr(hlb.bench.runs, "load_data", lambda data_dir=None: synthetic_cifar())
    return train_run


def test_a_pruned_sweep_end_to_end(planted, tmp_path, capsys, runs_dir):
    out = tmp_path / "sweep.json"
    code = cli.main(["sweep", *TINY, "--vary", "bias_lr=1,10,12", "--runs", "5", "--prune",
                     "--seed", "3", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    lines = text.splitlines()
    assert lines[0].startswith("hlb-cifar10 sweep: base smoke train_images=256")
    assert "and 3 cell(s), 5 runs each, interleaved, seeds 3..7" in lines[0]
    assert "  dropped bias_lr=1 after run 3 of 5: below bias_lr=12 by 6.00 points" in text
    table = lines[lines.index(next(x for x in lines if x.startswith("#  cell"))):]
    assert [row.split()[1] for row in table[1:5]] == [
        "base", "bias_lr=12", "bias_lr=10", "bias_lr=1"]
    assert "less accurate, faster; dropped after run 3" in table[4]
    assert table[2].endswith("more accurate, slower")
    assert table[5].startswith("Δ = cell - base, paired by seed; intervals simultaneous "
                               "over the 3 cells (Bonferroni: each at 98.33%)")
    data = json.loads(out.read_text())
    assert data["format"] == "hlb-cifar10 sweep v1" and data["stopped"] is None
    assert [r["seed"] for r in data["runs"]] == [3, 4, 5, 6, 7]            # the base
    assert data["vary"] == [{"key": "bias_lr", "values": ["1", "10", "12"]}]
    seeds = {c["name"]: [r["seed"] for r in c["runs"]] for c in data["cells"]}
    assert seeds == {"bias_lr=1": [3, 4, 5], "bias_lr=10": [3, 4, 5, 6, 7],
                     "bias_lr=12": [3, 4, 5, 6, 7]}
    assert data["cells"][0]["dropped"]["after_runs"] == 3
    assert [row["name"] for row in data["table"]] == [
        "base", "bias_lr=12", "bias_lr=10", "bias_lr=1"]
    assert data["table"][1]["acc"]["diff"] == pytest.approx(0.01, abs=1e-3)
    kept = list(runs_dir.glob("*/record.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == data


def test_a_grid_without_prune_runs_every_cell_every_run(planted, capsys):
    assert cli.main(["sweep", *TINY, "--vary", "bias_lr=1,12", "--runs", "3", "--no-save"]) == 0
    text = capsys.readouterr().out
    assert text.count("  run ") == 9 and "dropped" not in text


def test_a_sweep_of_listed_cells_runs_each_as_given(planted, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    cells = ["--set bias_lr=12", "--set bias_lr=10 --set epochs=2",
             "--recipe smoke --set bias_lr=1"]
    assert cli.main(["sweep", *TINY, "--runs", "3", "--no-save", "--json", str(out),
                     *[arg for c in cells for arg in ("--cell", c)]]) == 0
    data = json.loads(out.read_text())
    names = [c["name"] for c in data["cells"]]
    assert names == ["bias_lr=12", "bias_lr=10 epochs=2", "recipe smoke bias_lr=1"]
    assert data["vary"] == [] and data["cell_flags"] == cells
    by_name = {c["name"]: c for c in data["cells"]}
    # A cell is the base with its --set items; one naming --recipe starts from that recipe.
    assert by_name["bias_lr=10 epochs=2"]["recipe"]["train_images"] == 256
    assert by_name["bias_lr=10 epochs=2"]["overrides"][-2:] == ["bias_lr=10", "epochs=2"]
    assert by_name["recipe smoke bias_lr=1"]["overrides"] == ["bias_lr=1"]
    assert by_name["recipe smoke bias_lr=1"]["recipe"]["train_images"] == 10_000
    assert "bias_lr=12" in capsys.readouterr().out
    # Resumed with other cells: refused in one line naming them.
    assert cli.main(["sweep", *TINY, "--runs", "3", "--no-save", "--resume", str(out),
                     "--cell", "--set bias_lr=12"]) == 2
    assert ("not the interrupted command: the cells --cell '--set bias_lr=12' here, --cell "
            "'--set bias_lr=12' --cell '--set bias_lr=10 --set epochs=2'") in _one_line(capsys)


@pytest.mark.parametrize("args, message", [
    ([], "a sweep needs --vary KEY=V1,V2,... (a grid) or --cell FLAGS"),
    (["--vary", "bias_lr=1,2", "--cell", "--set bias_lr=3"], "one or the other"),
    (["--cell", "--set bias_lr=3", "--cell", "--set bias_lr=3"], "is given twice"),
    (["--cell", "--seed 3"], "'--seed' is not --recipe NAME or --set KEY=VALUE"),
    (["--cell", "--set bias_lr=fast"], "--set bias_lr=fast: expected a number"),
])
def test_bad_cells_are_one_line(capsys, args, message):
    assert cli.main(["sweep", *TINY, "--runs", "3", *args]) == 2
    assert message in _one_line(capsys)


# --resume: an interrupted sweep goes on (a real interrupted process: tests/test_resume.py)

PRUNED = ["sweep", *TINY, "--vary", "bias_lr=1,10,12", "--runs", "5", "--prune", "--no-save"]


def _interrupt(monkeypatch, where):
    """Ctrl-C once, `where`: "in run i" (of the cell bias_lr=10) or "in the look after run n"
    (the pruning test of that round); returns the (lr, run) pairs a run is asked for."""
    real_run, real_drop, asked, hit = PreparedRun.run, hlb.bench.sweep.to_drop, [], []

    def train_run(self, *args, run=0, **kwargs):
        recipe = self.recipe
        asked.append((recipe.bias_lr, run))
        if where == f"in run {run}" and recipe.bias_lr == 10.0 and not hit:
            hit.append(where)
            raise KeyboardInterrupt
        return real_run(self, *args, run=run, **kwargs)

    def to_drop(grid, results, active, finished):
        if where == f"in the look after run {finished}" and not hit:
            hit.append(where)
            raise KeyboardInterrupt
        return real_drop(grid, results, active, finished)

    monkeypatch.setattr(PreparedRun, "run", train_run)
    monkeypatch.setattr(hlb.bench.sweep, "to_drop", to_drop)
    return asked


def _pairs(data):
    """(lr, run) of every run in a sweep record, the base's lr being smoke's 8."""
    parts = [data] + data["cells"]
    return [(part["recipe"]["bias_lr"], r["run"]) for part in parts for r in part["runs"]]


@pytest.mark.parametrize("where", ["in run 2", "in the look after run 3", "in run 3"])
def test_an_interrupted_pruned_sweep_resumes_as_if_nothing_had_happened(planted, monkeypatch,
                                                                        tmp_path, capsys,
                                                                        where):
    whole, out = tmp_path / "whole.json", tmp_path / "sweep.json"
    assert cli.main([*PRUNED, "--json", str(whole)]) == 0
    expected = json.loads(whole.read_text())
    asked = _interrupt(monkeypatch, where)
    assert cli.main([*PRUNED, "--json", str(out)]) == 130
    before = json.loads(out.read_text())
    assert before["stopped"] and (before["cells"][0]["dropped"] is not None) == (
        where == "in run 3")
    asked.clear()
    capsys.readouterr()
    assert cli.main([*PRUNED, "--resume", str(out)]) == 0
    text = capsys.readouterr().out
    assert "kept as they were" in text and text.count("dropped bias_lr=1 after run 3 of 5") == (
        1 if where == "in run 3" else 2)            # the live line (unless before), the table's
    after = json.loads(out.read_text())             # the --resume file, rewritten
    # Only the missing runs ran, each once; the dropped cell bias_lr=1 stayed dropped.
    assert sorted(asked) == sorted(set(_pairs(expected)) - set(_pairs(before)))
    assert (1.0, 3) not in asked and after["cells"][0]["dropped"] == {
        "after_runs": 3, "why": expected["cells"][0]["dropped"]["why"]}
    for part, was, want in zip([after, *after["cells"]], [before, *before["cells"]],
                               [expected, *expected["cells"]]):
        assert part["runs"] == want["runs"] and part["runs"][:len(was["runs"])] == was["runs"]
        assert part["resumed_from"][-1]["runs"] == [r["run"] for r in was["runs"]]
    assert after["table"] == expected["table"] and after["stopped"] is None


@pytest.fixture
def interrupted_sweep(planted, monkeypatch, tmp_path):
    """A pruned sweep interrupted in run 3 (bias_lr=1 dropped after run 3); (its path, dict)."""
    path = tmp_path / "sweep.json"
    _interrupt(monkeypatch, "in run 3")
    assert cli.main([*PRUNED, "--json", str(path)]) == 130
    monkeypatch.setattr(PreparedRun, "run", planted)
    return path, json.loads(path.read_text())


def _one_line(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("flags, edit, status, message", [
    (["--vary", "bias_lr=1,10"], None, 2,
     "--vary bias_lr=1,10 here, bias_lr=1,10,12 in the record"),
    (["--vary", "bias_lr=1,10,12", "--vary", "epochs=1,2"], None, 2,
     "--vary bias_lr=1,10,12 --vary epochs=1,2 here, bias_lr=1,10,12 in the record"),
    (["--vary", "bias_lr=1,10,12"], None, 2, "--prune not given here, given in the record"),
    ([*PRUNED[1:], "--set", "epochs=2"], None, 2, "epochs=2 here, train_images=256"),
    ([*PRUNED[1:], "--runs", "6"], None, 2, "--runs 6 here, 5 in the record"),
    ([*PRUNED[1:], "--seed", "1"], None, 2, "--seed 1 here, 0 in the record"),
    ([*PRUNED[1:], "--recipe", "94"], None, 2, "the recipe 94 here, smoke in the record"),
    ([], lambda d: d["cells"][1].update(device="cuda"), 2,
     "cell bias_lr=10: not the interrupted command: the kind of device cpu here, cuda"),
    ([], lambda d: d.update(data_fingerprint="other"), 2, "the data differs"),
    ([], lambda d: d["environment"]["code"].update(source_sha256="0" * 64), 2,
     "the code differs"),
    ([], lambda d: d["cells"][0].update(dropped={"after_runs": "3", "why": ""}), 1,
     "its cells, vary or prune are not as sweep writes them"),
    ([], lambda d: d.update(prune="yes"), 1, "its cells, vary or prune are not as"),
    ([], lambda d: d["cells"].pop(), 1, "its cells are not those of its grid"),
    ([], lambda d: d["cells"][1]["runs"][0].pop("tta_acc"), 1, "cell bias_lr=10: run 0 lacks"),
    ([], lambda d: d["cells"][2]["runs"].append(d["cells"][2]["runs"][0]), 1,
     "cell bias_lr=12: run 0 appears twice"),
    ([], lambda d: d["cells"][2].pop("runs_asked"), 1, "cell bias_lr=12 was written before"),
])
def test_a_sweep_resume_that_differs_or_a_bad_record_is_refused(interrupted_sweep, capsys,
                                                                flags, edit, status, message):
    path, data = interrupted_sweep
    if edit:
        edit(data)
        path.write_text(json.dumps(data))
    if flags[:1] == ["--vary"]:
        flags = [*PRUNED[1:PRUNED.index("--vary")], *flags, "--runs", "5", "--no-save"]
    capsys.readouterr()
    assert cli.main(["sweep", *(flags or PRUNED[1:]), "--resume", str(path)]) == status
    assert message in _one_line(capsys)


def test_a_cut_short_sweep_record_and_the_wrong_kind_are_refused(interrupted_sweep, tmp_path,
                                                                 capsys):
    path, data = interrupted_sweep
    cut = tmp_path / "cut.json"
    cut.write_text(path.read_text()[:1000])
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({**{k: v for k, v in data.items() if k != "cells"},
                                 "format": "hlb-cifar10 record v1"}))
    capsys.readouterr()
    for argv, status, message in [
            ([*PRUNED, "--resume", str(cut)], 1, "is not JSON"),
            ([*PRUNED, "--resume", str(plain)], 2, "is not a sweep record; resume it with "
                                                   "python main.py ... --resume"),
            ([*TINY, "--runs", "5", "--resume", str(path)], 2,
             "is a sweep record; resume it with python main.py sweep ... --resume"),
            (["compare", *TINY[:4], "--runs", "5", "--resume", str(path)], 2,
             "is a sweep record")]:
        assert cli.main(argv) == status
        assert message in _one_line(capsys)


def test_a_sweep_of_another_commit_resumes_when_allowed_and_json_writes_elsewhere(
        interrupted_sweep, tmp_path):
    path, data = interrupted_sweep
    data["environment"]["git_commit"] = "0" * 40
    data["environment"]["code"]["source_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    elsewhere = tmp_path / "whole.json"
    assert cli.main([*PRUNED, "--resume", str(path), "--allow-other-commit",
                     "--json", str(elsewhere)]) == 0
    assert json.loads(path.read_text()) == data          # the interrupted record, untouched
    after = json.loads(elsewhere.read_text())
    assert after["resumed_from"][0]["git_commit"] == "0" * 40 and after["stopped"] is None
    assert [len(c["runs"]) for c in after["cells"]] == [3, 5, 5]
    assert cli.main([*PRUNED, "--resume", str(elsewhere)]) == 0       # finished: nothing to run
    again = json.loads(elsewhere.read_text())
    assert again["table"] == after["table"] and again["runs"] == after["runs"]
    assert [(c["runs"], c["dropped"]) for c in again["cells"]] == [
        (c["runs"], c["dropped"]) for c in after["cells"]]


# Under torchrun: real tiny runs, the same seeds and pairs as one process

def test_a_sweep_over_two_processes_gives_the_runs_of_one(cifar_dir, tmp_path):
    from test_dist import ONE_THREAD, ROOT, TINY as DIST_TINY, _same_runs, _torchrun, run
    args = [*DIST_TINY, "--vary", "bias_lr=0.1", "--runs", "3", "--no-save",
            "--data-dir", str(cifar_dir)]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = run([sys.executable, str(ROOT / "main.py"), "sweep", *args, "--json", str(one)],
                 env=ONE_THREAD)
    assert single.returncode == 0, single.stderr
    spread = run([*_torchrun(2), "sweep", *args, "--json", str(two)])
    assert spread.returncode == 0, spread.stderr
    assert spread.stdout.count("#  cell") == 1 and "spread over 2 processes" in spread.stdout
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["dist"]["world_size"] == 2
    assert _same_runs(a, b)
    for x, y in zip(a["cells"], b["cells"]):
        assert [r["seed"] for r in y["runs"]] == [0, 1, 2] and _same_runs(x, y)


# The plot of a sweep record (main.py plot)

def _sweep_record(varies, accs):
    """A sweep record as sweep_dict writes it, with planted runs: accs[cell] per seed."""
    from hlb.bench.runs import Record
    grid = make_grid(SMOKE, [], varies, runs=4)
    records = []
    for i in range(len(grid.cells) + 1):
        record = Record(recipe=SMOKE, device="cpu", data_fingerprint="x", seed=0)
        record.results = [RunResult(run=s, seed=s, tta_acc=accs(i, s), train_time_s=2 + i / 10)
                          for s in range(4)]
        records.append(record)
    return hlb.bench.sweep.sweep_dict(hlb.bench.sweep.Outcome(grid, records, {2: {
        "after_runs": 3, "why": "planted"}}), ["sweep"])


def test_a_sweep_plots_points_and_a_heat_map_for_two_keys(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    two = _sweep_record(["bias_lr=4,12", "epochs=1,2,3"],
                        lambda i, s: 0.5 + 0.01 * i + 0.001 * (s * i % 3))
    one = _sweep_record(["bias_lr=4,12"], lambda i, s: 0.5 + 0.01 * i + 0.001 * s)
    paths = []
    for name, data in (("two", two), ("one", one)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        paths.append(tmp_path / f"{name}.json")
    assert cli.main(["plot", str(paths[0]), "-o", str(tmp_path / "two.png")]) == 0
    assert cli.main(["plot", str(paths[1]), "-o", str(tmp_path / "one.png")]) == 0
    assert "plot written to" in capsys.readouterr().out
    wide, narrow = imread(tmp_path / "two.png"), imread(tmp_path / "one.png")
    assert wide.shape[1] > 1800 and 1000 < narrow.shape[1] < 1200     # the heat map's panel
    # The heat map's right half is mostly coloured (viridis), the points' panel mostly white.
    right = wide[int(0.15 * wide.shape[0]):int(0.85 * wide.shape[0]),
                 int(0.6 * wide.shape[1]):int(0.85 * wide.shape[1]), :3]
    assert (right.max(axis=-1) - right.min(axis=-1) > 0.3).mean() > 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "one.png", "two.json",
                                                           "two.png"]
