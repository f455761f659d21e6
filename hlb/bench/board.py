"""A leaderboard of verified entries: `hlb board [DIR...]` reads verification records
(hlb.bench.verify) and ranks the verified ones.

Only a verification says anything here: a claim that nobody reran is not on the board. Each
file is checked as verify checks a claim (its parts add up, its answer follows from its runs),
so an edited one is listed apart with its one-line reason, as is every file that is not a
record at all; the other records (plain, compare, sweep) are counted and left out. Entries
rank by target, then by their measured time ratio to their baseline, best first. The table
is Markdown, ready for a README or an issue; `--plot` draws accuracy against time ratio.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from hlb.bench.code import describe
from hlb.bench.plot import figure, plain_text, save_png
from hlb.bench.records import (LISTED_FORMATS, VERIFICATION_FORMAT, check_shown, load_json,
                               one_line)
from hlb.bench.resume import kind_of
from hlb.bench.verify import check_claim, record_flags
from hlb.errors import HlbError


@dataclass
class Entry:
    path: Path
    name: str             # the recipe and its --set values
    baseline: str         # the flags of the baseline its ratio is to
    target: float
    n: int
    acc_mean: float
    acc_ci95: tuple
    ratio: float
    ratio_ci95: tuple
    card: str
    code: str
    date: str
    verdict: str
    reasons: list


def _number(x):
    return math.nan if x is None else float(x)


def _entry(path, data):
    result, claim = data["result"], data["claim"]
    acc, time = result["accuracy"], result["time"]
    env = data["entry"]["environment"]
    # What the board shows beyond what check_claim recomputed, each of its type.
    check_shown(path, {"claim's recipe": (claim.get("recipe"), "text"),
                       "gpu": (env.get("gpu"), "text"), "date": (env.get("date"), "text")})
    if not isinstance(claim.get("overrides"), list) or not all(
            isinstance(o, str) for o in claim["overrides"]):
        raise HlbError(f"{path}: its claim's overrides are not a list of text (edited?)")
    name = " ".join([f"recipe {claim['recipe']}", *claim["overrides"]])
    return Entry(path, name, record_flags(data["baseline"]), _number(acc["target"]),
                 acc["n"], _number(acc["mean"]), tuple(map(_number, acc["ci95"])),
                 _number(time["ratio"]), tuple(map(_number, time["ratio_ci95"])),
                 env.get("gpu") or data["entry"]["device"], describe(claim["code"]),
                 str(env.get("date") or "")[:10], result["verdict"], result["reasons"])


def read_board(dirs):
    """(entries, broken, skipped) from every .json file under `dirs`: the verification records
    as Entries (verified or not), the files that are broken as (path, the one-line reason),
    and how many other hlb records were passed over."""
    entries, broken, skipped = [], [], 0
    files = sorted({p for d in dirs for p in (
        [Path(d)] if Path(d).is_file() else Path(d).rglob("*.json"))})
    for path in files:
        try:
            data = load_json(path)
            if not isinstance(data, dict):
                raise HlbError(f"{path} is not an hlb record (not a JSON object)")
            form = data.get("format")
            check_shown(path, {"format": (form, "text")})
            if form is not None and form not in LISTED_FORMATS:
                raise HlbError(f"{path}: a record of another kind ({one_line(form, 60)}): "
                               "only verification records are entries")
            if form != VERIFICATION_FORMAT:
                if kind_of(data) == "record" and not isinstance(data.get("runs"), list):
                    raise HlbError(f"{path} is not an hlb record (no runs, no verification)")
                skipped += 1
                continue
            check_claim(data, path)           # its parts add up, its answer follows from them
            entries.append(_entry(path, data))
        except HlbError as e:
            broken.append((path, str(e)))
    return entries, broken, skipped


def ranked(entries):
    """The verified entries, by target (lowest first), then time ratio (fastest first)."""
    verified = [e for e in entries if e.verdict == "verified"]
    return sorted(verified, key=lambda e: (e.target, math.inf if math.isnan(e.ratio)
                                           else e.ratio))


def _interval(value, ci, scale=1, digits=2):
    if math.isnan(value):
        return "n/a"
    text = f"{scale * value:.{digits}f}"
    if not any(math.isnan(x) for x in ci):
        text += f" ({scale * ci[0]:.{digits}f} to {scale * ci[1]:.{digits}f})"
    return text


def _cell(text):
    # One line, of a width a table can take, whatever a file holds.
    return one_line(text, 300).replace("|", "\\|")


def board_lines(entries, broken, skipped):
    """The board as Markdown: the ranked table, then what is not ranked and why."""
    rows = ranked(entries)
    lines = ["| rank | entry | target | mean TTA accuracy % (95% CI) | n | time ratio to "
             "baseline (95% CI) | baseline | card | code | date | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rank, e in enumerate(rows, 1):
        cells = [rank, e.name, f"{100 * e.target:.2f}%", _interval(e.acc_mean, e.acc_ci95, 100),
                 e.n, _interval(e.ratio, e.ratio_ci95, digits=3), e.baseline, e.card, e.code,
                 e.date, e.verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if not rows:
        lines.append("| - | no verified entry yet | | | | | | | | | |")
    apart = [(e.path, e.name, "not reproduced: " + "; ".join(e.reasons))
             for e in entries if e.verdict != "verified"]
    # A reason names its file first; the table's first column already does.
    apart += [(path, "?", why.removeprefix(str(path)).lstrip(": ")) for path, why in broken]
    if apart:
        lines += ["", "Not ranked:", "", "| file | entry | why |", "| --- | --- | --- |"]
        lines += [f"| {_cell(p)} | {_cell(n)} | {_cell(w)} |" for p, n, w in apart]
    if skipped:
        lines += ["", f"{skipped} other record(s) passed over: only verification records "
                      "(`hlb verify RECORD.json`) are entries."]
    return lines


def _short_names(entries):
    """Each entry's name without the words every entry shares (what tells them apart)."""
    words = [e.name.split() for e in entries]
    shared = set.intersection(*map(set, words)) if len(words) > 1 else set()
    return [" ".join(w for w in ws if w not in shared) or e.name for ws, e in zip(words, entries)]


def plot_board(entries, path):
    """Mean accuracy against time ratio, with both intervals, one point per entry (verified:
    a dot, with its rank in the legend; the rest: a cross). Returns the path written."""
    fig, ax = figure((8, 5.5))
    rank = {id(e): i for i, e in enumerate(ranked(entries), 1)}
    shown = [e for e in entries if not (math.isnan(e.ratio) or math.isnan(e.acc_mean))]
    for e, name in zip(shown, _short_names(shown)):
        xerr = [[e.ratio - e.ratio_ci95[0]], [e.ratio_ci95[1] - e.ratio]] \
            if not math.isnan(e.ratio_ci95[0]) else None
        yerr = [[100 * (e.acc_mean - e.acc_ci95[0])], [100 * (e.acc_ci95[1] - e.acc_mean)]] \
            if not math.isnan(e.acc_ci95[0]) else None
        label = f"{rank[id(e)]}. {name}" if id(e) in rank else f"({e.verdict}) {name}"
        ax.errorbar([e.ratio], [100 * e.acc_mean], xerr=xerr, yerr=yerr, capsize=3,
                    fmt="o" if id(e) in rank else "x",
                    label=plain_text(label, 60))
    for target in sorted({e.target for e in entries if not math.isnan(e.target)}):
        ax.axhline(100 * target, color="grey", lw=0.8, ls="--")
    if shown:
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("time ratio to the baseline (lower is faster)")
    ax.set_ylabel("mean TTA accuracy (%)")
    ax.set_title("verification records: mean accuracy and time ratio, with 95% intervals "
                 "(dashed: targets)", fontsize=10)
    return save_png(fig, path)
