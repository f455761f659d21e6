"""The command line: parse flags, run, print, write the record, set the exit status.

Exit status: 0 success; 1 a data problem or a run that diverged; 2 a usage error; 130 Ctrl-C.
"""

import argparse
import shlex
import sys
import tempfile
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        command = {"compare": _compare, "plot": _plot, "runs": _runs}.get(argv[0] if argv else "")
        return command(argv[1:]) if command else _main(argv)
    except HlbError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _main(argv):
    # Imported here so that `--help` and flag errors answer without loading torch.
    from hlb.records import default_runs_dir, save_record
    from hlb.report import Table, record_dict, summary_lines, write_json_atomic
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
    if args.json:
        _check_writable(args.json)

    print(f"hlb-cifar10: recipe {recipe.name}, {args.runs} run(s) on {device}", flush=True)
    error = None
    try:
        record = train(recipe, runs=args.runs, device=device, seed=args.seed,
                       data_dir=args.data_dir, listener=Table(), target_acc=args.target_acc)
    except Stopped as e:
        # Keep what finished: the summary and the record hold the completed runs.
        record, error = e.record, e.error or KeyboardInterrupt()
    print("\n".join(summary_lines(record)))
    data = record_dict(record, argv)
    if args.json:
        try:
            write_json_atomic(args.json, data)
        except OSError as e:
            raise HlbError(f"could not write the record {args.json} ({e.strerror or e}); "
                           "nothing was left behind") from None
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


def _compare(argv):
    from hlb.compare import compare, comparison_dict, comparison_lines, compare_records
    from hlb.records import default_runs_dir, save_record
    from hlb.report import Table, record_dict, summary_lines, write_json_atomic
    from hlb.runs import Bench, Stopped, load_data, resolve_device, run_benches

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
    if args.json:
        _check_writable(args.json)
    print(f"hlb-cifar10 compare: A = {args.a or '(recipe as is)'}, B = {args.b or '(as is)'}; "
          f"{args.runs} runs each, interleaved, seeds {args.seed}..{args.seed + args.runs - 1}",
          flush=True)
    cifar = load_data(args.data_dir)
    benches = [Bench(r, device, cifar, args.seed) for r in recipes]
    interrupted = False
    try:
        records = run_benches(benches, args.runs, [Table(label="A"), Table(label="B")])
    except Stopped as e:
        records, interrupted = e.record, e.error is None
        if e.error:
            raise e.error
    for name, record in zip("AB", records):
        print(f"arm {name}: " + "\n".join(summary_lines(record)))
    comparison = compare(records[0].results, records[1].results)
    print("\n".join(comparison_lines(comparison)))
    arms = {"a": record_dict(records[0], shlex.split(args.a)),
            "b": record_dict(records[1], shlex.split(args.b))}
    if args.json:
        write_json_atomic(args.json, {"comparison": comparison_dict(comparison), **arms})
        print(f"  record written to {args.json}")
    if not args.no_save:
        for name, data in arms.items():
            print(f"  arm {name.upper()} kept in {save_record(data, default_runs_dir())}")
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
