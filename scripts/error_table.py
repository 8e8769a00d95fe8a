"""The table of every bad-input and fault class the test suite tries, from the CLI's own record.

Runs the bad-input/fault test files with ``VCE_ERROR_LOG`` set (``vce.cli.record_error``: every
refused or failed ``vce`` command appends step, exit status, message, traceback flag and the test
that ran it), then prints a markdown table: one row per (test, step), the exit status, the first
message (shortened, paths relative), and a count of tracebacks (bugs that escaped the error
boundary). The leftovers column states what that test file asserts about partial outputs.

    .venv/bin/python scripts/error_table.py [--slow] [--out docs/error_table.md] [pytest args...]

Exit status 1 when any recorded failure printed a traceback or a test failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: test file -> what its tests assert about what a refused/failed command leaves behind
FILES = {
    "tests/test_bad_input.py": "asserted: no output, no temp sibling",
    "tests/test_integrity.py": "asserted: no output",
    "tests/test_validate.py": "read-only step (writes nothing)",
    "tests/test_import.py": "asserted: no output folder",
    "tests/test_config.py": "refused at load (nothing started)",
    "tests/test_environment_errors.py": "asserted: no output, no temp sibling",
    "tests/test_predict.py": "asserted: no output file",
    "tests/test_registration.py": "asserted: no registered output",
    "tests/test_split.py": "asserted: no split output",
    "tests/test_trainer.py": "asserted: state kept / refused before writing",
    "tests/test_step_faults.py": "asserted: no output, no temp sibling, disk space returned",
    "tests/test_faults.py": "asserted: no RUNNING runs, no orphan processes, lock released",
}


def run_tests(log: Path, slow: bool, extra: list[str]) -> int:
    env = dict(os.environ, VCE_ERROR_LOG=str(log), PYTHONPYCACHEPREFIX=str(ROOT / ".venv" / "pycache"))
    marker = [] if slow else ["-m", "not slow"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *marker, *FILES, *extra]
    print("running:", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def _short(message: str, width: int = 150) -> str:
    text = message.splitlines()[0] if message else ""
    for prefix in (tempfile.gettempdir() + "/", str(ROOT) + "/"):
        text = text.replace(prefix, "")
    text = text.replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def render(records: list[dict]) -> str:
    """One markdown row per (test, step, exit): exit status, first message, leftovers, tracebacks."""
    rows: dict[tuple[str, str, int], dict] = {}
    for r in records:
        key = (r["test"] or "(outside pytest)", r["step"], r["exit"])
        row = rows.setdefault(key, {"n": 0, "tb": 0, "message": r["message"]})
        row["n"] += 1
        row["tb"] += bool(r["traceback"])
    lines = ["| # | test (class tried) | step | exit | message (first, shortened) | leftovers | tracebacks |",
             "|---|---|---|---|---|---|---|"]
    for i, ((test, step, code), row) in enumerate(sorted(rows.items()), 1):
        leftovers = FILES.get(test.split("::")[0], "")
        name = test.split("::", 1)[-1]
        lines.append(f"| {i} | {test.split('::')[0].removeprefix('tests/')}::{name} | {step} | {code} | "
                     f"{_short(row['message'])} | {leftovers} | {row['tb']} |")
    n_tb = sum(r["tb"] for r in rows.values())
    lines.append("")
    lines.append(f"{len(rows)} classes (test x step x exit status), {len(records)} refused/failed commands, "
                 f"{n_tb} with a traceback.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slow", action="store_true", help="include the slow fault tests (kill -9 during each step)")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args, extra = ap.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "errors.jsonl"
        log.touch()
        rc = run_tests(log, args.slow, extra)
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    table = render(records)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 1 if rc != 0 or any(r["traceback"] for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
