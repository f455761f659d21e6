"""The command line: parse flags, run, print, write the record, set the exit status.

Exit status: 0 success; 1 a data problem or a run that diverged; 2 a usage error; 130 Ctrl-C
or SIGTERM (a scheduler's time limit, `timeout`): both keep the finished runs.
Under torchrun (hlb.dist) rank 0 prints, writes and sets that status; the other ranks stay
silent and exit 0 (130 on Ctrl-C), except for an error only they can report.
"""

import argparse
import contextlib
import os
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path

from hlb.errors import HlbError, UsageError
from hlb.recipes import RECIPES, get_recipe, override


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line instead of argparse's usage block.
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser():
    p = _Parser(prog="python main.py",
                description="Train a network on CIFAR-10 and report accuracy and time.")
    p.add_argument("--recipe", default="94", help=f"one of: {', '.join(RECIPES)} (default 94)")
    p.add_argument("--runs", type=int, default=1, help="timed runs (default 1)")
    p.add_argument("--device", default=None,
                   help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of run 0; run i uses seed+i")
    p.add_argument("--data-dir", default=None,
                   help="where CIFAR-10 lives or is downloaded to "
                        "(default $HLB_DATA_DIR, else ./data)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the full record here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set epochs=8 (repeatable)")
    p.add_argument("--no-save", action="store_true",
                   help="do not keep the record under the runs folder "
                        "($HLB_RUNS_DIR, default ./runs)")
    p.add_argument("--target-acc", type=float, default=None, metavar="ACC",
                   help="stop each run at the first epoch whose TTA accuracy reaches ACC "
                        "(a fraction, e.g. 0.94); the check is timed")
    return p


def build_compare_parser():
    p = _Parser(prog="python main.py compare",
                description="Compare two variants, run interleaved with the same seeds, or "
                            "two saved records (A.json B.json).")
    p.add_argument("records", nargs="*", metavar="RECORD.json")
    p.add_argument("--a", default="", metavar="FLAGS",
                   help='arm A\'s flags, e.g. "--set lr=10" (default: the recipe as is)')
    p.add_argument("--b", default="", metavar="FLAGS", help="arm B's flags")
    p.add_argument("--recipe", default="94", help="the recipe both arms start from")
    p.add_argument("--runs", type=int, default=10, help="runs per arm (default 10)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of run 0 of each arm")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, metavar="PATH",
                   help="write both records and the comparison here")
    p.add_argument("--no-save", action="store_true",
                   help="do not keep each arm's record under the runs folder")
    return p


def _arm_recipe(name, flags, base):
    """An arm is a recipe plus `--recipe` / `--set` flags, given as one string."""
    p = _Parser(prog=f"--{name.lower()}", add_help=False)
    p.add_argument("--recipe", default=base)
    p.add_argument("--set", action="append", default=[])
    try:
        args = p.parse_args(shlex.split(flags))
        return override(get_recipe(args.recipe), args.set)
    except UsageError as e:
        raise UsageError(f"arm {name}: {e}") from None


def _check_writable(path):
    """Fail before training, not after, when the record could not be written."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"--json {path}: folder {parent} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"--json {path}: is a folder, not a file")
    try:
        # Creating a file is the only test that also catches read-only mounts and quotas.
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise UsageError(f"--json {path}: cannot write in {parent} ({e.strerror})") from None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM stops the runs as Ctrl-C does, keeping the finished ones. Not under torchrun,
    whose agent signals its workers itself, nor off the main thread (signal's rule)."""
    if _torchrun() or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        command = {"compare": _compare, "plot": _plot, "runs": _runs,
                   "sweep": _sweep}.get(argv[0] if argv else "")
        with _sigterm_as_ctrl_c():
            return command(argv[1:]) if command else _main(argv)
    except HlbError as e:
        # Under torchrun a usage error is every rank's alike, and a quiet one is rank 0's to
        # report: the other ranks stay silent and exit 0, so that torchrun's report points
        # at rank 0, whose message says what happened (and names the rank at fault).
        if _follower() and (isinstance(e, UsageError) or getattr(e, "quiet", False)):
            return 0
        print(f"error: {_rank_prefix()}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if not _follower():
            print("\ninterrupted", file=sys.stderr)
        return 130


def _torchrun():
    """Whether this process is a torchrun worker (see hlb.dist.world_from_env)."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def _follower():
    """Whether this is a torchrun worker other than rank 0."""
    return _torchrun() and os.environ["RANK"] != "0"


def _rank_prefix():
    return f"rank {os.environ['RANK']}: " if _follower() else ""


def _check_json(path, session):
    """Check --json before training. Under torchrun rank 0 alone writes, so it alone checks,
    and every rank stops with it, so none is left waiting for it."""
    error = None
    if path and (session is None or session.leader):
        try:
            _check_writable(path)
        except UsageError as e:
            if session is None:
                raise
            error = e
    if session:
        session.agree(error)


def _spread(session):
    return f", spread over {session.world.size} processes" if session else ""


def _record_data(record, argv, session):
    from hlb.report import record_dict

    data = record_dict(record, argv)
    if session:
        data["dist"] = session.describe()       # which process and GPU ran which run
    return data


def _write_record(path, data):
    from hlb.report import write_json_atomic

    try:
        write_json_atomic(path, data)
    except OSError as e:
        raise HlbError(f"could not write the record {path} ({e.strerror or e}); "
                       "nothing was left behind") from None


def _follower_status(error):
    """Rank 0 reports the outcome and sets the status; the others only pass on Ctrl-C."""
    return 130 if isinstance(error, KeyboardInterrupt) else 0


def _main(argv):
    # Imported here so that `--help` and flag errors answer without loading torch.
    from hlb.dist import joined
    from hlb.records import default_runs_dir, save_record
    from hlb.report import Table, summary_lines
    from hlb.train import DIVERGED_LOSS
    from hlb.runs import Stopped, resolve_device, train

    args = build_parser().parse_args(argv)
    recipe = override(get_recipe(args.recipe), args.set)
    if args.runs < 1:
        raise UsageError(f"--runs must be at least 1, not {args.runs}")
    if args.seed < 0:
        raise UsageError(f"--seed must not be negative, not {args.seed}")
    if args.target_acc is not None and not 0 < args.target_acc <= 1:
        raise UsageError(f"--target-acc is a fraction in (0, 1], not {args.target_acc}")
    device = resolve_device(args.device)
    with joined(device) as session:       # None without torchrun
        leader = session is None or session.leader
        _check_json(args.json, session)
        if leader:
            print(f"hlb-cifar10: recipe {recipe.name}, {args.runs} run(s) on {device}"
                  f"{_spread(session)}", flush=True)
        error = None
        try:
            if session is None:
                record = train(recipe, runs=args.runs, device=device, seed=args.seed,
                               data_dir=args.data_dir, listener=Table(),
                               target_acc=args.target_acc)
            else:
                def each_round(partial):
                    # The record on disk follows each round, so a failure keeps what finished.
                    _write_record(args.json, _record_data(partial, argv, session))

                record = session.train(recipe, args.runs, args.seed, args.data_dir,
                                       Table() if leader else None, args.target_acc,
                                       each_round if args.json else None)
        except Stopped as e:
            # Keep what finished: the summary and the record hold the completed runs.
            record, error = e.record, e.error or KeyboardInterrupt()
        if not leader:
            return _follower_status(error)
        print("\n".join(summary_lines(record)))
        data = _record_data(record, argv, session)
        if args.json:
            _write_record(args.json, data)
            print(f"  record written to {args.json}")
        if not args.no_save:
            print(f"  record kept in {save_record(data, default_runs_dir())}")
        if isinstance(error, KeyboardInterrupt):
            print(f"interrupted after {len(record.results)} finished run(s)", file=sys.stderr)
            return 130
        if error:
            raise error
        if record.summary.diverged:
            print(f"error: {record.summary.diverged} run(s) diverged (loss NaN, infinite or "
                  f"above {DIVERGED_LOSS:g} per image); try a lower lr", file=sys.stderr)
            return 1
        return 0


def _compare_data(records, args, session):
    from hlb.compare import compare, comparison_dict

    comparison = compare(records[0].results, records[1].results)
    arms = {"a": _record_data(records[0], shlex.split(args.a), session),
            "b": _record_data(records[1], shlex.split(args.b), session)}
    return comparison, {"comparison": comparison_dict(comparison), **arms}


def _compare(argv):
    from hlb.compare import comparison_dict, comparison_lines, compare_records
    from hlb.dist import joined
    from hlb.records import default_runs_dir, save_record
    from hlb.report import Table, summary_lines, write_json_atomic
    from hlb.runs import Bench, Quiet, Stopped, load_data, resolve_device, run_benches

    args = build_compare_parser().parse_args(argv)
    if args.records:
        if len(args.records) != 2 or args.a or args.b:
            raise UsageError("compare takes two records (A.json B.json) or --a/--b flags")
        if args.json:
            _check_writable(args.json)
        comparison = compare_records(*args.records)
        print("\n".join(comparison_lines(comparison)))
        if args.json:
            write_json_atomic(args.json, {"comparison": comparison_dict(comparison),
                                          "records": args.records})
        return 0

    recipes = [_arm_recipe("A", args.a, args.recipe), _arm_recipe("B", args.b, args.recipe)]
    if args.runs < 2:
        raise UsageError(f"--runs must be at least 2 to compare, not {args.runs}")
    if args.seed < 0:
        raise UsageError(f"--seed must not be negative, not {args.seed}")
    device = resolve_device(args.device)
    with joined(device) as session:       # None without torchrun
        leader = session is None or session.leader
        _check_json(args.json, session)
        if leader:
            print(f"hlb-cifar10 compare: A = {args.a or '(recipe as is)'}, B = "
                  f"{args.b or '(as is)'}; {args.runs} runs each, interleaved, seeds "
                  f"{args.seed}..{args.seed + args.runs - 1}{_spread(session)}", flush=True)
        cifar = session.load_data(args.data_dir) if session else load_data(args.data_dir)
        benches = [Bench(r, session.device if session else device, cifar, args.seed)
                   for r in recipes]
        listeners = [Table(label="A"), Table(label="B")] if leader else [Quiet(), Quiet()]
        interrupted, error = False, None
        try:
            if session is None:
                records = run_benches(benches, args.runs, listeners)
            else:
                def each_round(partial, finished):
                    _write_record(args.json, _compare_data(partial, args, session)[1])

                # Run i of both arms goes to the same rank, so the pairs stay paired.
                records = session.run_benches(benches, args.runs, listeners,
                                              on_round=each_round if args.json else None)
        except Stopped as e:
            records, interrupted, error = e.record, e.error is None, e.error
            if error and (session is None or not leader):
                raise error               # as before without torchrun: nothing is written
        if not leader:
            return _follower_status(KeyboardInterrupt() if interrupted else None)
        for name, record in zip("AB", records):
            print(f"arm {name}: " + "\n".join(summary_lines(record)))
        comparison, data = _compare_data(records, args, session)
        print("\n".join(comparison_lines(comparison)))
        if args.json:
            _write_record(args.json, data)
            print(f"  record written to {args.json}")
        if not args.no_save:
            for name in ("a", "b"):
                kept = save_record(data[name], default_runs_dir())
                print(f"  arm {name.upper()} kept in {kept}")
        if error:
            raise error
        return 130 if interrupted else 0


def _plot(argv):
    from hlb.plot import plot_records

    p = _Parser(prog="python main.py plot",
                description="Plot records: accuracy against time, final accuracies side by "
                            "side, loss curves (needs requirements-plot.txt).")
    p.add_argument("records", nargs="+", metavar="RECORD.json")
    p.add_argument("-o", "--output", default="plot.png", help="PNG to write (default plot.png)")
    args = p.parse_args(argv)
    print(f"plot written to {plot_records(args.records, args.output)}")
    return 0


def _runs(argv):
    from hlb.records import default_runs_dir, list_records, records_table

    p = _Parser(prog="python main.py runs", description="List the kept records, newest first.")
    p.add_argument("--dir", default=None, help="runs folder (default $HLB_RUNS_DIR or ./runs)")
    args = p.parse_args(argv)
    runs_dir = Path(args.dir) if args.dir else default_runs_dir()
    print("\n".join(records_table(list_records(runs_dir), runs_dir)))
    return 0


def _sweep(argv):
    """`main.py sweep`: the base and a grid of variants, interleaved, ranked (hlb.sweep)."""
    from hlb.dist import joined
    from hlb.records import default_runs_dir, save_record
    from hlb.runs import resolve_device
    from hlb.sweep import make_grid, run_sweep, sweep_dict, table_lines

    p = _Parser(prog="python main.py sweep",
                description="Run the base recipe and every cell of a grid, interleaved with "
                            "the same seeds; rank the cells against the base.")
    p.add_argument("--recipe", default="94", help="the base recipe (default 94)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change the base (repeatable)")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values to try (a tuple key takes / between values; repeatable: "
                        "the grid is every combination)")
    p.add_argument("--runs", type=int, default=5, help="runs of the base and of each cell")
    p.add_argument("--prune", action="store_true",
                   help="stop running cells that cannot catch the best any more")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of run 0 of every cell")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, metavar="PATH", help="write the sweep's record here")
    p.add_argument("--no-save", action="store_true",
                   help="do not keep the record under the runs folder")
    args = p.parse_args(argv)
    grid = make_grid(get_recipe(args.recipe), args.set, args.vary, args.runs, args.prune)
    if args.seed < 0:
        raise UsageError(f"--seed must not be negative, not {args.seed}")
    device = resolve_device(args.device)
    with joined(device) as session:       # None without torchrun
        leader = session is None or session.leader
        _check_json(args.json, session)
        if leader:
            print(f"hlb-cifar10 sweep: base {args.recipe} {' '.join(args.set)}".rstrip()
                  + f" and {len(grid.cells)} cell(s), {args.runs} runs each, interleaved, "
                  f"seeds {args.seed}..{args.seed + args.runs - 1}{_spread(session)}",
                  flush=True)

        def each_round(outcome, finished):
            _write_record(args.json, sweep_dict(outcome, argv, finished))

        outcome = run_sweep(grid, device, args.seed, args.data_dir, session,
                            each_round if args.json else None)
        if not leader:
            return _follower_status(outcome.error)
        print("\n".join(table_lines(outcome)))
        data = sweep_dict(outcome, argv)
        if session:
            data["dist"] = session.describe()
        if args.json:
            _write_record(args.json, data)
            print(f"  record written to {args.json}")
        if not args.no_save:
            print(f"  record kept in {save_record(data, default_runs_dir())}")
        if isinstance(outcome.error, KeyboardInterrupt):
            return 130
        if outcome.error:
            raise outcome.error
        return 0
