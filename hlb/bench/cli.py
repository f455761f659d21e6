"""The command line: parse flags, run, print, write the record, set the exit status.

Every command that trains (main, compare, sweep) is one `Command` run by one sequence,
`_train`: device, scheduler, checks before any data, banner, data, prepare, restore
(--resume), the runs, then on rank 0 the summary, the record kept, and the exit status.

Exit status: 0 success; 1 a data problem, a run that diverged, a record cut short or edited,
or an unexpected error (its traceback saved to a file, see `main`); 2 a usage error (a
--resume that is not the interrupted command, too); 130 Ctrl-C or SIGTERM (a scheduler's time
limit, `timeout`). All of them keep the finished runs, and --resume runs the rest.
Under torchrun (hlb.bench.dist) rank 0 prints, writes and sets that status; the other ranks
stay silent and exit 0 (130 on Ctrl-C), except for an error only they can report.
"""

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hlb.bench import resume, tune
from hlb.bench.board import board_lines, plot_board, read_board
from hlb.bench.code import running_code
from hlb.bench.compare import compare, compare_records, comparison_dict, comparison_lines
from hlb.bench.dist import world_from_env
from hlb.bench.memory import print_fit_notes
from hlb.bench.overrides import flags_recipe, override
from hlb.bench.plot import plot_records
from hlb.bench.records import (default_runs_dir, list_records, load_json, one_line,
                               records_table, save_record)
from hlb.bench.report import (Progress, Table, Watched, jsonable, record_dict, summary_lines,
                              write_json_atomic)
from hlb.bench.runs import PreparedRecipe, Stopped, resolve_device, run_rounds, scheduler_for
from hlb.bench.saved import evaluate_saved, save
from hlb.bench.sweep import RunLines, SweepRun, make_grid, sweep_dict, table_lines
from hlb.bench.tune_report import data_loader, run_search, tune_device, tune_dict
from hlb.bench.verify import (check_code, check_data, claimed, default_baseline, judge,
                              read_claim, record_flags, result_lines, verification_dict)
from hlb.errors import AlreadyReported, HlbError, Unexpected, UsageError
from hlb.execution import execution
from hlb.files import reason
from hlb.recipes import RECIPES, get_recipe
from hlb.train import DIVERGED_LOSS


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line instead of argparse's usage block.
        raise UsageError(f"{message} (see {self.prog} --help)")


def _prog(command=""):
    """How the user started us, for usage lines: the `hlb` command or `python main.py`."""
    name = "hlb" if Path(sys.argv[0]).name == "hlb" else "python main.py"
    return f"{name} {command}".rstrip()


def _command(name, description):
    """The parser of one command (`name` "" for the main one): errors in one line."""
    return _Parser(prog=_prog(name), description=description)


def _seed(text):
    """A --seed: a whole number, not negative (argparse turns the error into one line)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {seed}")
    return seed


def _add_run_flags(p, recipe_help, runs, runs_help, json_help, set_help=None):
    """The flags of every command that trains: the recipe, how many runs, which seeds, and
    (`_add_place_flags`) where it runs and where its record goes."""
    p.add_argument("--recipe", default="94", help=f"{recipe_help} (default 94)")
    if set_help:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--runs", type=int, default=runs, help=f"{runs_help} (default {runs})")
    p.add_argument("--seed", type=_seed, default=0, help="seed of run 0; run i uses seed+i")
    _add_place_flags(p, json_help)


def _add_place_flags(p, json_help):
    """Where it runs, on which data, where the record goes, and --resume to go on after an
    interruption."""
    p.add_argument("--device", default=None,
                   help="cuda, mps or cpu (default: cuda, else mps, when available)")
    p.add_argument("--data-dir", default=None,
                   help="where CIFAR-10 lives or is downloaded to "
                        "(default $HLB_DATA_DIR, else ./data)")
    p.add_argument("--json", default=None, metavar="PATH", help=json_help)
    p.add_argument("--no-save", action="store_true",
                   help="do not keep the record under the runs folder "
                        "($HLB_RUNS_DIR, default ./runs)")
    p.add_argument("--resume", default=None, metavar="RECORD.json",
                   help="go on with an interrupted invocation: give its flags again and the "
                        "record it wrote (--json, or its copy under runs/); the runs it lacks "
                        "are run and RECORD.json is rewritten in place, atomically, as if "
                        "nothing had happened (--json writes elsewhere instead); the record is "
                        "kept under runs/ as usual")
    p.add_argument("--allow-other-commit", action="store_true",
                   help="let --resume go on with other code (another commit, other edits)")


def build_parser():
    p = _command("",
                 "Train a network on CIFAR-10 and report accuracy and time. "
                 "Other commands: compare, sweep, verify, board, eval, plot, runs "
                 "(each with --help).")
    _add_run_flags(p, f"one of: {', '.join(RECIPES)}", 1, "timed runs",
                   "write the full record here",
                   "override a recipe value, e.g. --set epochs=8 (repeatable)")
    p.add_argument("--target-acc", type=float, default=None, metavar="ACC",
                   help="stop each run at the first epoch whose TTA accuracy reaches ACC "
                        "(a fraction, e.g. 0.94); the check is timed")
    p.add_argument("--accuracy-only", action="store_true",
                   help="measure accuracy alone: no per-epoch evaluation, and times not "
                        "reported, so that under torchrun several processes may share one GPU "
                        "(e.g. --nproc_per_node=4 on a machine with one)")
    p.add_argument("--save-model", default=None, metavar="PATH",
                   help="save the final network of the last run (if it finished) as "
                        "safetensors, with the recipe and results; `eval PATH` tests it")
    return p


def build_compare_parser():
    p = _command("compare",
                 "Compare two variants, run interleaved with the same seeds, or "
                 "two saved records (A.json B.json).")
    p.add_argument("records", nargs="*", metavar="RECORD.json")
    for arm in "ab":
        p.add_argument(f"--{arm}", default="", metavar="FLAGS",
                       help=f"arm {arm.upper()}'s flags, e.g. \"--set bias_lr=0.08\" (default: the "
                            "recipe as is)")
    _add_run_flags(p, "the recipe both arms start from", 10, "runs per arm",
                   "write both records and the comparison here")
    return p


def build_sweep_parser():
    p = _command("sweep",
                 "Run the base recipe and every cell of a grid, interleaved with "
                 "the same seeds; rank the cells against the base.")
    _add_run_flags(p, "the base recipe", 5, "runs of the base and of each cell",
                   "write the sweep's record here", "change the base (repeatable)")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values to try (a tuple key takes / between values; repeatable: "
                        "the grid is every combination)")
    p.add_argument("--cell", action="append", default=[], metavar="FLAGS",
                   help="instead of a grid, one variant as compare takes an arm, e.g. "
                        "\"--set activation=silu\" (the base with it) or \"--recipe 94tuned\" "
                        "(repeatable)")
    p.add_argument("--prune", action="store_true",
                   help="stop running cells that cannot catch the best any more")
    return p


def check_writable(path, flag="--json"):
    """Fail before training, not after, when the record could not be written."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {parent} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"{flag} {path}: is a folder, not a file")
    try:
        # Creating a file is the only test that also catches read-only mounts and quotas.
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write in {parent} "
                         f"({e.strerror or reason(e)})") from None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_ctrl_c(world):
    """SIGTERM stops the runs as Ctrl-C does, keeping the finished ones. Not under torchrun,
    whose agent signals its workers itself, nor off the main thread (signal's rule)."""
    if world is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    """Run one command; return its exit status. The last resort is here: an exception no
    code path expected prints one line naming the file that keeps its traceback, and exits 1
    (HLB_DEBUG=1 lets the traceback through instead)."""
    argv = sys.argv[1:] if argv is None else argv
    world = None
    try:
        world = world_from_env()              # None when not under torchrun
        command = {"board": _board, "compare": _compare, "eval": _eval, "plot": _plot,
                   "runs": _runs, "sweep": _sweep, "tune": _tune,
                   "verify": _verify}.get(argv[0] if argv else "")
        with _sigterm_as_ctrl_c(world):
            return command(argv[1:]) if command else _main(argv)
    except HlbError as e:
        # Under torchrun a usage error is every rank's alike, and an AlreadyReported one is
        # rank 0's to report: the other ranks stay silent and exit 0, so that torchrun's report
        # points at rank 0, whose message says what happened (and names the rank at fault).
        follower = world is not None and not world.leader
        if follower and isinstance(e, (UsageError, AlreadyReported)):
            return 0
        print(f"error: {f'rank {world.rank}: ' if follower else ''}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if world is None or world.leader:
            print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("HLB_DEBUG") == "1":
            raise
        return report_unexpected(Unexpected.wrapping(e), None)


def _save_traceback(text, folder):
    """Write a traceback into `folder` (the kept record's; else the runs folder, else the
    system's temporary folder); return the file's path."""
    name = f"traceback-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    for place in [p for p in (folder, default_runs_dir(), Path(tempfile.gettempdir())) if p]:
        try:
            place.mkdir(parents=True, exist_ok=True)
            (place / name).write_text(text)
            return place / name
        except OSError:
            continue
    return None


def report_unexpected(error, folder):
    """One line for an Unexpected error, its traceback saved to a file; exit status 1."""
    if os.environ.get("HLB_DEBUG") == "1":
        print(error.traceback, file=sys.stderr, end="")
        return 1
    path = _save_traceback(error.traceback, folder)
    where = f"the traceback is in {path}" if path else "the traceback could not be saved"
    print(f"error: {error} (not a problem hlb knows: {where}; HLB_DEBUG=1 prints it)",
          file=sys.stderr)
    return 1


# The one sequence of every command that trains


@dataclass
class Command:
    """A command that trains, as `_train` runs it: what it prepares, what it shows and keeps,
    and how it ends."""
    kind: str               # its --resume record: "record", "compare", "sweep", "verification"
    arms: list              # (recipe, overrides) of each recipe it runs, interleaved
    banner: object          # device -> the first line, printed before the data is loaded
    listeners: list         # one per arm: what each shows while it runs
    data_of: object         # (records, scheduler) -> the record, as JSON values
    lines: object           # (records, error) -> the lines printed once the runs end
    keep: object            # (data, args) -> the folder the record was kept in, or None
    end: object = None      # (records, error, folder) -> the exit status; default `finish`
    target_acc: float = None
    on_round: object = None  # (records, finished) -> the arms to stop (a sweep's pruning)
    grid: object = None     # a sweep's grid, which --resume checks too
    restored: object = None  # (saved parts, records, leader) -> the arms stopped before
    data_check: object = None  # (data fingerprint) -> raises if the runs cannot use this data
    accuracy_only: bool = False  # no per-epoch evaluation, no times; processes may share GPUs


def _train(args, command):
    """Device, scheduler, the checks made before any data, banner, data, prepare, restore,
    the runs; then, on rank 0, the lines, the record kept, and the exit status."""
    wall = time.perf_counter()
    running_code()              # which code runs is read now, before the runs
    device = resolve_device(args.device)
    with scheduler_for(device, command.accuracy_only) as scheduler:
        # What this device runs and why; what it cannot run (bf16 before sm_80) stops here.
        plans = [execution(recipe, scheduler.device) for recipe, _ in command.arms]
        saved = _check_start(args, command, device, scheduler)
        if scheduler.leader:
            print(command.banner(device) + _spread(scheduler), flush=True)
            for note in dict.fromkeys(note for how in plans for note in how.notes):
                print(f"  {note}", flush=True)
            print_fit_notes([recipe for recipe, _ in command.arms], scheduler.device)
        cifar = scheduler.load_data(args.data_dir)
        if command.data_check:
            command.data_check(cifar.fingerprint)
        prepared = [PreparedRecipe(recipe, scheduler.device, cifar, args.seed, overrides,
                                   command.accuracy_only)
                    for recipe, overrides in command.arms]
        stopped = _restore(saved, prepared, args.resume, cifar.fingerprint, scheduler.leader,
                           command)
        records, error = _run(prepared, args, command, scheduler, stopped)
        if not scheduler.leader:
            return 130 if isinstance(error, KeyboardInterrupt) else 0
        for record in records:
            record.wall_s = time.perf_counter() - wall
        print("\n".join(command.lines(records, error)))
        folder = command.keep(command.data_of(records, scheduler), args)
        return (command.end or finish)(records, error, folder)


def record_path(args):
    """Where the record goes: --json, else the --resume file itself, else nowhere."""
    return args.json or args.resume


def _check_start(args, command, device, scheduler):
    """Before any data is touched: check that the record can be written and, with --resume,
    read the record and check that this command is the one that wrote it; return the
    [record, label] of each arm (None without --resume). Under torchrun rank 0 alone writes,
    so it alone checks, and every rank stops with it (or gets the records from it)."""
    def work():
        if record_path(args):
            check_writable(record_path(args), "--json" if args.json else "--resume")
        if not args.resume:
            return None
        data = resume.read(args.resume, command.kind)
        if command.grid:
            resume.check_grid(data, args.resume, command.grid)
        parts = resume.parts(data, command.kind)
        for (record, label), (recipe, overrides) in zip(parts, command.arms):
            resume.check_same(record, args.resume + label, recipe, overrides, args.seed,
                              args.runs, command.target_acc, device, command.accuracy_only)
            resume.check_code(record, args.resume + label, args.allow_other_commit)
        return parts

    return scheduler.on_leader(work)


def _restore(saved, prepared, path, fingerprint, leader, command):
    """Put the finished runs of the --resume record back (after checking the data); return
    the arms stopped before (a sweep's dropped cells)."""
    if saved is None:
        return set()
    for (record, label), p in zip(saved, prepared):
        resume.check_data(record, path + label, fingerprint)
        resume.restore(p.record, record, path, label)
    if leader:
        kept = [r.run for r in prepared[0].record.results]
        print(f"  resuming {path}: run(s) {', '.join(map(str, kept)) or 'none'} kept as they "
              "were", flush=True)
    if command.restored is None:
        return set()
    return command.restored(saved, [p.record for p in prepared], leader)


def _spread(scheduler):
    return f", spread over {scheduler.size} processes" if scheduler.describe() else ""


def _run(prepared, args, command, scheduler, stopped):
    """The runs, with the record rewritten after each round (after a sweep's pruning) so
    that a failure keeps what finished; returns (records, the error that stopped them or
    None)."""
    path = record_path(args)

    def each_round(records, finished):
        stop = command.on_round(records, finished) if command.on_round else ()
        if path and not finished:
            write_record(path, command.data_of(records, scheduler))
        return stop

    try:
        return run_rounds(prepared, args.runs, command.listeners, scheduler,
                          command.target_acc, each_round, stopped), None
    except Stopped as e:
        return e.records, e.error


def with_dist(data, scheduler):
    """A record's JSON with, under torchrun, which process and GPU ran which run."""
    if scheduler.describe():
        data["dist"] = scheduler.describe()
    return data


def write_record(path, data):
    try:
        write_json_atomic(path, data)
    except OSError as e:
        raise HlbError(f"could not write the record {path} ({e.strerror or e}); "
                       "nothing was left behind") from None


def keep(data, json_path, no_save, label=""):
    """Write --json and keep the record under the runs folder; returns that folder."""
    if json_path:
        write_record(json_path, data)
        print(f"  record written to {json_path}")
    if no_save:
        return None
    kept = save_record(data, default_runs_dir())
    print(f"  {label or 'record'} kept in {kept}")
    return kept.parent


def finish(records, error, folder):
    """The exit status for how the runs ended (no error: all ran)."""
    if isinstance(error, KeyboardInterrupt):
        done = min(len(r.results) for r in records)
        print(f"interrupted after {done} finished run(s)", file=sys.stderr)
        return 130
    if isinstance(error, Unexpected):
        return report_unexpected(error, folder)
    if error:
        raise error
    return 0


def _quicker(recipe):
    """The quicker alternative a long estimate names."""
    return "--recipe smoke" if recipe.name != "smoke" else "fewer --runs"


# The commands


def _main(argv):
    args = build_parser().parse_args(argv)
    recipe = override(get_recipe(args.recipe), args.set)
    if args.runs < 1:
        raise UsageError(f"--runs must be at least 1, not {args.runs}")
    if args.target_acc is not None and not 0 < args.target_acc <= 1:
        raise UsageError(f"--target-acc is a fraction in (0, 1], not {args.target_acc}")
    if args.target_acc is not None and args.accuracy_only:
        raise UsageError("--target-acc measures the time to a target, which --accuracy-only "
                         "does not report; give one or the other")
    _check_save_model(args.save_model)

    def end(records, error, folder):
        _save_model(args.save_model, records[0], error)
        status = finish(records, error, folder)
        if status == 0 and records[0].summary.diverged:
            print(f"error: {records[0].summary.diverged} run(s) diverged (loss NaN, infinite "
                  f"or above {DIVERGED_LOSS:g} per image); try lower learning rates "
                  "(head_lr, bias_lr, muon_lr)", file=sys.stderr)
            return 1
        return status

    return _train(args, Command(
        kind="record", arms=[(recipe, args.set)], target_acc=args.target_acc,
        accuracy_only=args.accuracy_only,
        banner=lambda device: f"hlb-cifar10: recipe {recipe.name}, {args.runs} run(s) on "
                              f"{device}",
        listeners=[Table(progress=Progress(_quicker(recipe)), recipe=recipe)],
        data_of=lambda records, s: with_dist(record_dict(records[0], argv), s),
        lines=lambda records, error: summary_lines(records[0]),
        keep=lambda data, args: keep(data, record_path(args), args.no_save), end=end))


def _compare_saved(args):
    if len(args.records) != 2 or args.a or args.b or args.resume:
        raise UsageError("compare takes two records (A.json B.json) or --a/--b flags")
    if args.json:
        check_writable(args.json)
    comparison = compare_records(*args.records)
    print("\n".join(comparison_lines(comparison)))
    if args.json:
        write_record(args.json, {"comparison": comparison_dict(comparison),
                                 "records": args.records})
    return 0


def _compare(argv):
    args = build_compare_parser().parse_args(argv)
    if args.records:
        return _compare_saved(args)
    arms = [flags_recipe(args.a, args.recipe, "arm A"),
            flags_recipe(args.b, args.recipe, "arm B")]
    if args.runs < 2:
        raise UsageError(f"--runs must be at least 2 to compare, not {args.runs}")

    def data_of(records, scheduler):
        comparison = compare(records[0].results, records[1].results)
        return {"comparison": comparison_dict(comparison),
                **{name: with_dist(record_dict(record, argv), scheduler)
                   for name, record in zip("ab", records)}}

    def lines(records, error):
        out = [f"arm {name}: " + "\n".join(summary_lines(record))
               for name, record in zip("AB", records)]
        return out + comparison_lines(compare(records[0].results, records[1].results))

    def kept(data, args):
        if record_path(args):
            write_record(record_path(args), data)
            print(f"  record written to {record_path(args)}")
        folders = [keep(data[name], None, args.no_save, f"arm {name.upper()}") for name in "ab"]
        return folders[0]

    progress = Progress(_quicker(arms[0][0]))
    # Run i of both arms goes to the same process in the same round: the pairs stay paired.
    return _train(args, Command(
        kind="compare", arms=arms,
        banner=lambda device: f"hlb-cifar10 compare: A = {args.a or '(recipe as is)'}, B = "
                              f"{args.b or '(as is)'}; {args.runs} runs each, interleaved, "
                              f"seeds {args.seed}..{args.seed + args.runs - 1}",
        listeners=[Table(label=name, progress=progress, recipe=recipe)
                   for name, (recipe, _) in zip("AB", arms)],
        data_of=data_of, lines=lines, keep=kept))


def _sweep(argv):
    """`main.py sweep`: the base and a grid of variants, interleaved, ranked (hlb.bench.sweep)."""
    args = build_sweep_parser().parse_args(argv)
    grid = make_grid(get_recipe(args.recipe), args.set, args.vary, args.runs, args.prune,
                     args.cell)
    sweep = SweepRun(grid)
    recipes = [c.recipe for c in [grid.base] + grid.cells]
    progress = Progress(_quicker(grid.base.recipe))
    return _train(args, Command(
        kind="sweep", arms=[(c.recipe, c.overrides) for c in [grid.base] + grid.cells],
        grid=grid,
        banner=lambda device: f"hlb-cifar10 sweep: base {args.recipe} {' '.join(args.set)}"
                              .rstrip() + f" and {len(grid.cells)} cell(s), {args.runs} runs "
                              f"each, interleaved, seeds {args.seed}..{args.seed + args.runs - 1}",
        listeners=[Watched(lines, progress.arm(name, recipe)) for lines, name, recipe in
                   zip(sweep.listeners, sweep.names, recipes)],
        on_round=sweep.on_round, restored=sweep.restore,
        data_of=lambda records, s: with_dist(sweep_dict(sweep.outcome(records), argv), s),
        lines=lambda records, error: table_lines(sweep.outcome(records, error)),
        keep=lambda data, args: keep(data, record_path(args), args.no_save)))


def _check_save_model(path):
    if path and world_from_env() is not None:
        raise UsageError("--save-model is not supported under torchrun yet")
    if path:
        check_writable(path, "--save-model")


def _save_model(path, record, error):
    """Save the last run's network when that run finished (see --save-model)."""
    if not path:
        return
    if error:
        print(f"  model not saved to {path}: the runs did not finish", file=sys.stderr)
        return
    try:
        print(f"  model saved to {save(record, path)} (test it: eval {path})")
    except HlbError as e:
        print(f"  model not saved to {path}: {e}", file=sys.stderr)


def _eval(argv):
    p = _command("eval",
                 "Test a network saved with --save-model: plain and TTA accuracy "
                 "on the test images of its recipe, beside what its run reported.")
    p.add_argument("model", metavar="PATH")
    p.add_argument("--data-dir", default=None,
                   help="where CIFAR-10 lives (default $HLB_DATA_DIR, else ./data)")
    p.add_argument("--device", default=None,
                   help="cuda, mps or cpu (default: cuda, else mps, when available)")
    args = p.parse_args(argv)
    print("\n".join(evaluate_saved(args.model, args.data_dir, args.device)))
    return 0


def _plot(argv):
    p = _command("plot",
                 "Plot records: accuracy against time, final accuracies side by "
                 "side, loss curves (needs requirements-plot.txt).")
    p.add_argument("records", nargs="+", metavar="RECORD.json")
    p.add_argument("-o", "--output", default="plot.png", help="PNG to write (default plot.png)")
    args = p.parse_args(argv)
    apart = []          # files that are not records: named, with why, and the rest drawn
    out = plot_records(args.records, args.output, apart=apart)
    for _, why in apart:
        print(f"left out {one_line(why)}")
    print(f"plot written to {out}")
    return 0


def build_tune_parser():
    p = _command("tune",
                 "Search recipe values on Optuna (pip install \".[tune]\"): each trial "
                 "runs the same seeds; many workers share one study (docs/tune.md).")
    _add_run_flags(p, "the recipe searched", 2, "runs (seeds) per trial",
                   "write the tune record here", "change the base (repeatable)")
    p.add_argument("--space", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                   help="a numeric range, or KEY=A,B,C choices (repeatable)")
    p.add_argument("--objective", default="accuracy", choices=tune.OBJECTIVES,
                   help="accuracy: the best mean TTA accuracy; time: the least time at "
                        "--target (default accuracy)")
    p.add_argument("--target", type=float, default=None, metavar="ACC",
                   help="the accuracy the time objective must not fall below (a fraction)")
    p.add_argument("--trials", type=int, default=20,
                   help="complete and pruned trials the study holds at the end (default 20)")
    p.add_argument("--study", default=None, help="its name (default RECIPE-OBJECTIVE)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="sqlite:///PATH, any database URL, or journal:PATH (a file on a "
                        "shared disk); default sqlite:///RUNS/tune.db")
    p.add_argument("--sampler-seed", type=_seed, default=None,
                   help="seed of the TPE sampler: the same seed, the same first trials")
    p.add_argument("--prune", action="store_true",
                   help="stop a trial whose runs so far fall below the target or the best")
    p.add_argument("--confirm", type=int, default=0, metavar="K",
                   help="rerun the K best on fresh seeds beside the base (Holm-corrected)")
    p.add_argument("--confirm-runs", type=int, default=None, metavar="R",
                   help="runs of each in the confirmation (default: --runs, or the fewest "
                        "above it that can tell a difference)")
    p.add_argument("--accuracy-only", action="store_true",
                   help="several workers per GPU: no per-epoch evaluation, cost in FLOPs")
    p.add_argument("--heartbeat", type=int, default=10, metavar="S",
                   help="seconds between a worker's signs of life; a trial silent for twice "
                        "as long is failed and retried (database storages; default 10)")
    return p


def _tune(argv):
    """`tune`: a search on Optuna's storage (hlb.bench.tune), ranked and confirmed."""
    args = build_tune_parser().parse_args(argv)
    if args.resume:
        raise UsageError("tune goes on by itself: run the same command again, without --resume "
                         "(the study in --storage holds the trials)")
    base = override(get_recipe(args.recipe), args.set)
    plan = tune.check_plan(tune.Plan(
        base, args.set, tune.make_space(args.space, base, args.set), args.objective,
        args.target, args.runs, args.trials, args.seed, args.study, args.storage,
        args.sampler_seed, args.prune, args.accuracy_only, args.heartbeat, args.confirm,
        args.confirm_runs))
    tune.optuna_module()
    world = world_from_env()
    if args.json:
        check_writable(args.json)
    device = tune_device(resolve_device(args.device), world, args.accuracy_only)
    if world is not None and not world.leader:
        plan.confirm = 0            # rank 0 alone confirms, prints the end and keeps the record
    print(f"hlb-cifar10 tune: study {plan.study} in {tune.shown_url(plan.storage)}, "
          f"{plan.trials} trial(s) of {plan.runs} run(s) on {device}, objective "
          f"{plan.objective}" + (f" at {100 * plan.target:.2f}%" if plan.target else ""),
          flush=True)
    try:
        result = run_search(plan, data_loader(args.data_dir), device,
                            lambda line: print(line, flush=True), RunLines("", 0))
    except KeyboardInterrupt:
        print("interrupted: the trial in flight is marked failed; the same command goes on "
              "with the study", file=sys.stderr)
        return 130
    if world is not None and not world.leader:
        return 0
    print("\n".join(result.lines()))
    keep(tune_dict(result, ["tune", *argv]), args.json, args.no_save, "tune record")
    return 0


def _runs(argv):
    p = _command("runs", "List the kept records, newest first.")
    p.add_argument("--dir", default=None, help="runs folder (default $HLB_RUNS_DIR or ./runs)")
    args = p.parse_args(argv)
    runs_dir = Path(args.dir) if args.dir else default_runs_dir()
    print("\n".join(records_table(list_records(runs_dir), runs_dir)))
    return 0


def build_verify_parser():
    p = _command("verify",
                 "Run a record's recipe again here, interleaved with a baseline and "
                 "with the record's seeds, and say whether its claim holds: its "
                 "accuracy (consistent with the claim, above its recipe's target) "
                 "and its time ratio to the baseline. Writes a verification record "
                 "(kept under runs/; `board` ranks them).")
    p.add_argument("record", metavar="RECORD.json",
                   help="a record written by main.py --json, compare --json (arm b is the "
                        "entry, arm a its baseline) or verify --json")
    p.add_argument("--runs", type=int, default=None,
                   help="at most this many runs of each (default: the record's finished runs)")
    p.add_argument("--baseline", default=None, metavar="FLAGS",
                   help="the baseline's flags, e.g. \"--recipe 94sgd\" (default: the record's "
                        "own baseline, else recipe 94 of this code; on a CPU beside an entry "
                        "of a tenth of its work or less, the entry's recipe as named)")
    _add_place_flags(p, "write the verification record here")
    return p


def _verify(argv):
    """`verify RECORD.json`: integrity, code and data first, then the reruns (hlb.bench.verify)."""
    args = build_verify_parser().parse_args(argv)
    data, checked, sha256 = read_claim(args.record)
    check_code(data, args.record)
    claim = claimed(args.record, sha256, checked)
    entry = flags_recipe(record_flags(checked[0][0]), "94", f"{args.record}: its recipe")
    if jsonable(entry[0].to_dict()) != jsonable(checked[0][0]["recipe"]):
        raise HlbError(f"{args.record}: its recipe values are not those its name and --set "
                       "give here (edited?)")
    flags, why = (args.baseline, None) if args.baseline is not None else default_baseline(
        claim["baseline"], entry[0], resolve_device(args.device))
    baseline = flags_recipe(flags, "94", "--baseline")
    if args.runs is not None and args.runs < 2:
        raise UsageError(f"--runs must be at least 2 to verify, not {args.runs}")
    args.runs, args.seed = min(args.runs or claim["n"], claim["n"]), claim["seed"]
    if args.resume:
        resumed = load_json(args.resume)
        if isinstance(resumed, dict) and (resumed.get("claim") or {}).get("sha256") != sha256:
            raise UsageError(f"--resume {args.resume}: it verified another claim than "
                             f"{args.record}; give the record it verified")

    def data_of(records, scheduler):
        return with_dist(verification_dict(claim, records[0], records[1], argv), scheduler)

    def lines(records, error):
        out = [f"{name}: " + "\n".join(summary_lines(record))
               for name, record in zip(("entry", "baseline"), records)]
        return out + result_lines(verification_dict(claim, records[0], records[1], argv))

    def end(records, error, folder):
        status = finish(records, error, folder)
        verdict = judge(claim, entry[0].target, records[0].results, records[1].results,
                        records[0].device)["verdict"]
        return status or (0 if verdict == "verified" else 1)

    progress = Progress("fewer --runs")
    return _train(args, Command(
        kind="verification", arms=[entry, baseline],
        banner=lambda device: f"hlb-cifar10 verify {args.record}: recipe {claim['recipe']} "
                              f"{' '.join(claim['overrides'])}".rstrip()
                              + f" against the baseline {flags or '--recipe 94'}"
                              + (f" ({why})" if why else "") + f"; {args.runs} runs each, "
                              f"interleaved, the claim's seeds "
                              f"{args.seed}..{args.seed + args.runs - 1}",
        listeners=[Table(label=name, progress=progress, recipe=recipe)
                   for name, (recipe, _) in zip(("entry", "base "), (entry, baseline))],
        data_check=lambda fingerprint: check_data(data, args.record, fingerprint),
        data_of=data_of, lines=lines, end=end,
        keep=lambda data, args: keep(data, record_path(args), args.no_save, "verification")))


def _board(argv):
    p = _command("board",
                 "A leaderboard of verification records (verify --json, or kept "
                 "under runs/), as Markdown: verified entries ranked by target and "
                 "time ratio, the rest apart with their reason.")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="folders (or files) to read "
                   "(default: the runs folder, $HLB_RUNS_DIR or ./runs)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw accuracy against time ratio, with intervals")
    args = p.parse_args(argv)
    dirs = [Path(d) for d in args.dirs] or [default_runs_dir()]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise UsageError(f"no such folder or file: {', '.join(missing)}")
    entries, broken, skipped = read_board(dirs)
    print("\n".join(board_lines(entries, broken, skipped)))
    if args.plot:
        print(f"plot written to {plot_board(entries, args.plot)}")
    return 0
