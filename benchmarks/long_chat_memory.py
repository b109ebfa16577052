"""A long chat in a small context: memory must stay flat, tokens must keep coming.

    python benchmarks/long_chat_memory.py [MODEL] [--tokens 20000] [--ctx 512]

Runs one ChatSession (system prompt pinned) whose replies add up to ``--tokens`` tokens
with a ``--ctx``-token sliding cache, and prints RSS after every turn. Passes when RSS
after warm-up (the first 10 % of tokens) stays within 20 MB, generation never stops
early for lack of room, and the system prompt is still at the start of the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=None)
    a = ap.parse_args()

    from cpullm import hub
    from cpullm.chat import ChatSession
    from cpullm.model import Model
    from cpullm.sampler import SamplingParams

    model = Model.open(hub.resolve(a.model), n_ctx=a.ctx, n_threads=a.threads)
    system = "You are a storyteller. You tell long stories."
    # end-of-turn tokens are banned (logit bias -inf) so that each reply runs to
    # max_tokens: the test is about a long generation, not about many short turns
    tok = model.tokenizer
    ban = {t: float("-inf") for t in {tok.eos_id, tok.eot_id, tok.token_id("<|im_end|>")}
           if t is not None}
    s = ChatSession(model, system=system, max_tokens=2000,
                    params=SamplingParams(temperature=0.9, seed=1, logit_bias=ban))
    pinned = s.prompt_ids()[: model.n_keep]
    total, turn, samples, t0 = 0, 0, [], time.time()
    warm = a.tokens // 10
    base = None
    msg = "Tell me a long story about a lighthouse keeper."
    while total < a.tokens:
        s.reply(msg)
        msg = "Go on."
        turn += 1
        total += s.last.reply_tokens
        r = rss_mb()
        if total >= warm and base is None:
            base = r
        if base is not None:
            samples.append(r)
        print(f"turn {turn:3d}  tokens {total:6d}  dropped {model.n_dropped:6d}  "
              f"n_past {model.n_past:4d}  rss {r:7.1f} MB  {s.last.reply_tps:5.1f} tok/s",
              flush=True)
        if s.last.reply_tokens == 0:
            print("no tokens in a turn", file=sys.stderr)
            return 1
    spread = max(samples) - min(samples)
    ok_pin = model.history[: model.n_keep] == pinned
    print(f"\n{total} tokens in {turn} turns, {time.time() - t0:.0f} s; RSS after warm-up "
          f"{min(samples):.1f}..{max(samples):.1f} MB (spread {spread:.1f} MB); "
          f"system prompt pinned: {ok_pin}")
    return 0 if spread <= 20 and ok_pin else 1


if __name__ == "__main__":
    sys.exit(main())
