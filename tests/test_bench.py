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
