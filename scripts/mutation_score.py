"""Print the mutation score per module from mutmut's results (``mutants/**/*.meta``).

Run after ``mutmut run`` (``make mutation`` does both). A mutant counts as detected when a test
failed (killed) or the tests ran out of time (timeout); a surviving mutant, or one that no
selected test reaches ("no tests"), counts against the score. Mutants not run this time (not in
the ``MUTANTS`` filter) are left out. Survivors are listed by name; ``mutmut show NAME`` prints
the diff.

Usage: python scripts/mutation_score.py [--mutants DIR] [--survivors]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}


def main() -> None:
    """Print the per-module table (markdown) and, with ``--survivors``, the survivors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    args = parser.parse_args()
    metas = sorted(args.mutants.glob("src/**/*.py.meta"))
    if not metas:
        raise SystemExit(f"no mutmut results under {args.mutants}/src; run `make mutation` first")
    print("| module | killed / total | score | survived | no tests | timeout |")
    print("|---|---|---|---|---|---|")
    survivors: list[str] = []
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts: Counter[str] = Counter()
        for name, code in codes.items():
            if code is None:
                continue  # not run this time
            status = KILLED.get(code) or SURVIVED.get(code) or "other"
            counts[status] += 1
            if code in SURVIVED:
                survivors.append(f"{name} ({SURVIVED[code]})")
        total = sum(counts.values())
        if not total:
            continue
        detected = counts["killed"] + counts["timeout"]
        module = str(meta.relative_to(args.mutants / "src")).removesuffix(".py.meta")
        print(
            f"| {module.replace('/', '.')} | {detected} / {total} | {detected / total:.1%} | "
            f"{counts['survived']} | {counts['no tests']} | {counts['timeout']} |"
        )
    if args.survivors:
        print()
        for s in survivors:
            print(s)


if __name__ == "__main__":
    main()
