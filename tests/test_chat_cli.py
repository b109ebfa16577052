"""``cpullm chat`` driven through a real pseudo-terminal, plus ``pull`` and ``models``."""

from __future__ import annotations

import json
import re
import sys

import pytest
from test_cli import REPO, _env, cli

STATS = re.compile(
    r"\[(\d+) new prompt tokens \((\d+) cached, (\d+) in all\), (\d+) reply tokens([^\]]*)\]"
)
PROMPT = ">>> "


def _turn(child, text: str, interrupt: bool = False):
    child.sendline(text)
    child.expect_exact(text)  # the terminal's echo
    if interrupt:
        child.expect(r"\w\w")  # the reply has started streaming
        child.sendintr()  # Ctrl-C
    child.expect(STATS)
    new, cached, total, reply, rest = child.match.groups()
    child.expect_exact(PROMPT)
    return int(new), int(cached), int(total), int(reply), rest


def test_chat_repl_three_turns_with_ctrl_c(smollm2_path, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cpullm", "chat", str(smollm2_path), "-T", "0", "-n", "48", "--ctx", "512",
         "--system", "You are a helpful assistant."],
        cwd=str(REPO), env=_env(), encoding="utf-8", timeout=300, dimensions=(40, 200),
    )
    try:
        child.expect_exact(PROMPT)
        new1, cached1, total1, reply1, _ = _turn(child, "What is the capital of France?")
        assert cached1 == 0 and new1 == total1 and reply1 > 0

        new2, cached2, total2, reply2, rest2 = _turn(
            child, "Tell me a very long story about a dragon.", interrupt=True
        )
        assert "interrupted" in rest2
        assert reply2 < 48
        # turn 2 prefilled only its new tokens: turn 1 and its reply came from the cache
        assert cached2 >= total1 + reply1 - 1
        assert new2 == total2 - cached2

        new3, cached3, total3, reply3, _ = _turn(child, "Thanks! Now a short one.")
        assert cached3 >= total2  # the interrupted turn's prompt is still cached
        assert new3 == total3 - cached3 and reply3 > 0

        child.sendline("/help")
        child.expect_exact("/reset")
        child.expect_exact(PROMPT)
        out = tmp_path / "conv.json"
        child.sendline(f"/save {out}")
        child.expect_exact("saved")
        child.expect_exact(PROMPT)
        child.sendline("/reset")
        child.expect_exact("conversation cleared")
        child.expect_exact(PROMPT)
        child.sendeof()  # Ctrl-D
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    msgs = json.loads(out.read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 3
    assert msgs[3]["content"]  # the partial reply that was interrupted is kept


def test_models_and_pull(smollm2_path):
    r = cli("models")
    assert r.returncode == 0, r.stderr
    assert "smollm2" in r.stdout and "[cached]" in r.stdout
    r = cli("pull", "smollm2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(smollm2_path.name)
    r = cli("pull", "no-such-model")
    assert r.returncode == 1 and "unknown model" in r.stderr and "Traceback" not in r.stderr


def test_chat_help_lists_options():
    r = cli("chat", "--help")
    assert r.returncode == 0
    for opt in ("--system", "--ctx", "--temperature", "--top-p", "--template"):
        assert opt in r.stdout
    r = cli("--help")
    for cmd in ("chat", "pull", "models"):
        assert cmd in r.stdout
