"""``cpullm bench`` on a tiny model, as a real process."""

from __future__ import annotations

import json

from test_cli import cli
from tinymodel import make_tiny_gguf

from cpullm.bench import BenchResult, format_table
from cpullm.gguf import GGMLType


def test_bench_json(tmp_path):
    path = make_tiny_gguf(tmp_path / "tiny.gguf", GGMLType.Q4_0)
    r = cli("bench", str(path), "-p", "16", "-n", "8", "-r", "2", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [d["test"] for d in out] == ["pp16", "tg8"]
    for d in out:
        assert d["model"].startswith("llama ") and d["model"].endswith(" Q4_0")
        assert d["model_size"] == path.stat().st_size
        assert d["model_params"] > 0 and d["n_threads"] == 1 and d["reps"] == 2
        assert len(d["samples_ts"]) == 2 and all(s > 0 for s in d["samples_ts"])
        assert d["avg_ts"] > 0 and d["stddev_ts"] >= 0
    assert (out[0]["n_prompt"], out[0]["n_gen"]) == (16, 0)
    assert (out[1]["n_prompt"], out[1]["n_gen"]) == (0, 8)


def test_bench_context_too_small_is_a_clean_error(tmp_path):
    path = make_tiny_gguf(tmp_path / "tiny.gguf", context_length=32)
    r = cli("bench", str(path), "-p", "64", "-n", "0")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "context length" in r.stderr


def test_format_table():
    r = BenchResult("llama 1.0K Q8_0", "x.gguf", 2048, 1000, 2, "tg8", 0, 8, 2, [10.0, 12.0])
    lines = format_table([r]).splitlines()
    assert lines[0].startswith("| model") and "t/s" in lines[0]
    assert "tg8" in lines[2] and "11.00 ± 1.41" in lines[2] and "2.0 KiB" in lines[2]


FAKE_LLAMA_BENCH = """#!{python}
import json, sys
a = sys.argv
p, n, t = int(a[a.index("-p") + 1]), int(a[a.index("-n") + 1]), int(a[a.index("-t") + 1])
assert "-o" in a and a[a.index("-o") + 1] == "json"
rows = []
if p:
    rows.append({{"n_prompt": p, "n_gen": 0, "n_threads": t, "avg_ts": 100.0,
                 "samples_ts": [100.0]}})
if n:
    rows.append({{"n_prompt": 0, "n_gen": n, "n_threads": t, "avg_ts": 50.0,
                 "samples_ts": [50.0]}})
print(json.dumps(rows))
"""


def test_bench_against_runs_llama_bench_and_prints_ratio(tmp_path):
    import sys

    path = make_tiny_gguf(tmp_path / "tiny.gguf", GGMLType.Q4_0)
    fake = tmp_path / "llama-bench"
    fake.write_text(FAKE_LLAMA_BENCH.format(python=sys.executable))
    fake.chmod(0o755)
    r = cli("bench", str(path), "-p", "16", "-n", "8", "-r", "2", "-t", "1", "--json",
            "--against", str(fake))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [d["test"] for d in out] == ["pp16", "tg8"]
    assert out[0]["other_samples_ts"] == [100.0, 100.0]
    assert out[1]["other_samples_ts"] == [50.0, 50.0]
    for d, o in zip(out, (100.0, 50.0), strict=False):
        assert abs(d["ratio"] - d["median_ts"] / o) < 1e-9
    assert out[1]["rss"] > 0 and out[1]["kv_bytes"] > 0
    table = cli("bench", str(path), "-p", "16", "-n", "0", "-r", "1", "-t", "1",
                "--against", str(fake))
    assert table.returncode == 0, table.stderr
    assert "llama.cpp t/s" in table.stdout and "ratio" in table.stdout


def test_bench_against_missing_tool_is_a_clean_error(tmp_path):
    path = make_tiny_gguf(tmp_path / "tiny.gguf", GGMLType.Q4_0)
    r = cli("bench", str(path), "-p", "16", "-n", "0", "-r", "1", "-t", "1",
            "--against", str(tmp_path / "nope"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "llama-bench" in r.stderr
