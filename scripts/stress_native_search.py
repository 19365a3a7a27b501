"""Stress the native search's builds against each other on many adversarial catalogues.

Each case draws a catalogue of one of six kinds (Gaussian factors; heavy-tailed norms;
rank-2 items with every seventh a duplicate of item 0; factors on a grid of 0.5, so that
exact ties abound; users and items scaled by 10^-15..10^15 in opposite directions; biases 100
times the scores), its size (``--items`` range, the bfloat16 build's threshold and up, 1-69
dimensions, 1-79 users, top 1-5, 0-11 excluded ids per user, some past the catalogue), and asks
every build the CPU runs (``recrl.kernels.VARIANTS``) for each user's top items. The builds must
answer alike: the float32 builds sum each score in the same order, and the bfloat16 build proves
its answers in float32 or searches again (README "A search fused into the product"). Prints a
table (cases, mismatches and re-searched users per kind) and writes JSON; exits 1 on any
mismatch.

Example::

    python scripts/stress_native_search.py --seconds 150 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from recrl import kernels
from recrl.fileio import write_text_atomic

KINDS = ("gaussian", "heavy tails", "rank 2, duplicates", "grid ties", "far scales", "large bias")


def draw(kind: int, gen: torch.Generator, low: int, high: int) -> tuple:
    """One case of ``KINDS[kind]``: ``(users, items, bias or None, excluded, top)``."""
    def between(a: int, b: int) -> int:
        return int(torch.randint(a, b, (1,), generator=gen))

    n, d, b, top = between(low, high), between(1, 70), between(1, 80), between(1, 6)
    items, users = torch.randn(n, d, generator=gen), torch.randn(b, d, generator=gen)
    if kind == 1:
        items = items * torch.exp(3 * torch.randn(n, 1, generator=gen))
        users = users * torch.exp(3 * torch.randn(b, 1, generator=gen))
    elif kind == 2:
        items = torch.randn(n, 2, generator=gen) @ torch.randn(2, d, generator=gen)
        items[::7] = items[0]
    elif kind == 3:
        items, users = torch.round(items * 2) / 2, torch.round(users * 2) / 2
    elif kind == 4:
        scale = 10.0 ** between(-15, 15)
        items, users = items * scale, users / scale
    bias = None if kind == 2 else torch.randn(n, generator=gen) * (100.0 if kind == 5 else 1.0)
    excluded = torch.randint(0, n + 20, (b, between(0, 12)), generator=gen)
    return users, items, bias, excluded, top


def main() -> None:
    """Run cases for ``--seconds``, print the table, write JSON, exit 1 on a mismatch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to draw cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (the kernel's)")
    parser.add_argument("--items", type=int, nargs=2, default=[4_700, 12_000], metavar=("LOW", "HIGH"),
                        help="catalogue sizes drawn from [LOW, HIGH)")
    parser.add_argument("--out", type=Path, default=Path("stress_native_search.json"))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    builds = {name: kernels.load_variant(name)[0] for name in kernels.VARIANTS}
    builds = {name: library for name, library in builds.items() if library is not None}
    if len(builds) < 2:
        sys.exit(f"this CPU runs {len(builds)} native build(s); the stress compares two or more")
    gen = torch.Generator().manual_seed(args.seed)
    rows = {kind: {"cases": 0, "mismatches": 0, "rechecked_users": 0} for kind in KINDS}
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        kind = int(torch.randint(0, len(KINDS), (1,), generator=gen))
        case = draw(kind, gen, *args.items)
        rechecked = {name: library.best_dot_rechecked() for name, library in builds.items()}
        answers = [kernels.search_with(library, *case) for library in builds.values()]
        row = rows[KINDS[kind]]
        row["cases"] += 1
        row["mismatches"] += not all(torch.equal(answers[0], other) for other in answers[1:])
        row["rechecked_users"] += sum(library.best_dot_rechecked() - rechecked[name]
                                      for name, library in builds.items())
    table = Table(title=f"native search builds {', '.join(builds)} against each other, "
                        f"{args.seconds:g} s, seed {args.seed}, {torch.get_num_threads()} threads")
    for column in ("kind", "cases", "mismatches", "users searched again"):
        table.add_column(column, justify="right")
    for kind, row in rows.items():
        table.add_row(kind, f"{row['cases']:,}", str(row["mismatches"]), f"{row['rechecked_users']:,}")
    Console().print(table)
    report = {"builds": list(builds), "settings": vars(args) | {"out": str(args.out)},
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows}
    write_text_atomic(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    sys.exit(1 if any(row["mismatches"] for row in rows.values()) else 0)


if __name__ == "__main__":
    main()
