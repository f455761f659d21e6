import json
import math

import pytest

from hlb.bench.compare import (compare, compare_records, comparison_dict, comparison_lines,
                               load_record)
from hlb.errors import HlbError, UsageError
from hlb.train import RunResult


def runs(shift=0.0, seeds=range(10), time=2.875, diverged=()):
    """Runs whose accuracy depends on the seed (0.13 points of spread) plus a planted shift."""
    return [{"run": i, "seed": s, "tta_acc": 0.94 + 0.0013 * math.sin(3 * s) + shift,
             "train_time_s": time + 0.004 * math.cos(5 * s), "diverged": i in diverged}
            for i, s in enumerate(seeds)]


def test_identical_arms_show_no_detectable_difference():
    c = compare(runs(), runs())
    assert c.test == "paired" and c.pairs == 10
    assert c.acc.diff == 0 and c.acc.p_value == pytest.approx(1.0)
    assert c.verdict.startswith("no detectable difference: +0.00 points")
    assert c.runs_needed == math.inf
    c = compare(runs(), runs(seeds=range(10, 20)))
    assert c.test == "Welch"
    assert c.verdict.startswith("no detectable difference")
    assert "runs per arm would detect a difference this size" in c.verdict


@pytest.mark.parametrize("shift, word", [(0.002, "better"), (-0.002, "worse")])
def test_a_planted_shift_gets_the_right_verdict(shift, word):
    b = runs(shift, time=2.5)
    b[3]["tta_acc"] += 0.0001                  # not exactly constant, so the test has spread
    c = compare(runs(), b)
    assert c.acc.diff == pytest.approx(shift, abs=1e-4)
    assert c.acc.p_value < 1e-6
    assert c.verdict.startswith(f"B is {word} than A: {100 * shift:+.2f} points")
    assert c.time.diff == pytest.approx(-0.375) and c.time.p_value < 1e-6


def test_pairing_is_chosen_by_the_seeds_and_can_be_forced():
    assert compare(runs(), runs(0.001)).test == "paired"
    assert compare(runs(), runs(0.001, seeds=range(10, 20))).test == "Welch"
    assert compare(runs(), runs(0.001, seeds=range(9, -1, -1))).test == "Welch"   # order
    assert compare(runs(), runs(0.001, seeds=range(9))).test == "Welch"
    assert compare(runs(), runs(0.001), paired=False).test == "Welch"
    with pytest.raises(UsageError, match="same seeds"):
        compare(runs(), runs(seeds=range(10, 20)), paired=True)


def test_pairing_finds_a_small_consistent_gain_that_welch_misses():
    a, b = runs(), runs(0.0005)
    b[0]["tta_acc"] += 0.00005
    paired, welch = compare(a, b), compare(a, b, paired=False)
    assert paired.verdict.startswith("B is better")
    assert welch.verdict.startswith("no detectable difference")
    assert paired.runs_needed < welch.runs_needed


def test_diverged_runs_are_left_out_and_counted():
    a = runs(diverged={2})
    a[2]["tta_acc"] = None                    # as a record stores the NaN of a diverged run
    b = runs(0.001, diverged={5, 7})
    c = compare(a, b)
    assert (c.a.n, c.a.diverged, c.b.n, c.b.diverged) == (9, 1, 8, 2)
    assert c.test == "paired" and c.pairs == 7
    assert c.a.acc_mean == pytest.approx(sum(r["tta_acc"] for r in a if r["tta_acc"]) / 9)
    w = compare(a, b, paired=False)
    assert w.acc.diff == pytest.approx(w.b.acc_mean - w.a.acc_mean)


def test_too_few_runs_say_so():
    c = compare(runs(seeds=[0]), runs(seeds=[1]))
    assert math.isnan(c.acc.p_value) and math.isnan(c.runs_needed)
    assert c.verdict.startswith("not enough runs to tell")
    assert comparison_lines(c)[-1] == c.verdict
    assert compare([], []).verdict.startswith("not enough runs to tell")


def test_objects_with_the_fields_work_like_dicts():
    as_objects = [RunResult(run=r["run"], seed=r["seed"], tta_acc=r["tta_acc"],
                            train_time_s=r["train_time_s"]) for r in runs(0.001)]
    assert compare(runs(), as_objects) == compare(runs(), runs(0.001))


def test_lines_show_both_arms_the_differences_and_the_verdict_last():
    c = compare(runs(), runs(0.002))
    lines = comparison_lines(c, "baseline", "muon")
    assert len(lines) == 6
    assert lines[1].split()[:3] == ["baseline", "10", "0"]
    acc = f"{100 * c.a.acc_mean:.2f} ± {100 * c.a.acc_std:.2f}"
    assert acc in lines[1] and f"{c.a.time_mean:.3f} ± {c.a.time_std:.3f}" in lines[1]
    assert lines[3].startswith("accuracy muon - baseline: +0.20 points (95% CI")
    assert lines[4].startswith("time     muon - baseline: +0.000 s")
    assert lines[-1].startswith("muon is better than baseline: +0.20 points")
    assert comparison_lines(c)[-1] == c.verdict
    assert all(len(line) < 200 for line in lines)


def test_comparison_dict_is_plain_json():
    d = comparison_dict(compare(runs(), runs()))
    text = json.dumps(d, allow_nan=False)      # infinity became null
    assert json.loads(text)["runs_needed"] is None
    assert d["test"] == "paired" and d["a"]["n"] == 10 and d["verdict"].startswith("no ")


def write_record(path, results):
    # The shape hlb.bench.report.record_dict writes, trimmed to what comparing reads.
    path.write_text(json.dumps({"format": "hlb-cifar10 record v1", "recipe": {"name": "94"},
                                "runs": results, "summary": {"n": len(results)}}))
    return path


def test_round_trip_through_record_files(tmp_path):
    a = write_record(tmp_path / "a.json", runs())
    b = write_record(tmp_path / "b.json", runs(0.002, diverged={4}))
    assert load_record(a)["recipe"]["name"] == "94"
    c = compare_records(a, b)
    assert c == compare(runs(), runs(0.002, diverged={4}))
    assert c.b.diverged == 1 and c.verdict.startswith("B is better")


@pytest.mark.parametrize("content, message", [
    (None, "no record at"),
    ("{not json", "is not JSON"),
    ("[1, 2]", "is not an hlb record"),
    ('{"runs": {"a": 1}}', "is not an hlb record"),
    ('{"runs": [{"tta_acc": 0.94}]}', "run 0 lacks train_time_s, seed, diverged"),
    ('{"runs": [{"tta_acc": null, "train_time_s": 1.0, "seed": 0, "diverged": false}]}',
     "run 0 finished but has no number"),
])
def test_load_record_errors_are_one_line(tmp_path, content, message):
    path = tmp_path / "record.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(HlbError, match=message) as info:
        load_record(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
