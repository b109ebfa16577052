"""The ``cpullm`` command line, run as a real process, and the model registry (hub)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cpullm import hub
from cpullm.errors import CpullmError, ModelNotFoundError

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m cpullm ARGS`` (the same code as the ``cpullm`` entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "cpullm", *args],
        capture_output=True, text=True, encoding="utf-8", env=_env(), cwd=REPO,
        timeout=timeout,
    )


def assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# ---- help ----------------------------------------------------------------------------------


def test_help_lists_commands_without_heavy_imports():
    r = cli("--help")
    assert r.returncode == 0
    assert "generate" in r.stdout and "info" in r.stdout
    # --help must not pay for numba
    code = (
        "import sys; from cpullm import cli; "
        "assert 'numba' not in sys.modules and 'cpullm.model' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), cwd=REPO)


def test_generate_help_explains_options():
    r = cli("generate", "--help")
    assert r.returncode == 0
    for opt in ("--temperature", "--seed", "--threads", "--ctx", "--quiet", "-n"):
        assert opt in r.stdout


# ---- info ----------------------------------------------------------------------------------


def test_info_text(smollm2_path):
    r = cli("info", str(smollm2_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in (
        "architecture    llama", "134.5M", "93.8 MiB", "Q4_1 x210", "gpt2", "smollm",
        "49152", "context length  8192", "layers          30", "kv heads 3", "head_dim 64",
        "ffn             1536", "rope theta      100000", "sliding window  none",
        "chat template   yes",
    ):
        assert needle in out, (needle, out)


def test_info_json(smollm2_path):
    r = cli("info", "--json", str(smollm2_path))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["architecture"] == "llama"
    assert d["parameters"] == 134515008 and d["parameters_human"] == "134.5M"
    assert d["file_size"] == 98362432
    assert d["tensor_types"]["Q4_1"] == 210
    assert d["tokenizer"] == {
        "kind": "gpt2", "pre": "smollm", "vocab_size": 49152, "bos_id": 1, "eos_id": 2,
    }
    assert d["context_length"] == 8192
    dims = d["dims"]
    assert (dims["layers"], dims["heads"], dims["kv_heads"], dims["head_dim"]) == (30, 9, 3, 64)
    assert dims["ffn"] == 1536 and dims["rope_theta"] == 100000.0
    assert dims["sliding_window"] == 0
    assert d["chat_template"] is True and d["supported"] is True


def test_info_by_registry_name(smollm2_path):
    r = cli("info", "--json", "smollm2")  # served from the cache the fixture filled
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(smollm2_path)


# ---- generate ------------------------------------------------------------------------------


def test_generate_greedy_paris(smollm2_path):
    r = cli("generate", str(smollm2_path), "The capital of France is", "-n", "8",
            "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert r.stdout.endswith("\n")
    assert "Traceback" not in r.stderr
    assert "prompt 5 tokens" in r.stderr and "generated" in r.stderr and "tok/s" in r.stderr


def test_generate_same_seed_same_text(smollm2_path):
    args = ("generate", str(smollm2_path), "Once upon a time", "-n", "12", "-T", "0.8",
            "--seed", "1234", "--quiet", "-t", "1")
    a, b = cli(*args), cli(*args)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout and a.stdout.strip()
    assert a.stderr == ""  # --quiet: no statistics


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery is POSIX-specific")
def test_generate_interrupt_exits_130(smollm2_path):
    # a child started from a background job inherits SIGINT ignored; undo that
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    p = subprocess.Popen(
        [sys.executable, "-m", "cpullm", "generate", str(smollm2_path), "Once upon a time",
         "-n", "2000", "-T", "0.8", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=REPO,
        preexec_fn=restore,
    )
    try:
        first = p.stdout.read(1)  # generation has started
        assert first
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    err = err.decode()
    assert "Traceback" not in err and "interrupted" in err


# ---- errors --------------------------------------------------------------------------------


def test_error_missing_file(tmp_path):
    assert_clean_error(cli("info", str(tmp_path / "missing.gguf")), "no such file")
    r = cli("generate", str(tmp_path / "missing.gguf"), "hi")
    assert_clean_error(r, "no such file")


def test_error_not_gguf(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("this is not a model\n" * 10)
    assert_clean_error(cli("info", str(bad)), "not a GGUF file")
    assert_clean_error(cli("generate", str(bad), "hi"), "not a GGUF file")


def test_error_unknown_registry_name():
    assert_clean_error(cli("info", "no-such-model"), "unknown model", "smollm2")
    assert_clean_error(cli("generate", "no-such-model", "hi"), "unknown model", "smollm2")


def test_error_context_too_small(smollm2_path):
    r = cli("generate", str(smollm2_path), "The capital of France is", "-n", "8", "--ctx", "6")
    assert_clean_error(r, "lower -n or raise --ctx")


def test_error_bad_option_value(smollm2_path):
    r = cli("generate", str(smollm2_path), "hi", "--temperature", "-1")
    assert r.returncode == 2 and "Traceback" not in r.stderr  # click's usage error


# ---- hub -----------------------------------------------------------------------------------


def test_resolve_existing_path(tmp_path):
    f = tmp_path / "any.gguf"
    f.write_bytes(b"GGUF")
    assert hub.resolve(f) == f
    assert hub.resolve(str(f)) == f


def test_resolve_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        hub.resolve(tmp_path / "missing.gguf")
    with pytest.raises(ModelNotFoundError, match="not a file"):
        hub.resolve(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"known names: .*smollm2"):
        hub.resolve("mistral-9000")


def test_resolve_registry_name_uses_cache(smollm2_path):
    assert hub.resolve("smollm2") == smollm2_path
    assert smollm2_path in hub.cached()


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CPULLM_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert hub.cache_dir() == tmp_path / "a"
    assert hub.models_dir() == tmp_path / "a" / "models"
    monkeypatch.delenv("CPULLM_CACHE")
    assert hub.cache_dir() == tmp_path / "x" / "cpullm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "cpullm"
    assert hub.cached() == []


def test_verify_checksum(tmp_path):
    import hashlib

    data = b"cpullm" * 1000
    good = hashlib.sha256(data).hexdigest()
    f = tmp_path / "m.gguf"
    f.write_bytes(data)
    hub.verify(f, good, len(data))  # passes, file kept
    assert f.exists()

    with pytest.raises(hub.ChecksumError, match="size is 6000 bytes, expected 6001"):
        hub.verify(f, good, len(data) + 1)
    assert not f.exists()  # deleted

    f.write_bytes(data)
    with pytest.raises(hub.ChecksumError, match="sha256") as ei:
        hub.verify(f, "0" * 64, len(data))
    assert isinstance(ei.value, CpullmError)
    assert not f.exists()

    f.write_bytes(data)
    with pytest.raises(hub.ChecksumError):
        hub.verify(f, "0" * 64, len(data), delete=False)
    assert f.exists()


def test_registry_entry_is_consistent():
    e = hub.REGISTRY["smollm2"]
    assert e.member.endswith(e.filename)
    assert len(e.sha256) == 64 and e.size == 98362432
