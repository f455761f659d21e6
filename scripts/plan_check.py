"""Check the command lines of a GPU check before it spends any device time.

    python scripts/plan_check.py "COMMAND LINE" ...

Each argument is one command line of main.py as shell words: `--recipe 94 --set k=v ...` (a
training run), `sweep ...` or `tune ...`. Each is parsed by that command's own parser and its
recipe, grid or search space built and checked, exactly as the command would before training,
but nothing trains and no data is read. The first bad one is one line naming it, exit 2;
scripts/gpu_check.sh runs this first, so that a typo in its last stage costs seconds, not the
minutes of the stages before it.
"""

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.bench import cli, tune  # noqa: E402
from hlb.bench.overrides import override  # noqa: E402
from hlb.bench.sweep import make_grid  # noqa: E402
from hlb.errors import UsageError  # noqa: E402
from hlb.recipes import get_recipe  # noqa: E402


def check(words):
    """Build what `main.py WORDS` would build before training; UsageError if it is bad."""
    if words[:1] == ["sweep"]:
        args = cli.build_sweep_parser().parse_args(words[1:])
        make_grid(get_recipe(args.recipe), args.set, args.vary, args.runs, args.prune,
                  args.cell)
    elif words[:1] == ["tune"]:
        args = cli.build_tune_parser().parse_args(words[1:])
        base = override(get_recipe(args.recipe), args.set)
        tune.check_plan(tune.Plan(
            base, args.set, tune.make_space(args.space, base, args.set), args.objective,
            args.target, args.runs, args.trials, args.seed, args.study,
            args.storage, args.sampler_seed, args.prune,
            args.accuracy_only, args.heartbeat, args.confirm, args.confirm_runs))
    else:
        args = cli.build_parser().parse_args(words)
        override(get_recipe(args.recipe), args.set)


def main(lines):
    for line in lines:
        try:
            check(shlex.split(line))
        except (UsageError, ValueError) as e:
            print(f"error: a stage's command line is bad: {line.strip()!r}: {e}",
                  file=sys.stderr)
            return 2
        except SystemExit as e:         # argparse has printed its one line
            print(f"error: a stage's command line is bad: {line.strip()!r}", file=sys.stderr)
            return 2 if e.code else 0
    print(f"checked {len(lines)} command line(s) of ours: each parses and builds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
