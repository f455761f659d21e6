"""The command line: parse flags, run, print, write the record, set the exit status.

Exit status: 0 success; 1 a data problem or a run that diverged; 2 a usage error; 130 Ctrl-C.
"""

import argparse
import os
import sys
from pathlib import Path

from hlb.errors import HlbError, UsageError
from hlb.recipes import RECIPES, get_recipe, override


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line instead of argparse's usage block.
        raise UsageError(f"{message} (see python main.py --help)")


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
    return p


def _check_writable(path):
    """Fail before training, not after, when the record could not be written."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"--json {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--json {path}: folder {parent} is not writable")
    if Path(path).is_dir():
        raise UsageError(f"--json {path}: is a folder, not a file")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except HlbError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _main(argv):
    # Imported here so that `--help` and flag errors answer without loading torch.
    from hlb.report import Table, record_dict, summary_lines, write_json_atomic
    from hlb.runs import Interrupted, resolve_device, train

    args = build_parser().parse_args(argv)
    recipe = override(get_recipe(args.recipe), args.set)
    if args.runs < 1:
        raise UsageError(f"--runs must be at least 1, not {args.runs}")
    if args.seed < 0:
        raise UsageError(f"--seed must not be negative, not {args.seed}")
    device = resolve_device(args.device)
    if args.json:
        _check_writable(args.json)

    print(f"hlb-cifar10: recipe {recipe.name}, {args.runs} run(s) on {device}", flush=True)
    status = 0
    try:
        record = train(recipe, runs=args.runs, device=device, seed=args.seed,
                       data_dir=args.data_dir, listener=Table())
    except Interrupted as e:
        record, status = e.record, 130
        print("\ninterrupted: the summary and record hold the runs that finished",
              file=sys.stderr)
    print("\n".join(summary_lines(record)))
    if args.json:
        write_json_atomic(args.json, record_dict(record, argv))
        print(f"  record written to {args.json}")
    if status == 0 and record.summary.diverged:
        print(f"error: {record.summary.diverged} run(s) diverged; try a lower lr",
              file=sys.stderr)
        status = 1
    return status
