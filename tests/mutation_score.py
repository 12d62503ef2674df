"""Mutation score of the numerics modules: run mutmut on them and print the share killed.

    pip install -e ".[test,mutation]"
    python tests/mutation_score.py --sample 0.2    # a fixed 20% of the mutants (~40 min, 2 cores)
    python tests/mutation_score.py                 # every mutant (several hours on 2 cores)
    python tests/mutation_score.py --sample 0.2 --report-only   # the table from saved results

mutmut (configured under `[tool.mutmut]` in pyproject.toml) copies the code to `mutants/`,
changes one operator, constant or call at a time, and runs the fast tests that cover the changed
function; a mutant is killed when one of them fails. SCOPE names the functions scored: the
objectives, attention, position bias, losses, the train step, the decoding filters and beam
search, and the sharding rules. Error-message strings are not mutated (`do_not_mutate_patterns`):
the bad-input tests check messages, the score is about the arithmetic. Each mutant runs the tests
of its module's mirrored test file (tests/conftest.py).

`--sample F` scores the mutants whose name hashes below F (the same ones on every run and
machine): a uniform sample, so the killed share estimates the full run's, within the binomial
interval printed beside it. Not part of CI.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Module -> mutant-name patterns scored (mutmut names a mutant `module.x_function__mutmut_N`,
# a method `module.xǁClassǁmethod__mutmut_N`).
SCOPE = {
    "objectives.span_corruption": ["*"],
    "objectives.causal_lm": ["*"],
    "objectives.masked_lm": ["*"],
    "objectives.seq2seq": ["*"],
    "t5x_lite.attention": ["*"],
    "t5x_lite.position": ["*"],
    "t5x_lite.losses": ["*"],
    "t5x_lite.steps": ["*"],
    "t5x_lite.decoding": [
        "x_filter_logits__*",
        "x_sample__*",
        "x__block_eos__*",
        "x_beam_scores__*",
        "x__beam_search__*",
        "x__gather_beams__*",
    ],
    "sharding.rules": ["*"],
}


def patterns() -> list[str]:
    return [f"{module}.{p}" for module, ps in SCOPE.items() for p in ps]


def in_scope(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns())


def sampled(name: str, fraction: float) -> bool:
    """A fixed pseudo-random choice of `fraction` of the mutants, by the hash of the name."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def all_mutant_names() -> list[str]:
    """Every mutant mutmut makes of the modules in SCOPE, generated (not run) in a temp dir."""
    import os
    import tempfile

    from mutmut.__main__ import create_mutants_for_file

    names = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(REPO)  # mutmut reads its config from pyproject.toml here
        for module in SCOPE:
            source, out = Path(tmp) / f"{module}.py", Path(tmp) / f"{module}.mutants.py"
            # from a copy: mutmut writes its bookkeeping files beside the file it reads
            shutil.copy(REPO / (module.replace(".", "/") + ".py"), source)
            create_mutants_for_file(source, out)
            defs = re.findall(r"^\s*def (\S+__mutmut_\d+)\(", out.read_text(), re.M)
            names += [f"{module}.{d}" for d in defs]
    return [n for n in names if in_scope(n)]


def load_results() -> dict[str, str]:
    """Mutant name -> status (killed, survived, no tests, timeout, ...) from mutants/**.meta."""
    from mutmut.stats import status_by_exit_code

    results = {}
    for meta in (REPO / "mutants").rglob("*.py.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if in_scope(name):
                results[name] = status_by_exit_code.get(code, "not checked")
    return results


def report(results: dict[str, str]) -> float:
    """Print the per-module table (and a 95% interval on the killed share) and the survivors."""
    by_module: dict[str, Counter] = {}
    for name, status in results.items():
        module = next(m for m in SCOPE if name.startswith(m + "."))
        by_module.setdefault(module, Counter())[status] += 1
    total = Counter()
    print("| module | mutants | killed | survived | no tests | timeout | other | killed % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for module, c in sorted(by_module.items()):
        total.update(c)
        _row(module, c)
    _row("all", total)
    n, p = sum(total.values()), total["killed"] / max(sum(total.values()), 1)
    half = 1.96 * math.sqrt(p * (1 - p) / max(n, 1))
    low, high = 100 * (p - half), 100 * (p + half)
    print(f"\nkilled: {100 * p:.1f}% of {n} (95% interval {low:.1f}-{high:.1f}%)")
    survivors = sorted(n for n, s in results.items() if s != "killed")
    print(f"\nnot killed ({len(survivors)}):")
    for name in survivors:
        print(f"  {results[name]:>10}  {name}")
    return total["killed"] / max(sum(total.values()), 1)


def _row(module: str, c: Counter) -> None:
    n = sum(c.values())
    known = ("killed", "survived", "no tests", "timeout")
    other = n - sum(c[k] for k in known)
    cells = [n, c["killed"], c["survived"], c["no tests"], c["timeout"], other]
    print(f"| {module} | " + " | ".join(map(str, cells)) + f" | {100 * c['killed'] / n:.1f}% |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--sample", type=float, default=1.0, help="fraction of mutants scored")
    args = parser.parse_args()
    names = None
    if args.sample < 1.0:
        names = [n for n in all_mutant_names() if sampled(n, args.sample)]
    if not args.report_only:
        if names is not None:  # only those without a result yet: mutmut reruns named mutants
            done = load_results()
            todo = [n for n in names if done.get(n, "not checked") == "not checked"]
        cmd = ["mutmut", "run", "--max-children", str(args.max_children)]
        subprocess.run(cmd + (todo if names is not None else patterns()), cwd=REPO, check=True)
    results = load_results()
    if names is not None:
        results = {n: results.get(n, "not checked") for n in names}
    if not results:
        print("no mutmut results under mutants/: run without --report-only first")
        return 1
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
