"""Run every benchmark in this folder and write benchmarks/results.json + benchmarks/results.md.

Each benchmarks/<name>.py exposes ``run(full: bool = False) -> dict``. Usage:
    python benchmarks/run_all.py [--full] [--only name,name]
With --only, the named benchmarks replace their entries in the existing results file and the others are kept
(each entry records its own date and machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores {cpu}, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def to_markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}  ", f"Mode: {'full' if results['full'] else 'default (small)'}, "
             f"{results['date']}", "", "| benchmark | metric | value |", "| --- | --- | --- |"]
    for name, res in results["benchmarks"].items():
        if "error" in res:
            lines.append(f"| {name} | error | {res['error']} |")
            continue
        for k, v in _flatten(res).items():
            if isinstance(v, float):
                v = f"{v:.4g}"
            lines.append(f"| {name} | {k} | {v} |")
    return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="the issues' large sizes (slow)")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    args = ap.parse_args()
    names = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("run_all",) and not p.stem.startswith("_"))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    suffix = "_full" if args.full else ""
    results = {"machine": machine(), "full": args.full, "date": time.strftime("%Y-%m-%d %H:%M"), "benchmarks": {}}
    previous = HERE / f"results{suffix}.json"
    if args.only and previous.exists():
        old = json.loads(previous.read_text())
        for res in old["benchmarks"].values():  # entries from before per-entry stamps carry the file's
            res.setdefault("date", old["date"])
            res.setdefault("machine", old["machine"])
        results["benchmarks"] = old["benchmarks"]
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res = load(name).run(full=args.full)
        except Exception as e:  # one broken benchmark must not hide the others
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {e}"}
        res["wall_s"] = round(time.perf_counter() - t0, 2)
        res["date"] = time.strftime("%Y-%m-%d %H:%M")
        res["machine"] = results["machine"]
        results["benchmarks"][name] = res
        print(json.dumps(res), flush=True)
    results["benchmarks"] = dict(sorted(results["benchmarks"].items()))
    (HERE / f"results{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / f"results{suffix}.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 1 if any("error" in r for r in results["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
