"""Golden greedy ids for SmolLM2 from llama.cpp, an independent int8-activation engine.

Usage::

    python tests/golden/make_smollm2_llamacpp.py LLAMA_SERVER SmolLM2-135M-Instruct.Q4_1.gguf

Needs a llama.cpp ``llama-server`` binary you built yourself (see ../shared/BASELINES.md for
the build flags this machine needs; the build is a measuring tool and is never committed).
Starts it on 127.0.0.1, asks ``/completion`` for 20 greedy tokens of each prompt given as
token ids (temperature 0, top-2 log-probabilities per step, ids returned), stops it, and
writes ``smollm2_llamacpp.json`` beside this script.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROMPTS = {  # prompt text -> ids (from transformers' golden file; add_bos_token is false)
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "def fibonacci(n):": [1604, 3987, 46477, 24, 94, 727],
}
N_NEW = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def main(server: str, gguf: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [server, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", "2", "-c", "512",
         "-np", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        results = []
        for prompt, ids in PROMPTS.items():
            r = post(base + "/completion", {
                "prompt": ids, "n_predict": N_NEW, "temperature": 0, "n_probs": 2,
                "return_tokens": True, "cache_prompt": False, "post_sampling_probs": False,
            })
            steps = []
            for p in r["completion_probabilities"]:
                top = p["top_logprobs"]
                steps.append({"id": p["id"], "top2_ids": [t["id"] for t in top],
                              "margin": top[0]["logprob"] - top[1]["logprob"]})
            results.append({"prompt": prompt, "prompt_ids": ids, "generated_ids": r["tokens"],
                            "generated_text": r["content"], "steps": steps})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = {
        "source": "llama.cpp llama-server (vendored in llama-cpp-python 0.3.36), 2 threads, "
                  "greedy (temperature 0)",
        "file": Path(gguf).name,
        "file_sha256": hashlib.sha256(Path(gguf).read_bytes()).hexdigest(),
        "prompts": results,
    }
    dest = Path(__file__).with_name("smollm2_llamacpp.json")
    dest.write_text(json.dumps(out) + "\n")
    for r in results:
        print(r["prompt"], r["generated_ids"], repr(r["generated_text"]))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
