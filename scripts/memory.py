"""Peak GPU memory of a recipe, estimated from its values (hlb.bench.memory), term by term.

    python scripts/memory.py [RECIPE] [key=value ...]

Prints what a run holds throughout, each moment of largest use (the largest counts), the
allocator's unusable blocks, the predicted peak reserved memory (torch.cuda.max_memory_reserved)
and what the card needs with the CUDA context. Nothing runs on a GPU; it takes a second.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.bench.memory import estimate  # noqa: E402
from hlb.bench.overrides import script_recipe  # noqa: E402


def rows(terms, indent="    "):
    return [f"{indent}{term.mib:8.1f}  {term.name}" for term in terms]


def main():
    recipe = script_recipe(sys.argv[1:])
    e = estimate(recipe)
    lines = [f"recipe {recipe.name}: peak GPU memory, estimated (MiB)", "  held throughout"]
    lines += rows(e.held)
    for moment, terms in e.moments.items():
        mark = "  <- the peak" if moment == e.peak_moment else ""
        lines.append(f"  {moment}: {sum(t.mib for t in terms):.1f}{mark}")
        lines += rows(terms)
    lines += rows([e.unusable], indent="  ")
    lines.append(f"  peak reserved {e.reserved_mib:.0f} MiB ({e.reserved_mib / 1024:.2f} GiB)")
    lines += rows(e.card, indent="  ")
    lines.append(f"  on the card {e.card_mib:.0f} MiB ({e.card_mib / 1024:.2f} GiB)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
