"""The command line: parse flags, run, print, write the record, set the exit status.

Exit status: 0 success; 1 a data problem or a run that diverged; 2 a usage error; 130 Ctrl-C.
"""

import argparse
import sys
import tempfile
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
    from hlb.train import DIVERGED_LOSS
    from hlb.runs import Stopped, resolve_device, train

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
    error = None
    try:
        record = train(recipe, runs=args.runs, device=device, seed=args.seed,
                       data_dir=args.data_dir, listener=Table())
    except Stopped as e:
        # Keep what finished: the summary and the record hold the completed runs.
        record, error = e.record, e.error or KeyboardInterrupt()
    print("\n".join(summary_lines(record)))
    if args.json:
        try:
            write_json_atomic(args.json, record_dict(record, argv))
        except OSError as e:
            raise HlbError(f"could not write the record {args.json} ({e.strerror or e}); "
                           "nothing was left behind") from None
        print(f"  record written to {args.json}")
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
