"""Time from process start to the first generated token on stdout.

Runs ``cpullm generate MODEL PROMPT -n 1 --temperature 0 -q`` as a fresh process REPS
times (after one untimed run that warms numba's kernel cache and the page cache) and
reports the median, min and max wall time from ``Popen`` to the first byte of the
completion arriving on the pipe.

    python benchmarks/first_token.py smollm2 -r 7
    python benchmarks/first_token.py /tmp/mistral7b-q4_0.gguf -r 5 -t 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def time_first_token(cmd: list[str]) -> float:
    """Seconds from spawning ``cmd`` to its first byte on stdout (the process is then
    left to finish; its exit status is checked)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    dt = time.perf_counter() - t0
    _, err = proc.communicate()
    if proc.returncode != 0 or not first:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode(errors='replace')}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="GGUF file or registry name")
    ap.add_argument("--prompt", default="Hello", help="prompt (default: %(default)r)")
    ap.add_argument("-r", "--reps", type=int, default=5, help="timed runs (default 5)")
    ap.add_argument("-t", "--threads", type=int, default=None, help="threads (default: cpullm's)")
    ap.add_argument("--cpullm", default=None, help="cpullm executable (default: this Python's)")
    args = ap.parse_args()

    exe = [args.cpullm] if args.cpullm else [sys.executable, "-m", "cpullm.cli"]
    cmd = exe + ["generate", args.model, args.prompt, "-n", "1", "--temperature", "0", "-q"]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    warm = time_first_token(cmd)
    print(f"warm-up run: {warm:.2f} s", file=sys.stderr)
    times = [time_first_token(cmd) for _ in range(args.reps)]
    print(f"first token after process start ({args.reps} runs): "
          f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
          f"max {max(times):.3f} s")


if __name__ == "__main__":
    main()
