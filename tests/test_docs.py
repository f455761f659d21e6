"""README.md and docs/*.md: every relative link resolves (the file, and the #anchor when one is
given), and every `python main.py ...`, `hlb ...` or `torchrun ... main.py ...` command in them
is one the command line accepts as written: its flags parse with the real parsers (hlb.bench.cli,
nothing trains) and its recipe, `--set`, `--vary`, `--space` and arm values are ones the recipe
accepts. A line with a placeholder (`[`, `...`, `|` or the word ARGS) is a synopsis and is not
run through the parsers. `python scripts/X.py` commands must name a script that exists."""

import re
import shlex
from pathlib import Path

import pytest

from hlb.bench import cli
from hlb.bench.overrides import flags_recipe, override
from hlb.bench.sweep import make_grid
from hlb.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:python main\.py|hlb|torchrun\s.*\bmain\.py)(?:\s|$)")
SYNOPSIS = re.compile(r"\[|\.\.\.|\||\bARGS\b")
SUBCOMMANDS = ("board", "compare", "eval", "plot", "runs", "sweep", "tune", "verify")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose_and_code(text):
    """(prose lines, code lines) of a Markdown page: code is fenced or indented four spaces
    after a blank line (or inside a list item, eight)."""
    prose, code, fenced, in_code = [], [], False, False
    previous_blank = True
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        indented = line.startswith("    ") and (previous_blank or in_code)
        in_code = fenced or (indented and line.strip() != "") or (in_code and not line.strip())
        (code if fenced or indented else prose).append(line)
        previous_blank = not line.strip()
    return prose, code


def commands(page):
    """The commands of a page: code lines (a leading `$ ` dropped, `\\` continuations joined,
    split at `&&`) and inline code spans that begin as a command."""
    prose, code = prose_and_code(page.read_text())
    found, pending = [], ""
    for line in code:
        text = pending + line.strip().removeprefix("$ ")
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        text = text.split("  #", 1)[0].strip()          # a trailing comment
        found += [part.strip() for part in text.split("&&") if COMMAND.match(part.strip())]
    spans = re.findall(r"`([^`]+)`", "\n".join(prose))    # a span may wrap to the next line
    return found + [" ".join(span.split()) for span in spans if COMMAND.match(span)]


def anchors(page):
    """GitHub's anchors for a page's headings."""
    prose, _ = prose_and_code(page.read_text())
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in prose if line.startswith("#")}


class _Parsed(BaseException):
    """Raised in place of running a command, once its flags have parsed (BaseException, so
    that cli.main's last-resort handler does not take it for a failure)."""

    def __init__(self, args, error=None):
        super().__init__(error)
        self.args_, self.error = args, error


def parsed(argv, monkeypatch):
    """(the subcommand, its parsed flags) of argv, by cli.main with parsing as its last step;
    a usage error fails the test with its one line."""
    real = cli._Parser.parse_args

    def parse_only(self, args=None, namespace=None):
        try:
            raise _Parsed(real(self, args, namespace))
        except cli.UsageError as e:
            raise _Parsed(None, str(e)) from None

    monkeypatch.setattr(cli._Parser, "parse_args", parse_only)
    try:
        cli.main(argv)
    except _Parsed as done:
        assert done.error is None, done.error
        return (argv[0] if argv and argv[0] in SUBCOMMANDS else ""), done.args_
    except SystemExit as e:                     # --help
        assert e.code == 0
        return None, None
    raise AssertionError(f"{argv}: parsing did not finish (did the command run?)")


def check_values(command, args):
    """The recipe values a parsed command names, checked as the command would check them."""
    if command == "" and args is not None:
        override(get_recipe(args.recipe), args.set)
    elif command == "compare":
        for label in ("a", "b"):
            flags_recipe(getattr(args, label) or "", args.recipe, f"--{label}")
    elif command == "sweep":
        make_grid(get_recipe(args.recipe), args.set, args.vary, args.runs, args.prune,
                  args.cell)
    elif command == "verify" and args.baseline:
        flags_recipe(args.baseline, "94", "--baseline")
    elif command == "tune":
        from hlb.bench import tune
        tune.make_space(args.space, override(get_recipe(args.recipe), args.set), args.set)


def argv_of(text):
    """The arguments main.py would get from a command line (env assignments, `python main.py`,
    `hlb` or torchrun and its own flags dropped)."""
    words = shlex.split(text)
    while "=" in words[0]:
        words.pop(0)
    if words[0] == "torchrun":
        return words[words.index("main.py") + 1:]
    return words[2:] if words[0] == "python" else words[1:]


ALL_COMMANDS = [(page, text) for page in PAGES for text in commands(page)]
RUNNABLE = [(page, text) for page, text in ALL_COMMANDS if not SYNOPSIS.search(text)]


def test_the_pages_hold_commands_and_links():
    """The scan finds what it should (a check of the checks): README's two commands and a
    link to the manual."""
    readme = [text for page, text in ALL_COMMANDS if page.name == "README.md"]
    assert "python main.py" in readme
    assert any("docs/" in link for link in LINK.findall(
        "\n".join(prose_and_code((ROOT / "README.md").read_text())[0])))


def broken_links(page):
    """Each relative link of `page` (outside code) that names no file, or no heading there."""
    prose, _ = prose_and_code(page.read_text())
    broken = []
    for target in LINK.findall("\n".join(re.sub(r"`[^`]*`", "", line) for line in prose)):
        if re.match(r"[a-z]+:", target):
            continue                                # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page,text", RUNNABLE,
                         ids=[f"{p.name}:{t[:60]}" for p, t in RUNNABLE])
def test_each_command_is_accepted_as_written(page, text, monkeypatch):
    command, args = parsed(argv_of(text), monkeypatch)
    check_values(command, args)


def test_scripts_named_in_the_pages_exist():
    named = {m for page in PAGES for m in re.findall(r"python (scripts/[\w./-]+\.py)",
                                                      page.read_text())}
    assert named and [s for s in sorted(named) if not (ROOT / s).exists()] == []


def test_a_wrong_command_or_link_is_caught(tmp_path, monkeypatch):
    """The checks can fail: a misspelt flag, an unknown key and a missing page are caught."""
    with pytest.raises(AssertionError, match="unrecognized arguments"):
        parsed(argv_of("python main.py --rnus 3"), monkeypatch)
    with pytest.raises(cli.UsageError, match="unknown key"):
        check_values(*parsed(argv_of("hlb --set speed=1"), monkeypatch))
    page = tmp_path / "page.md"
    page.write_text("# The top\n\nSee [there](missing.md), [here](#the-top), [no](#nowhere) "
                    "and [web](https://example.org/x.md); `[code](gone.md)` is not a link.\n")
    assert broken_links(page) == ["missing.md: no such file",
                                  "#nowhere: no heading #nowhere in page.md"]
