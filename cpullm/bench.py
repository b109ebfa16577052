"""``cpullm bench``: prompt-processing and generation throughput, like llama-bench.

    results = run_bench("model.gguf", n_prompt=512, n_gen=128, threads=2, reps=5)
    print(format_table(results))

Two tests, each run once as a warm-up (not counted, it also pays numba's compile
or cache load) and then ``reps`` times:

- ``ppN``: N random tokens evaluated as one prompt from an empty context;
- ``tgN``: N random tokens decoded one at a time from an empty context.

Tokens/s is N over the wall time of one run; results give the mean and sample
standard deviation over the reps.
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
) -> list[BenchResult]:
    """Measure ppN (n_prompt > 0) and tgN (n_gen > 0) on the model at ``path``.

    ``progress``, when given, is called with a short message before each test."""
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

    results = []
    for test, n, fn in ((f"pp{n_prompt}", n_prompt, pp), (f"tg{n_gen}", n_gen, tg)):
        if n <= 0:
            continue
        if progress is not None:
            progress(f"{test}: warm-up + {reps} runs")
        fn()  # warm-up: compile or load the kernels, touch the weights
        r = BenchResult(
            model=name, model_path=str(path), model_size=m.file.file_size,
            model_params=n_params, n_threads=n_threads, test=test,
            n_prompt=n_prompt if test.startswith("pp") else 0,
            n_gen=n_gen if test.startswith("tg") else 0, reps=reps,
        )
        r.samples_ts = [fn() for _ in range(reps)]
        results.append(r)
    return results


def format_table(results: list[BenchResult]) -> str:
    """A llama-bench-style markdown table."""
    from cpullm.cli import _human_bytes, _human_count

    header = ["model", "size", "params", "threads", "test", "t/s"]
    rows = [
        [
            r.model, _human_bytes(r.model_size), _human_count(r.model_params), str(r.n_threads),
            r.test, f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}",
        ]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    right = {2, 3, 4, 5}  # numbers (and the test name) right-aligned, as llama-bench does

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
               enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(
        ("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)
    ) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
