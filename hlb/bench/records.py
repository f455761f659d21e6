"""Keeping records: one folder per saved record under a runs directory, and a table of them.

    runs/20250101-120000-smoke-1a2b3c4d/record.json

A record is the dict that `main.py --json` writes (hlb.bench.report.record_dict). The folder name
starts with the save time so `ls` sorts it; the short hash of the JSON text keeps two saves in
the same second apart (two identical records share a folder, which loses nothing).
`python main.py runs` prints the table, newest first.
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from datetime import datetime
from pathlib import Path

from hlb.bench.report import jsonable
from hlb.bench.stats import summarize
from hlb.errors import HlbError
from hlb.files import reason, write_atomic
from hlb.train import EpochRow, RunResult

RECORD_FILE = "record.json"
VERIFICATION_FORMAT = "hlb-cifar10 verification v1"     # hlb.bench.verify's records
# The kinds `runs` lists: main.py's records, sweeps (their base) and verifications.
TUNE_FORMAT = "hlb-cifar10 tune v1"     # hlb.bench.tune's: a plain record of its best trial
LISTED_FORMATS = ("hlb-cifar10 record v1", "hlb-cifar10 sweep v1", VERIFICATION_FORMAT,
                  TUNE_FORMAT)
_HINT = "give a file written by main.py --json"


def default_runs_dir():
    return Path(os.environ.get("HLB_RUNS_DIR") or "runs")


def _folder_name(record, text):
    verification = record.get("format") == VERIFICATION_FORMAT
    part = record.get("entry") if verification else record
    recipe = part.get("recipe") if isinstance(part, dict) else None
    recipe = recipe if isinstance(recipe, dict) else {}
    # The name becomes part of a path; keep it to characters every file system accepts.
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(recipe.get("name") or "record"))
    name = f"verify-{name}" if verification else name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{digest}"


def save_record(record, runs_dir):
    """Write `record` to runs_dir/<YYYYmmdd-HHMMSS>-<recipe>-<hash8>/record.json; return it."""
    if not isinstance(record, dict):
        raise HlbError(f"cannot save {type(record).__name__} as a record; give a dict as "
                       f"written by hlb.bench.report.record_dict")
    # The hash names exactly the text written.
    text = json.dumps(record, indent=1) + "\n"
    folder = Path(runs_dir) / _folder_name(record, text)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / RECORD_FILE, lambda f: f.write(text.encode()))
    except OSError as e:
        if created:
            _remove_empty(folder)
        raise HlbError(f"could not save the record in {folder} ({e.strerror or e})") from None
    return folder / RECORD_FILE


def _remove_empty(folder):
    try:
        folder.rmdir()      # only succeeds when empty: never removes anything written
    except OSError:
        pass


MAX_RECORD_BYTES = 512 * 2**20      # far above any record hlb writes (a 2000-run one: ~20 MB)


def _constant(name):
    raise ValueError(f"{name} is not JSON")    # json.loads would take NaN; we never write it


def load_json(path, with_bytes=False):
    """The JSON value in the file at `path` (and the file's bytes, `with_bytes`); any problem
    is one HlbError line naming it: missing, a folder, too large, not JSON, nested too deep."""
    try:
        size = os.stat(path).st_size
        if size > MAX_RECORD_BYTES:
            raise HlbError(f"{path} is {size} bytes, more than any record; {_HINT}")
        raw = Path(path).read_bytes()
        data = json.loads(raw, parse_constant=_constant)
    except FileNotFoundError:
        raise HlbError(f"no record at {path}; {_HINT}") from None
    except IsADirectoryError:
        raise HlbError(f"{path} is a folder, not a record; {_HINT}") from None
    except json.JSONDecodeError as e:
        raise HlbError(f"{path} is not JSON ({e.msg}, line {e.lineno}: cut short or edited?); "
                       f"{_HINT}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HlbError(f"cannot read record {path} ({getattr(e, 'strerror', None) or e})") \
            from None
    except (RecursionError, ValueError) as e:        # nesting or a number beyond what we read
        raise HlbError(f"{path} is not a record ({type(e).__name__}: {reason(e)[:80]}); "
                       f"{_HINT}") from None
    return (data, raw) if with_bytes else data


def read_record(path):
    """Read and check a record file (see check_record)."""
    return check_record(load_json(path), path)


_PARTS = {"recipe": dict, "summary": dict, "environment": dict, "overrides": list}


def check_record(record, path, arm=""):
    """`record` when it has the shape of an hlb record (a list of runs, rows that are dicts,
    its parts of the right kind, run indices and seeds that agree); else one HlbError line
    naming the file (and the `arm`, e.g. " arm a", of a compare record)."""
    where = f"{path}{arm}"
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        raise HlbError(f"{where} is not an hlb record (no list of runs); {_HINT}")
    if not isinstance(record.get("epochs", []), list) or not all(
            isinstance(r, dict) for r in record["runs"] + record.get("epochs", [])):
        raise HlbError(f"{where} is not an hlb record (runs or epochs are not rows); {_HINT}")
    for key, kind in _PARTS.items():
        if key in record and not isinstance(record[key], kind):
            raise HlbError(f"{where}: {key} is not a {kind.__name__} (edited?); {_HINT}")
    _check_runs(record, where)
    return record


def whole(value, least=0):
    """Whether `value` is an int (not a bool) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_runs(record, where):
    """Run i appears once, below runs_asked, with seed `seed + i` (where the record says)."""
    seed, asked = record.get("seed"), record.get("runs_asked")
    for key, least in (("seed", 0), ("runs_asked", 1)):
        if key in record and record[key] is not None and not whole(record[key], least):
            raise HlbError(f"{where}: {key} {record[key]!r} is not a whole number >= {least} "
                           "(edited?)")
    seen = set()
    for row in record["runs"]:
        if "run" not in row:            # a trimmed record (compare reads such): nothing to check
            continue
        run = row["run"]
        if not whole(run):
            raise HlbError(f"{where}: run index {run!r} is not a whole number >= 0 (edited?)")
        if run in seen:
            raise HlbError(f"{where}: run {run} appears twice (edited?)")
        if whole(asked) and run >= asked:
            raise HlbError(f"{where}: run {run} is out of range: the record asked for {asked} "
                           "run(s) (edited?)")
        if whole(seed) and "seed" in row and row["seed"] != seed + run:
            raise HlbError(f"{where}: run {run} has seed {row['seed']!r}, not {seed + run} "
                           "(seed + run; edited?)")
        seen.add(run)


def _fits(value, kind):
    """Whether a JSON value fits a dataclass field's type (NaN is written as null)."""
    if kind is float:
        return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return whole(value, -2**63)
    return isinstance(value, kind)


def _rebuild(cls, row, what, where, hint):
    """A `cls` (RunResult or EpochRow) from its JSON row, every field there and of its type."""
    kinds = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "epochs"}
    missing, extra = sorted(kinds.keys() - row.keys()), sorted(row.keys() - kinds.keys())
    wrong = [k for k in kinds if k in row and not _fits(row[k], kinds[k])]
    for problem, keys in (("lacks", missing), ("has unknown", extra), ("has a bad", wrong)):
        if keys:
            raise HlbError(f"{where}: {what} {problem} {', '.join(keys)} (cut short or "
                           f"edited?); {hint}")
    return cls(**row)


# What a record holds besides its runs, to be run again (resumed or verified), and each kind.
RECORD_FIELDS = {"recipe": dict, "overrides": list, "seed": int, "data_fingerprint": str,
                 "device": str, "environment": dict}


def check_fields(record, where, hint, fields=RECORD_FIELDS):
    """Refuse, in one line, a record that lacks one of `fields` or holds it of another kind,
    or whose overrides are not all text."""
    for key, kind in fields.items():
        if not isinstance(record.get(key), kind) or kind is int and not whole(record[key]):
            raise HlbError(f"{where}: {key} is missing or not a {kind.__name__} (cut short or "
                           f"edited?); {hint}")
    if not all(isinstance(item, str) for item in record["overrides"]):
        raise HlbError(f"{where}: overrides are not all text (edited?); {hint}")


def runs_of(record, where, hint=_HINT):
    """The runs of a checked record (check_record) as RunResults with their epoch rows, every
    field there and of its type; `where` and `hint` begin and end the one line of a problem."""
    results = [_rebuild(RunResult, row, f"run {i}", where, hint)
               for i, row in enumerate(record["runs"])]
    by_run = {r.run: r for r in results}
    for i, row in enumerate(record.get("epochs") or []):
        epoch = _rebuild(EpochRow, row, f"epoch row {i}", where, hint)
        if epoch.run not in by_run:
            raise HlbError(f"{where}: epoch row {i} belongs to run {epoch.run}, which is not in "
                           f"the record (edited?); {hint}")
        by_run[epoch.run].epochs.append(epoch)
    return sorted(results, key=lambda r: r.run)


def same(a, b):
    """JSON values equal, numbers up to rounding."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if numbers:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b and type(a) is type(b)


def check_integrity(record, where, hint=_HINT):
    """Refuse a record whose numbers do not add up, in one line naming what: every run a whole
    row (runs_of), the runs asked all there unless it says it stopped (or, a sweep's cell, was
    dropped), and its summary the one its runs give. (check_record has checked run i's seed:
    seed + i.) Returns its runs."""
    results = runs_of(record, where, hint)
    asked = record.get("runs_asked")
    ended_early = record.get("stopped") is not None or record.get("dropped")
    if whole(asked, 1) and not ended_early and len(results) != asked:
        raise HlbError(f"{where}: {len(results)} run(s) where {asked} were asked, and it does "
                       f"not say it stopped (cut short or edited?); {hint}")
    summary = record.get("summary")
    if not isinstance(summary, dict):
        raise HlbError(f"{where}: it has no summary (cut short or edited?); {hint}")
    expected = jsonable(dataclasses.asdict(summarize(results)))
    for key, value in expected.items():
        if not same(summary.get(key), value):
            raise HlbError(f"{where}: its summary does not add up: {key} {summary.get(key)!r} "
                           f"in it, {value!r} from its runs (edited?); {hint}")
    return results


def overrides_of(record):
    """The record's `--set key=value` texts, in order: its "overrides", or for a record
    written before they were kept, the ones in its "argv"."""
    if isinstance(record.get("overrides"), list):
        return [str(item) for item in record["overrides"]]
    found = []
    args = record.get("argv") if isinstance(record.get("argv"), list) else []
    for i, arg in enumerate(args):
        if arg == "--set" and i + 1 < len(args):
            found.append(str(args[i + 1]))
        elif isinstance(arg, str) and arg.startswith("--set="):
            found.append(arg[len("--set="):])
    return found


def number(value):
    """A number read from a record: NaN for null (records write NaN so), a missing value or
    anything that is not a number, never a crash (an integer beyond a float's range is
    infinite)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text, limit=None):
    """`text` as it may be shown: its control characters escaped (a newline reads as \\n, so
    one record stays one line), cut to `limit` characters with an ellipsis."""
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text))
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def _parse_date(text):
    try:
        date = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
        date.timestamp()            # a date at the calendar's edge may have none
        return date
    except (TypeError, ValueError, OverflowError):
        return None


def _kind_name(value):
    name = type(value).__name__
    return "null" if value is None else ("an " if name[0] in "aeiou" else "a ") + name


def check_shown(where, fields):
    """Refuse, in one line, a record whose shown fields ({name: (value, kind)}, kind "text",
    "count" or "number"; null or absent is always allowed) hold a value of another type: a
    table or a plot would show it wrong, or stop on it."""
    for name, (value, kind) in fields.items():
        fits = (value is None or kind == "text" and isinstance(value, str)
                or kind == "count" and whole(value)
                or kind == "number" and isinstance(value, (int, float))
                and not isinstance(value, bool))
        if not fits:
            raise HlbError(f"{where}: its {name} is {_kind_name(value)}, not {kind} "
                           f"(edited?); {_HINT}")


def _parts_of(record):
    return [record.get(k) if isinstance(record.get(k), dict) else {}
            for k in ("summary", "environment", "recipe")]


def _row(path, record):
    summary, env, recipe = _parts_of(record)
    check_shown(path, {
        "date": (env.get("date"), "text"), "recipe name": (recipe.get("name"), "text"),
        "device": (record.get("device"), "text"), "gpu": (env.get("gpu"), "text"),
        "summary n": (summary.get("n"), "count"),
        "summary diverged": (summary.get("diverged"), "count"),
        "summary acc_mean": (summary.get("acc_mean"), "number"),
        "summary time_mean": (summary.get("time_mean"), "number")})
    if not all(isinstance(item, str) for item in record.get("overrides") or []):
        raise HlbError(f"{path}: its overrides are not all text (edited?); {_HINT}")
    date = _parse_date(env.get("date"))
    return {
        "path": path,
        "date": date.strftime("%Y-%m-%d %H:%M:%S") if date else "",
        "recipe": str(recipe.get("name") or "?"),
        "n": len(record["runs"]) if summary.get("n") is None else summary["n"],
        "diverged": summary.get("diverged", 0),
        "acc_mean": number(summary.get("acc_mean")),
        "time_mean": number(summary.get("time_mean")),
        "overrides": overrides_of(record),
        "device": record.get("device") or "",
        "gpu": env.get("gpu") or "",
        "error": None,
        # Newest first by the record's own date; the file's time when the date is missing.
        "_sort": date.timestamp() if date else path.stat().st_mtime,
    }


def _listed(path):
    """The row of the record at `path`; a verification's is its rerun's, named so, with its
    verdict."""
    data = load_json(path)
    form = data.get("format") if isinstance(data, dict) else None
    check_shown(path, {"format": (form, "text")})
    if form is not None and form not in LISTED_FORMATS:
        # A record of a kind this code does not know (a newer hlb's): apart, not a crash.
        raise HlbError(f"{path}: a record of another kind ({one_line(form, 60)}), not listed "
                       "here")
    if form == TUNE_FORMAT:
        row = _row(path, check_record(data, path))
        return {**row, "recipe": f"tune {row['recipe']}"}
    if form != VERIFICATION_FORMAT:
        return _row(path, check_record(data, path))
    entry = data.get("entry") if isinstance(data.get("entry"), dict) else None
    row = _row(path, check_record(entry, path, " entry"))
    result = data.get("result") if isinstance(data.get("result"), dict) else {}
    row["recipe"] = f"verify {row['recipe']}"
    row["overrides"] = row["overrides"] + [f"({result.get('verdict') or 'no verdict'})"]
    return row


def list_records(runs_dir):
    """One row per runs_dir/*/record.json, newest first.

    A record that cannot be read or is not a record is not dropped silently: it gets a row
    with "error" set to the one-line reason (its other fields empty), after the good rows,
    so a table shows it and `sum(r["error"] is not None for r in rows)` counts them.
    A missing or empty runs_dir gives [].
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    good, bad = [], []
    for path in sorted(runs_dir.glob(f"*/{RECORD_FILE}")):
        try:
            good.append(_listed(path))
        except (HlbError, OSError) as e:
            bad.append({"path": path, "date": "", "recipe": "", "n": 0, "diverged": 0,
                        "acc_mean": math.nan, "time_mean": math.nan, "overrides": [],
                        "device": "", "gpu": "", "error": str(e)})
    good.sort(key=lambda r: r["_sort"], reverse=True)
    for row in good:
        del row["_sort"]
    return good + bad


MAX_CELL = 120      # characters; one hostile value must not widen every line of the table


def _cells(row):
    if row["error"]:
        # The reason names the file, so it stands in the path column.
        return ["", "(unreadable)", "", "", "", "", "", one_line(row["error"], 4 * MAX_CELL)]
    n = f"{row['n']}" + (f"+{row['diverged']}d" if row["diverged"] else "")
    acc = "" if math.isnan(row["acc_mean"]) else f"{100 * row['acc_mean']:.2f}"
    secs = "" if math.isnan(row["time_mean"]) else f"{row['time_mean']:.3f}"
    device = row["gpu"] or row["device"]
    cells = [row["date"], row["recipe"], n, acc, secs, device, " ".join(row["overrides"])]
    return [one_line(c, MAX_CELL) for c in cells] + [one_line(row["path"])]


def records_table(rows, runs_dir=None):
    """Fixed-width lines: one header and one line per row (n "3+1d": 3 finished, 1 diverged)."""
    if not rows:
        where = runs_dir if runs_dir is not None else default_runs_dir()
        return [f"no records in {where}"]
    header = ["date", "recipe", "n", "acc %", "time s", "device", "overrides", "path"]
    right = {"n", "acc %", "time s"}     # numbers line up on the right
    body = [_cells(r) for r in rows]
    # The last column (path) is left unpadded: it is the long one and ends the line.
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header[:-1])]

    def line(cells):
        padded = [c.rjust(w) if h in right else c.ljust(w)
                  for h, c, w in zip(header, cells, widths)]
        return "  ".join(padded + [cells[-1]]).rstrip()

    rule = line(["-" * w for w in widths] + ["-" * len(header[-1])])
    return [line(header), rule] + [line(c) for c in body]

