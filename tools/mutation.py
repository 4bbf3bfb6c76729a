"""Mutation testing of the verdict-deciding modules with mutmut (`make mutation`, and `make test`'s CI subset).

Each entry of ``[tool.nnmark.mutation.modules]`` in pyproject.toml is run on its own (``mutmut run 'MODULE.*'``)
within its time bound: a module, or ``module:function,Class.method,...`` for only those functions of a module whose
other plumbing decides no verdict; mutmut runs, for each mutant, the tests of ``[tool.mutmut]``'s selection that
call the mutated function. The score of an entry is (killed + timed out) / (mutants - equivalent); a mutant no
test runs, or that the time bound left unrun, counts against it. ``[tool.nnmark.mutation.equivalent]`` names each
mutant no test can tell apart from the code, with why.

    python tools/mutation.py                  # every module; writes docs/benchmarks/mutation.md
    python tools/mutation.py --ci             # the CI subset; exit 1 below the threshold, naming the survivors
    python tools/mutation.py --module nnmark.audit.log   # one entry (repeatable; its module's name will do)
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks" / "mutation.md"
STATUS = {0: "survived", 1: "killed", 3: "killed", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
"""mutmut's exit code of a mutant's test run -> its status (mutmut.stats.status_by_exit_code); None: not run."""
COLUMNS = ("killed", "timeout", "survived", "no tests", "not run", "equivalent")
HISTORY = "\n## History\n"
"""The report's hand-kept part (earlier tables), carried over when the report is rewritten."""


@dataclass
class Score:
    """One module's mutants by status, its wall time, and the mutants that count against it."""

    module: str
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    survivors: list[str] = field(default_factory=list)

    @property
    def percent(self) -> float:
        """(killed + timeout) / (mutants - equivalent), in percent (100 for a module with nothing to kill)."""
        judged = sum(self.counts.values()) - self.counts.get("equivalent", 0)
        detected = self.counts.get("killed", 0) + self.counts.get("timeout", 0)
        return 100.0 * detected / judged if judged else 100.0


def settings(pyproject: Path = ROOT / "pyproject.toml") -> dict:
    """``[tool.nnmark.mutation]``: threshold, ci (module names), modules (name -> time bound s), equivalent."""
    return tomllib.loads(pyproject.read_text())["tool"]["nnmark"]["mutation"]


def _mangled(function: str) -> str:
    """mutmut's name of a function ``f`` (``x_f``) or of a method ``C.m`` (``xǁCǁm``)."""
    cls, _, name = function.rpartition(".")
    return f"xǁ{cls}ǁ{name}" if cls else f"x_{name}"


def patterns(entry: str) -> list[str]:
    """mutmut's mutant-name patterns of an entry: ``module.*``, or the mutants of each function of
    ``module:f,C.m``."""
    module, _, functions = entry.partition(":")
    if not functions:
        return [f"{module}.*"]
    return [f"{module}.{_mangled(f)}__mutmut_*" for f in functions.split(",")]


def score(module: str, exit_codes: dict[str, int | None], equivalent: dict[str, str], seconds: float) -> Score:
    """The Score of ``module`` from mutmut's exit code per mutant name (None: not run)."""
    result = Score(module, seconds, dict.fromkeys(COLUMNS, 0))
    for name, code in sorted(exit_codes.items()):
        status = "not run" if code is None else STATUS.get(code, "survived")
        if status == "survived" and name in equivalent:
            status = "equivalent"
        if status not in ("killed", "timeout", "equivalent"):
            result.survivors.append(f"{name} ({status})")
        result.counts[status if status in COLUMNS else "survived"] += 1
    return result


def exit_codes(entry: str, root: Path = ROOT) -> dict[str, int | None]:
    """mutmut's results for the mutants of ``entry`` (``patterns``), read from its module's mutants/ folder."""
    module = entry.partition(":")[0]
    meta = root / "mutants" / "src" / (module.replace(".", "/") + ".py.meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: code for name, code in codes.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns(entry))}


def run_module(entry: str, bound_s: float, workers: int) -> float:
    """Run mutmut on ``entry``'s mutants, stopped after ``bound_s`` seconds; returns the wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "NNMARK_PROGRESS": "0"}
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(workers), *patterns(entry)]
    start = time.monotonic()
    with open(ROOT / "mutants" / "mutmut.log", "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=bound_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
    if process.returncode not in (0, -9):
        raise SystemExit(f"mutmut failed on {entry} (exit {process.returncode}); see mutants/mutmut.log")
    return time.monotonic() - start


def table(scores: list[Score], threshold: float) -> str:
    """The Markdown table of ``scores``."""
    lines = ["| module | " + " | ".join(COLUMNS) + " | score | wall s |", "|---" * (len(COLUMNS) + 3) + "|"]
    for s in scores:
        mark = "" if s.percent >= threshold else " (below)"
        counts = " | ".join(str(s.counts[c]) for c in COLUMNS)
        lines.append(f"| `{s.module}` | {counts} | {s.percent:.1f}%{mark} | {s.seconds:.0f} |")
    return "\n".join(lines)


def report(scores: list[Score], config: dict, total_s: float) -> str:
    """docs/benchmarks/mutation.md: the table, the equivalent mutants with their reasons, what survived."""
    equivalent = [f"- `{name}`: {why}" for name, why in sorted(config["equivalent"].items())
                  if any(fnmatch.fnmatchcase(name, p) for s in scores for p in patterns(s.module))]
    survivors = [f"- `{name}`" for s in scores for name in s.survivors] or ["- none"]
    return "\n".join([
        "# Mutation testing of the verdict code", "",
        f"`make mutation` (mutmut, {config['workers']} workers, OMP_NUM_THREADS=1); "
        f"total wall time {total_s:.0f} s. Score = (killed + timeout) / (mutants - equivalent); "
        f"threshold {config['threshold']}%.", "",
        table(scores, config["threshold"]), "", "## Equivalent mutants", "", *equivalent, "",
        "## Survivors", "", *survivors, "",
    ]) + _history()


def _history() -> str:
    """The ``## History`` section of the report as it stands, or nothing."""
    text = REPORT.read_text() if REPORT.exists() else ""
    return text[text.index(HISTORY):] if HISTORY in text else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="only the CI subset; write no report")
    parser.add_argument("--module", action="append",
                        help="only this entry of the table, or its module's name (repeatable); write no report")
    args = parser.parse_args(argv)
    config = settings()
    chosen = config["ci"] if args.ci else args.module or config["modules"]
    entries = {m: e for e in config["modules"] for m in (e, e.partition(":")[0])}
    unknown = [m for m in chosen if m not in entries]
    if unknown:
        parser.error(f"not in [tool.nnmark.mutation.modules]: {', '.join(unknown)}")
    modules = {entries[m]: config["modules"][entries[m]] for m in chosen}
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    (ROOT / "mutants").mkdir()
    start, scores = time.monotonic(), []
    for module, bound_s in modules.items():
        seconds = run_module(module, bound_s, config["workers"])
        scores.append(score(module, exit_codes(module), config["equivalent"], seconds))
    print(table(scores, config["threshold"]))
    if not (args.ci or args.module):
        REPORT.write_text(report(scores, config, time.monotonic() - start))
    below = [s for s in scores if s.percent < config["threshold"]]
    for s in below:
        print(f"mutation: {s.module} kills {s.percent:.1f}% < {config['threshold']}%; survivors: "
              + ", ".join(s.survivors), file=sys.stderr)
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
