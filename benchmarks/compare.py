"""Measure cpullm against llama.cpp's llama-bench on the same files, side by side.

    python benchmarks/compare.py --llama-bench PATH/TO/llama-bench -t 2 -r 3 \\
        -p 512 -n 128 FILE.gguf [FILE.gguf ...] [-o docs/bench-results.json]

For each file this runs ``cpullm bench FILE --against LLAMA_BENCH --json`` (cpullm and
llama-bench alternate, one round at a time, in one process run) and collects the medians,
the ratio and the memory figures into one JSON file, which ``benchmarks/plot.py`` turns
into ``docs/benchmarks.png``. llama-bench is a measuring tool you build yourself; nothing
here builds or ships it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-o", default="docs/bench-results.json")
    args = ap.parse_args(argv)

    out_path = Path(args.o)
    old = json.loads(out_path.read_text()) if out_path.exists() else {}
    by_file = {r["file"] + "|" + r["test"]: r for r in old.get("results", [])}
    for f in args.files:
        cmd = [sys.executable, "-m", "cpullm", "bench", f, "-p", str(args.p), "-n", str(args.n),
               "-t", str(args.t), "-r", str(args.r), "--json", "--against", args.llama_bench]
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        for d in json.loads(proc.stdout):
            row = {
                "file": Path(f).name, "model": d["model"], "size": d["model_size"],
                "threads": d["n_threads"], "test": d["test"], "reps": d["reps"],
                "cpullm_ts": d["samples_ts"], "llama_cpp_ts": d["other_samples_ts"],
                "cpullm_median": d["median_ts"], "llama_cpp_median": d.get("other_median_ts"),
                "ratio": d.get("ratio"),
            }
            if d.get("rss"):
                row.update(rss=d["rss"], rss_anon=d["rss_anon"], kv_bytes=d["kv_bytes"])
            by_file[row["file"] + "|" + row["test"]] = row
            print(f"{row['file']:40s} {row['test']:>6s} cpullm {row['cpullm_median']:8.2f} "
                  f"llama.cpp {row['llama_cpp_median'] or 0:8.2f} ratio {row['ratio'] or 0:.2f}",
                  file=sys.stderr, flush=True)
        print(f"  ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {args.t} threads",
        "command": "python benchmarks/compare.py --llama-bench LLAMA_BENCH "
                   f"-t {args.t} -r {args.r} -p {args.p} -n {args.n} FILES",
        "results": sorted(by_file.values(), key=lambda r: (r["file"], r["test"])),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
