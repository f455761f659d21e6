"""Going on with an interrupted invocation: `python main.py ... --resume RECORD.json`.

The record, rewritten after every round, holds the runs that finished and how many were asked
(`runs_asked`). A resume checks that its command is the interrupted one (recipe, overrides,
seed, runs, target, kind of device, data, and code unless allowed to differ), puts the
finished runs back into the prepared record as they were, and the runner runs only the others
(hlb.bench.runs.run_rounds skips runs already in a record). A file that is not as main.py wrote it
(cut short, edited) is refused in one line, as is a command that differs.

Three kinds of record resume alike (`parts` names the records in each): main.py's (one), a
compare record (arms a and b) and a sweep record (the base, then each cell: hlb.bench.sweep).
"""

import json
import shlex

from hlb.bench.code import describe, running_code
from hlb.bench.records import (RECORD_FIELDS, VERIFICATION_FORMAT, check_fields,
                               check_integrity, check_record, load_json, runs_of, whole)
from hlb.bench.report import jsonable
from hlb.bench.sweep import FORMAT as SWEEP_FORMAT
from hlb.errors import HlbError, UsageError

_HINT = "run the command again without --resume"


def _check_parts(record, where):
    if "runs_asked" not in record:
        raise HlbError(f"--resume {where} was written before records kept how many runs were "
                       f"asked (no runs_asked), so it cannot be resumed; {_HINT}")
    check_fields(record, f"--resume {where}", _HINT, {**RECORD_FIELDS, "runs_asked": int})


def results_of(record, path, arm=""):
    """The finished runs of a checked record, as RunResults with their epoch rows."""
    return runs_of(record, f"--resume {path}{arm}", _HINT)


def kind_of(data):
    """What a record is: "verification", "compare", "sweep" or "record" (main.py's)."""
    if isinstance(data, dict) and data.get("format") == VERIFICATION_FORMAT:
        return "verification"
    if isinstance(data, dict) and "comparison" in data:
        return "compare"
    return "sweep" if isinstance(data, dict) and data.get("format") == SWEEP_FORMAT else "record"


_COMMANDS = {"record": "", "compare": "compare ", "sweep": "sweep ", "verification": "verify "}


def _is_drop(drop):
    return drop is None or (isinstance(drop, dict) and set(drop) == {"after_runs", "why"}
                            and whole(drop["after_runs"], 1) and isinstance(drop["why"], str))


def _check_sweep(data, path):
    """The parts of a sweep record that say what the sweep was, each of its kind."""
    cells, vary = data.get("cells"), data.get("vary")
    if not (isinstance(cells, list) and isinstance(vary, list)
            and isinstance(data.get("prune"), bool)
            and all(isinstance(c, dict) and isinstance(c.get("name"), str)
                    and isinstance(c.get("values"), dict) and _is_drop(c.get("dropped"))
                    for c in cells)
            and all(isinstance(v, dict) and isinstance(v.get("key"), str)
                    and isinstance(v.get("values"), list) for v in vary)):
        raise HlbError(f"--resume {path}: its cells, vary or prune are not as sweep writes "
                       f"them (cut short or edited?); {_HINT}")


def parts(data, kind):
    """The records a read record holds, each with how messages name it: (record, label)."""
    if kind == "compare":
        return [(data.get(a), f" arm {a}") for a in "ab"]
    if kind == "verification":
        return [(data.get("entry"), " entry"), (data.get("baseline"), " baseline")]
    if kind == "sweep":     # a cell keeps its runs; the sweep, what the cells share
        shared = {k: data.get(k) for k in ("argv", "environment")}
        return [(data, "")] + [({**cell, **shared}, f" cell {cell['name']}")
                               for cell in data["cells"]]
    return [(data, "")]


def read(path, kind="record"):
    """The record at `path` of `kind` ("record": main.py's, "compare", "sweep" or
    "verification"), checked whole, every part (`parts`). Any problem is one HlbError line."""
    data = load_json(path)
    found = kind_of(data)
    if found != kind:
        said = f"is not a {kind}" if found == "record" else f"is a {found}"
        raise UsageError(f"--resume {path} {said} record; resume it with python main.py "
                         f"{_COMMANDS[found]}... --resume")
    if kind == "sweep":
        _check_sweep(data, path)
    for record, label in parts(data, kind):
        check_record(record, path, label)
        _check_parts(record, f"{path}{label}")
        check_integrity(record, f"--resume {path}{label}", _HINT)   # every run and the sums
    return data


def _differs(path, what, here, there, argv):
    given = " ".join(argv) if isinstance(argv, list) else "?"
    return UsageError(f"--resume {path}: not the interrupted command: {what} {here} here, "
                      f"{there} in the record; give its flags ({given})")


def check_same(record, path, recipe, overrides, seed, runs, target_acc, device,
               accuracy_only=False):
    """Refuse (UsageError) when this command is not the one that wrote `record`."""
    argv = record.get("argv")
    theirs = record["recipe"]
    ours = json.loads(json.dumps(jsonable(recipe.to_dict())))   # tuples become lists
    if theirs.get("name") != ours["name"]:
        raise _differs(path, "the recipe", ours["name"], theirs.get("name"), argv)
    if record["overrides"] != list(overrides):
        raise _differs(path, "--set", " ".join(overrides) or "none",
                       " ".join(record["overrides"]) or "none", argv)
    changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if changed:
        key = changed[0]
        raise _differs(path, f"recipe value {key} (the named recipe changed?)",
                       ours.get(key), theirs.get(key), argv)
    for what, here, there in (("--seed", seed, record["seed"]),
                              ("--runs", runs, record["runs_asked"]),
                              ("--target-acc", target_acc, record.get("target_acc")),
                              ("the kind of device", device, record["device"]),
                              ("--accuracy-only", accuracy_only,
                               record.get("accuracy_only", False))):
        if here != there:
            raise _differs(path, what, here, there, argv)


def _vary_text(vary):
    """A grid as its --vary flags give it (the first "--vary " left to the message)."""
    items = []
    for axis in vary:
        values = [str(t) for t in axis["values"]]
        between = "/" if any("," in t for t in values) else ","
        items.append(f"{axis['key']}={between.join(values)}")
    return " --vary ".join(items)


def check_grid(data, path, grid):
    """Refuse (UsageError) a sweep whose grid or --prune is not the one of `data`."""
    ours = [{"key": key, "values": list(texts)} for key, texts in grid.axes]
    if data["vary"] != ours:
        raise _differs(path, "--vary", _vary_text(ours), _vary_text(data["vary"]),
                       data.get("argv"))
    if data.get("cell_flags", []) != grid.cell_flags:
        shown = [" ".join(f"--cell {shlex.quote(c)}" for c in flags) or "none"
                 for flags in (grid.cell_flags, data.get("cell_flags", []))]
        raise _differs(path, "the cells", *shown, data.get("argv"))
    if data["prune"] != grid.prune:
        said = {True: "given", False: "not given"}
        raise _differs(path, "--prune", said[grid.prune], said[data["prune"]],
                       data.get("argv"))
    if [cell["name"] for cell in data["cells"]] != [cell.name for cell in grid.cells]:
        raise HlbError(f"--resume {path}: its cells are not those of its grid (edited?); "
                       f"{_HINT}")


def same_code(record, ours):
    """Whether `record` ran the code that `ours` (hlb.bench.code.identity) names: the same
    package source; for a record that kept no source hash, the same commit."""
    theirs = record["environment"].get("code")
    if isinstance(theirs, dict) and theirs.get("source_sha256"):
        return theirs["source_sha256"] == ours["source_sha256"]
    return record["environment"].get("git_commit") == ours["git_commit"]


def check_code(record, path, allow_other):
    """Refuse a record written by other code (another commit, or uncommitted edits that are
    not the tree's), unless `allow_other`."""
    ours = running_code()
    if not allow_other and not same_code(record, ours):
        env = record["environment"]
        theirs = env.get("code") or {"git_commit": env.get("git_commit")}
        raise UsageError(f"--resume {path}: the code differs: {describe(ours)} here, "
                         f"{describe(theirs)} in the record; check out its commit (and apply "
                         "its diff) or give --allow-other-commit")


def check_data(record, path, fingerprint):
    if record["data_fingerprint"] != fingerprint:
        raise UsageError(f"--resume {path}: the data differs: fingerprint {fingerprint} here, "
                         f"{record['data_fingerprint']} in the record; give the --data-dir "
                         "it ran on")


def restore(target, record, path, arm=""):
    """Put the finished runs of `record` into `target` (a hlb.bench.runs.Record) as they were, and
    note the invocation that ran them."""
    target.results = results_of(record, path, arm)
    env = record["environment"]
    earlier = record.get("resumed_from")
    target.resumed_from = (list(earlier) if isinstance(earlier, list) else []) + [
        {"date": env.get("date"), "git_commit": env.get("git_commit"),
         "runs": [r.run for r in target.results]}]
