"""``cpullm bench``: prompt-processing and generation throughput, like llama-bench.

    results = run_bench("model.gguf", n_prompt=512, n_gen=128, threads=2, reps=5)
    print(format_table(results))

Two tests, each run once as a warm-up (not counted, it also pays numba's compile
or cache load) and then ``reps`` times:

- ``ppN``: N random tokens evaluated as one prompt from an empty context;
- ``tgN``: N random tokens decoded one at a time from an empty context.

Tokens/s is N over the wall time of one run; results give the mean and sample
standard deviation over the reps (and the median). The reps go round-robin over the
tests. ``--against LLAMA_BENCH`` (:func:`bench_against`) runs a user-supplied llama-bench
on the same file, tests and threads between cpullm's rounds, and adds its tokens/s and
the ratio of medians (cpullm / llama.cpp) to the table.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field

from cpullm.errors import CpullmError


@dataclass
class BenchResult:
    model: str  # "llama 134.5M Q4_1": architecture, parameters, main weight type
    model_path: str
    model_size: int  # file size, bytes
    model_params: int
    n_threads: int
    test: str  # "pp512" or "tg128"
    n_prompt: int
    n_gen: int
    reps: int
    samples_ts: list[float] = field(default_factory=list)
    # tg tests: peak VmRSS / RssAnon (bytes) seen after a run, and the KV cache's size
    rss: int = 0
    rss_anon: int = 0
    kv_bytes: int = 0
    # --against: llama-bench's samples of the same test, from the same run
    other_samples_ts: list[float] = field(default_factory=list)

    @property
    def median_ts(self) -> float:
        return statistics.median(self.samples_ts) if self.samples_ts else 0.0

    @property
    def other_median_ts(self) -> float:
        return statistics.median(self.other_samples_ts) if self.other_samples_ts else 0.0

    @property
    def ratio(self) -> float | None:
        """cpullm's median tokens/s over llama-bench's median (None without --against)."""
        o = self.other_median_ts
        return self.median_ts / o if o > 0 else None

    @property
    def avg_ts(self) -> float:
        return statistics.fmean(self.samples_ts) if self.samples_ts else 0.0

    @property
    def stddev_ts(self) -> float:
        return statistics.stdev(self.samples_ts) if len(self.samples_ts) > 1 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["avg_ts"] = self.avg_ts
        d["stddev_ts"] = self.stddev_ts
        d["median_ts"] = self.median_ts
        if self.other_samples_ts:
            d["other_median_ts"] = self.other_median_ts
            d["ratio"] = self.ratio
        return d


def _main_type(model) -> str:
    """The weight type holding most of the parameters (the "quantization" of the file)."""
    by_type: dict[str, int] = {}
    for t in model.file.tensors.values():
        by_type[t.qtype.name] = by_type.get(t.qtype.name, 0) + t.n_elements
    return max(by_type.items(), key=lambda kv: kv[1])[0] if by_type else "?"


def run_bench(
    path: str | os.PathLike,
    n_prompt: int = 512,
    n_gen: int = 128,
    threads: int | None = None,
    reps: int = 5,
    seed: int = 0,
    progress=None,
    on_round=None,
) -> list[BenchResult]:
    """Measure ppN (n_prompt > 0) and tgN (n_gen > 0) on the model at ``path``.

    ``progress``, when given, is called with a short message before each run;
    ``on_round(rep)`` after each round of reps (one run of every test)."""
    import numba
    import numpy as np

    from cpullm.cli import _human_count
    from cpullm.model import Model

    if reps < 1:
        raise CpullmError(f"reps must be at least 1, got {reps}")
    if n_prompt <= 0 and n_gen <= 0:
        raise CpullmError("nothing to measure: both -p and -n are 0")
    need = max(n_prompt, n_gen, 1)
    m = Model.open(path, n_ctx=need, n_threads=threads)
    if m.n_ctx < need:
        raise CpullmError(
            f"the test needs {need} tokens of context, but the model's context length "
            f"is {m.config.context_length}"
        )
    if threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    n_threads = numba.get_num_threads()
    n_params = m.n_params()
    arch = m.metadata.get("general.architecture", "?")
    name = f"{arch} {_human_count(n_params)} {_main_type(m)}"
    rng = np.random.default_rng(seed)
    vocab = m.config.vocab_size

    def pp() -> float:
        toks = rng.integers(0, vocab, n_prompt)
        m.reset()
        t0 = time.perf_counter()
        m.eval(toks)
        return n_prompt / (time.perf_counter() - t0)

    def tg() -> float:
        toks = rng.integers(0, vocab, n_gen)
        m.reset()
        t0 = time.perf_counter()
        for t in toks:
            m.eval([int(t)])
        return n_gen / (time.perf_counter() - t0)

    tests = [(f"pp{n_prompt}", n_prompt, pp), (f"tg{n_gen}", n_gen, tg)]
    tests = [x for x in tests if x[1] > 0]
    results = []
    for test, _n, fn in tests:
        if progress is not None:
            progress(f"{test}: warm-up")
        fn()  # warm-up: compile or load the kernels, touch the weights
        results.append(BenchResult(
            model=name, model_path=str(path), model_size=m.file.file_size,
            model_params=n_params, n_threads=n_threads, test=test,
            n_prompt=n_prompt if test.startswith("pp") else 0,
            n_gen=n_gen if test.startswith("tg") else 0, reps=reps,
        ))
    # the reps go round-robin over the tests (and over the other runtime, see on_round),
    # so that a load change on the machine hits every series alike
    for rep in range(reps):
        for (test, _, fn), r in zip(tests, results, strict=True):
            if progress is not None:
                progress(f"{test}: run {rep + 1}/{reps}")
            r.samples_ts.append(fn())
            if test.startswith("tg"):
                st = memory_status()
                r.rss = max(r.rss, st.get("VmRSS", 0))
                r.rss_anon = max(r.rss_anon, st.get("RssAnon", 0))
                r.kv_bytes = int(m.k_cache.nbytes + m.v_cache.nbytes)
        if on_round is not None:
            on_round(rep)
    return results


def memory_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of this process in bytes, from /proc/self/status (Linux)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile") and val.strip().endswith("kB"):
                    out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def run_llama_bench(
    exe: str, path: str | os.PathLike, n_prompt: int, n_gen: int, threads: int, reps: int,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Run a user-supplied llama-bench on the same file and tests; samples (tokens/s) by test.

    llama-bench is a measuring tool the user brings (cpullm never builds or ships it)."""
    import json
    import subprocess

    cmd = [exe, "-m", str(path), "-p", str(n_prompt), "-n", str(n_gen), "-t", str(threads),
           "-r", str(reps), "-o", "json"]
    if not warmup:
        cmd.append("--no-warmup")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise CpullmError(f"cannot run llama-bench {exe!r}: {e}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise CpullmError(f"llama-bench failed (exit {proc.returncode}): " + " / ".join(tail))
    try:
        rows = json.loads(proc.stdout)
    except ValueError:
        raise CpullmError("could not parse llama-bench's -o json output") from None
    out: dict[str, list[float]] = {}
    for row in rows:
        npp, ngen = int(row.get("n_prompt", 0)), int(row.get("n_gen", 0))
        test = f"pp{npp}" if ngen == 0 else (f"tg{ngen}" if npp == 0 else f"pp{npp}+tg{ngen}")
        samples = row.get("samples_ts") or [row.get("avg_ts", 0.0)]
        out.setdefault(test, []).extend(float(x) for x in samples)
    return out


def bench_against(
    path: str | os.PathLike, llama_bench: str, n_prompt: int = 512, n_gen: int = 128,
    threads: int | None = None, reps: int = 5, progress=None,
) -> list[BenchResult]:
    """:func:`run_bench`, with llama-bench run once per round between cpullm's reps
    (alternating, one warm-up of its own first); fills ``other_samples_ts``."""
    other: dict[str, list[float]] = {}
    nthreads = threads or os.cpu_count() or 1

    def on_round(rep: int) -> None:
        if progress is not None:
            progress(f"llama-bench: run {rep + 1}/{reps}")
        for test, samples in run_llama_bench(
            llama_bench, path, n_prompt, n_gen, nthreads, 1, warmup=(rep == 0)
        ).items():
            other.setdefault(test, []).extend(samples)

    results = run_bench(path, n_prompt=n_prompt, n_gen=n_gen, threads=nthreads, reps=reps,
                        progress=progress, on_round=on_round)
    for r in results:
        r.other_samples_ts = other.get(r.test, [])
    return results


def format_table(results: list[BenchResult]) -> str:
    """A llama-bench-style markdown table."""
    from cpullm.cli import _human_bytes, _human_count

    against = any(r.other_samples_ts for r in results)
    header = ["model", "size", "params", "threads", "test", "t/s"]
    if against:
        header += ["llama.cpp t/s", "ratio"]
    rows = []
    for r in results:
        row = [
            r.model, _human_bytes(r.model_size), _human_count(r.model_params), str(r.n_threads),
            r.test, f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}",
        ]
        if against:
            o = r.other_samples_ts
            sd = statistics.stdev(o) if len(o) > 1 else 0.0
            row += [f"{statistics.fmean(o):.2f} ± {sd:.2f}" if o else "-",
                    f"{r.ratio:.2f}" if r.ratio is not None else "-"]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    right = set(range(2, len(header)))  # numbers and the test name right-aligned

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
               enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(
        ("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)
    ) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
