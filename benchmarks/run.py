"""Run the benchmarks: ``python benchmarks/run.py [--short] [--only NAME ...] [--out DIR]``.

Discovers ``benchmarks/bench_*.py``; each module defines ``run(short: bool) -> dict`` (JSON
serialisable). Every benchmark runs in its own fresh Python process (so peak-memory figures
and thread settings do not leak between them); the runner records its status, wall time and
the child's peak resident memory, and writes

    <out>/results.json   {"schema_version", "created", "short", "machine", "benchmarks": {name: entry}}
                         entry = {"status": "ok"|"error", "wall_s", "peak_rss_mib", "result", "error"}
    <out>/results.md     a summary table + each benchmark's ratios

(default ``outputs/benchmarks/``), prints a summary and exits 1 if any benchmark failed
(2 for an unknown ``--only`` name).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA_VERSION = 1
DEFAULT_OUT = ROOT / "outputs" / "benchmarks"


def discover(bench_dir: Path = HERE) -> list[str]:
    """Names (without the ``bench_`` prefix) of the ``bench_*.py`` modules, sorted."""
    return sorted(p.stem[len("bench_") :] for p in bench_dir.glob("bench_*.py"))


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, numpy scalars -> python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _child(name: str, short: bool, result_path: Path, bench_dir: Path = HERE) -> int:
    """Run one benchmark in this process and write its entry to ``result_path``."""
    sys.path.insert(0, str(bench_dir))
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"status": "ok", "result": None, "error": None}
    try:
        module = importlib.import_module(f"bench_{name}")
        entry["result"] = _clean(module.run(short))
    except Exception:  # noqa: BLE001 - any failure is reported, the runner goes on
        entry["status"] = "error"
        entry["error"] = traceback.format_exc()
    entry["wall_s"] = time.perf_counter() - t0
    # Linux ru_maxrss is in KiB; children (e.g. bench_data's fresh processes) are reported separately.
    entry["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    entry["children_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    result_path.write_text(json.dumps(entry))
    return 0 if entry["status"] == "ok" else 1


def run_one(name: str, short: bool, bench_dir: Path = HERE) -> dict[str, Any]:
    """Run ``bench_<name>.run(short)`` in a fresh interpreter; returns its entry."""
    with tempfile.TemporaryDirectory(prefix="vce-bench-") as tmp:
        result_path = Path(tmp) / "entry.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(result_path),
               "--bench-dir", str(bench_dir)]
        if short:
            cmd.append("--short")
        env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if result_path.is_file():
            entry = json.loads(result_path.read_text())
        else:
            entry = {"status": "error", "result": None, "wall_s": time.perf_counter() - t0, "peak_rss_mib": None,
                     "error": f"benchmark process exited {proc.returncode} without a result:\n{proc.stderr[-4000:]}"}  # fmt: skip
    return entry


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        info["load_avg_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    try:  # without importing torch (seconds) into the runner
        from importlib.metadata import version

        info["torch"] = version("torch")
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def to_markdown(results: dict[str, Any]) -> str:
    """The summary table and, per benchmark, its ``ratios`` (if any) as Markdown."""
    m = results["machine"]
    lines = [
        f"# Benchmarks ({'short' if results['short'] else 'full'} mode)",
        "",
        f"{results['created']} - {m.get('processor')} x{m.get('cpu_count')}, python {m.get('python')}, "
        f"torch {m.get('torch', '?')}, load average at start {m.get('load_avg_1_5_15', '?')}. "
        "Absolute times are noisy on a shared machine: read the ratios (see benchmarks/README.md).",
        "",
        "| benchmark | status | wall s | peak RSS MiB | summary |",
        "|---|---|---|---|---|",
    ]
    for name, e in results["benchmarks"].items():
        summary = (e.get("result") or {}).get("summary", "") if e["status"] == "ok" else (e.get("error") or "").strip().splitlines()[-1:]
        if isinstance(summary, list):
            summary = summary[0] if summary else ""
        rss = e.get("peak_rss_mib")
        lines.append(f"| {name} | {e['status']} | {e['wall_s']:.1f} | {'' if rss is None else f'{rss:.0f}'} | {summary} |")
    for name, e in results["benchmarks"].items():
        ratios = (e.get("result") or {}).get("ratios")
        if ratios:
            lines += ["", f"## {name}: ratios", "", "| ratio | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in ratios.items()]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="short mode (CI): fewer repeats, smaller sizes, same structure")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (names without bench_)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: outputs/benchmarks)")
    ap.add_argument("--bench-dir", type=Path, default=HERE, help="folder of bench_*.py modules (default: this one)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args.child, args.short, args.result, args.bench_dir.resolve())

    bench_dir = args.bench_dir.resolve()
    known = discover(bench_dir)
    names = args.only or known
    unknown = [n.removeprefix("bench_") for n in names if n.removeprefix("bench_") not in known]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {known}", file=sys.stderr)
        return 2
    names = [n.removeprefix("bench_") for n in names]
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "short": bool(args.short),
        "machine": machine_info(),
        "benchmarks": {},
    }
    for name in names:
        print(f"[bench] {name} ({'short' if args.short else 'full'}) ...", flush=True)
        e = run_one(name, args.short, bench_dir)
        results["benchmarks"][name] = e
        if e["status"] == "ok":
            print(f"[bench] {name}: ok in {e['wall_s']:.1f} s - {(e['result'] or {}).get('summary', '')}", flush=True)
        else:
            print(f"[bench] {name}: ERROR after {e['wall_s']:.1f} s\n{e['error']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    _write(args.out / "results.md", to_markdown(results))
    failed = [n for n, e in results["benchmarks"].items() if e["status"] != "ok"]
    print(f"[bench] wrote {args.out / 'results.json'} and results.md; {len(names) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
