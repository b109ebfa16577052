"""The ``cpullm`` command line. A thin layer over the Python API.

Heavy modules (numpy, numba, the model) are imported inside the commands so that
``cpullm --help`` answers at once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

from cpullm.errors import CpullmError

app = typer.Typer(
    name="cpullm",
    help="Run quantized llama-architecture language models (GGUF files) on the CPU.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MODEL_HELP = (
    "A GGUF file path, or the name of a registry model (smollm2), which is downloaded "
    "once into the cache ($CPULLM_CACHE, else ~/.cache/cpullm)."
)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- helpers ------------------------------------------------------------------------------


def physical_cores() -> int:
    """Physical cores this process may run on (os.cpu_count() counts hyperthreads)."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    n_logical = len(allowed) if allowed else (os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return max(1, n_logical)
    cores: set[tuple[str, str]] = set()
    proc = phys = core = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if proc is not None and core is not None and (allowed is None or proc in allowed):
                cores.add((phys or "0", core))
            proc = phys = core = None
            continue
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "processor" and val.isdigit():
            proc = int(val)
        elif key == "physical id":
            phys = val
        elif key == "core id":
            core = val
    return max(1, min(len(cores), n_logical) if cores else n_logical)


def _human_count(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _human_bytes(n: int) -> str:
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _kernels_cached() -> bool:
    """Whether numba's on-disk cache holds the forward kernel (else the first eval
    compiles it, which takes about a minute)."""
    kdir = Path(__file__).resolve().parent / "kernels"
    places = [kdir / "__pycache__"]
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        places.append(Path(env))
    for place in places:
        try:
            if any(place.rglob("*forward*.nbi")):
                return True
        except OSError:
            pass
    return False


# -- info -----------------------------------------------------------------------------------


def _info_dict(path: Path) -> dict:
    from cpullm.config import ModelConfig
    from cpullm.gguf.constants import Keys
    from cpullm.gguf.reader import GGUFFile
    from cpullm.mistral_chat import format_label

    f = GGUFFile(path)
    md = f.metadata
    types: dict[str, int] = {}
    for t in f.tensors.values():
        types[t.qtype.name] = types.get(t.qtype.name, 0) + 1
    n_params = sum(t.n_elements for t in f.tensors.values())
    tokens = md.get(Keys.TOKENS)
    out: dict = {
        "path": str(path),
        "architecture": md.get(Keys.ARCHITECTURE),
        "name": md.get(Keys.NAME) or "",
        "parameters": n_params,
        "parameters_human": _human_count(n_params),
        "file_size": f.file_size,
        "file_size_human": _human_bytes(f.file_size),
        "tensor_count": len(f.tensors),
        "tensor_types": dict(sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))),
        "tokenizer": {
            "kind": md.get(Keys.TOKENIZER_MODEL),
            "pre": md.get(Keys.TOKENIZER_PRE) or "default",
            "vocab_size": len(tokens) if tokens is not None else None,
            "bos_id": md.get(Keys.BOS_ID),
            "eos_id": md.get(Keys.EOS_ID),
        },
        "chat_template": Keys.CHAT_TEMPLATE in md,
        "chat_format": format_label(md),
        "supported": True,
        "problem": None,
    }
    vocab = f.info("token_embd.weight").shape[0] if "token_embd.weight" in f.tensors else None
    try:
        c = ModelConfig.from_metadata(md, vocab_size=vocab)
    except CpullmError as e:
        out["supported"] = False
        out["problem"] = str(e)
        out["context_length"] = None
        out["dims"] = None
    else:
        out["context_length"] = c.context_length
        out["dims"] = {
            "layers": c.n_layers,
            "embedding": c.dim,
            "heads": c.n_heads,
            "kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim,
            "ffn": c.ffn_dim,
            "vocab": c.vocab_size,
            "rope_dim": c.rope_dim,
            "rope_theta": c.rope_theta,
            "rms_eps": c.rms_eps,
            "sliding_window": c.sliding_window,
        }
    f.close()
    return out


def _print_info(d: dict) -> None:
    tok = d["tokenizer"]
    rows = [
        ("file", d["path"]),
        ("architecture", d["architecture"]),
        ("name", d["name"] or "-"),
        ("parameters", f"{d['parameters_human']} ({d['parameters']:,})"),
        ("file size", f"{d['file_size_human']} ({d['file_size']:,} bytes)"),
        (
            "tensor types",
            ", ".join(f"{k} x{v}" for k, v in d["tensor_types"].items())
            + f" ({d['tensor_count']} tensors)",
        ),
        (
            "tokenizer",
            f"{tok['kind']} (pre-tokenizer {tok['pre']}, vocab {tok['vocab_size']}, "
            f"bos {tok['bos_id']}, eos {tok['eos_id']})",
        ),
        ("context length", d["context_length"] if d["context_length"] is not None else "-"),
    ]
    dims = d["dims"]
    if dims is not None:
        rows += [
            ("layers", dims["layers"]),
            ("embedding", dims["embedding"]),
            (
                "heads",
                f"{dims['heads']} (kv heads {dims['kv_heads']}, head_dim {dims['head_dim']})",
            ),
            ("ffn", dims["ffn"]),
            ("rope theta", f"{dims['rope_theta']:g} (rotated dims {dims['rope_dim']})"),
            ("rms eps", f"{dims['rms_eps']:g}"),
            ("sliding window", dims["sliding_window"] or "none"),
        ]
    rows.append(("chat template", "yes" if d["chat_template"] else "no"))
    rows.append(("chat format", d["chat_format"]))
    if not d["supported"]:
        rows.append(("supported", f"no: {d['problem']}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


@app.command()
def info(
    model: str = typer.Argument(..., help=MODEL_HELP, show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Show a model file's architecture, size, tensor types, tokenizer and dimensions."""
    from cpullm import hub

    d = _info_dict(hub.resolve(model))
    if json_out:
        import json

        print(json.dumps(d, indent=2))
    else:
        _print_info(d)


# -- generate -------------------------------------------------------------------------------


@app.command()
def generate(
    model: str = typer.Argument(..., help=MODEL_HELP, show_default=False),
    prompt: str = typer.Argument(..., help="The text to continue.", show_default=False),
    n: int = typer.Option(
        128, "-n", "--max-tokens", min=0,
        help="Most new tokens to generate (generation also stops at end-of-sequence).",
    ),
    temperature: float = typer.Option(
        0.8, "--temperature", "-T", min=0.0,
        help="Sampling temperature: 0 always picks the likeliest token (greedy, "
        "deterministic); higher values give more varied text.",
    ),
    seed: int | None = typer.Option(
        None, "--seed", "-s", min=0,
        help="Random seed for sampling: the same seed gives the same text. Default: random.",
        show_default=False,
    ),
    threads: int | None = typer.Option(
        None, "--threads", "-t", min=1,
        help="Compute threads. Default: the number of physical CPU cores.",
        show_default=False,
    ),
    ctx: int | None = typer.Option(
        None, "--ctx", "-c", min=1,
        help="Context size in tokens (prompt + generated; sets the KV cache's memory). "
        "Default: just enough for the prompt and -n, up to the model's context length.",
        show_default=False,
    ),
    special: bool = typer.Option(
        False, "--special",
        help="Parse special-token text in the prompt (e.g. <|im_start|>) into their ids.",
    ),
    echo: bool = typer.Option(False, "--echo", help="Print the prompt before the completion."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print only the generated text (no progress or statistics)."
    ),
    kv_type: str = typer.Option(
        "f16", "--kv-type", help="KV cache type: f16, q8_0 (half of f16's memory) or f32."
    ),
) -> None:
    """Continue PROMPT with MODEL, streaming the text to stdout (statistics go to stderr)."""
    try:
        _generate(model, prompt, n, temperature, seed, threads, ctx, special, echo, quiet,
                  kv_type)
    except KeyboardInterrupt:
        sys.stdout.flush()
        _err("interrupted")
        raise typer.Exit(130) from None


def _generate(model, prompt, n, temperature, seed, threads, ctx, special, echo, quiet,
              kv_type="f16") -> None:
    from cpullm import hub

    path = hub.resolve(model)
    say = (lambda msg: None) if quiet else _err

    from cpullm.generate import GenerationStats, StreamDecoder
    from cpullm.generate import generate as run_generate
    from cpullm.gguf.reader import GGUFFile
    from cpullm.model import Model
    from cpullm.tokenizer import Tokenizer

    f = GGUFFile(path)
    tok = Tokenizer.for_file(f)
    ids = tok.encode(prompt, parse_special=special)
    if not ids:
        raise CpullmError("the prompt is empty (and the model adds no BOS token)")
    need = len(ids) + n
    m = Model(f, n_ctx=ctx or need, n_threads=threads or physical_cores(), kv_type=kv_type)
    m.tokenizer = tok  # built once
    if ctx and ctx > m.config.context_length:
        say(f"note: --ctx {ctx} is more than the model's context length "
            f"{m.config.context_length}; using {m.n_ctx}")

    stats = GenerationStats()
    # checks the arguments (context size) now, runs nothing until iterated
    gen = run_generate(m, ids, n, temperature=temperature, seed=seed, stats=stats)

    # The compiled forward step: compiled on the first run, else loaded from numba's
    # cache; done before generation so that the statistics measure generation only.
    compiled = _kernels_cached()
    if not compiled:
        say("compiling kernels (first run only, 20-60 s)...")
    t0 = time.perf_counter()
    m.load_kernels()
    dt = time.perf_counter() - t0
    if not compiled or dt > 5:
        say(f"compiled in {dt:.1f} s")

    dec = StreamDecoder(tok, at_start=False)
    out = sys.stdout
    interrupted = False
    try:
        if echo:
            out.write(prompt)
            out.flush()
        try:
            for tid in gen:
                piece = dec.push(tid)
                if piece:
                    out.write(piece)
                    out.flush()
        except KeyboardInterrupt:
            interrupted = True
        out.write(dec.flush() + "\n")
        out.flush()
    except BrokenPipeError:  # e.g. `cpullm generate ... | head -c 20`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        raise typer.Exit(0) from None
    finally:
        if not quiet:
            _print_stats(stats)
    if interrupted:
        raise KeyboardInterrupt


def _print_stats(s) -> None:
    parts = [f"prompt {s.prompt_tokens} tokens"]
    if s.prefill_s > 0:
        parts[0] += f" ({s.prefill_tps:.1f} tok/s)"
    gen = f"generated {s.generated} tokens"
    if s.decode_evals:
        gen += f" ({s.decode_tps:.1f} tok/s)"
    parts.append(gen)
    if s.stop_reason == "eos":
        parts.append("stopped at end of sequence")
    _err("; ".join(parts))


# -- bench ----------------------------------------------------------------------------------


@app.command()
def bench(
    model: str = typer.Argument(..., help=MODEL_HELP, show_default=False),
    n_prompt: int = typer.Option(
        512, "-p", "--n-prompt", min=0,
        help="Prompt-processing test: tokens evaluated as one prompt (0 skips the test).",
    ),
    n_gen: int = typer.Option(
        128, "-n", "--n-gen", min=0,
        help="Generation test: tokens decoded one at a time (0 skips the test).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", "-t", min=1,
        help="Compute threads. Default: the number of physical CPU cores.",
        show_default=False,
    ),
    reps: int = typer.Option(5, "-r", "--reps", min=1, help="Measured runs of each test."),
    json_out: bool = typer.Option(
        False, "--json", help="Print a JSON array (one object per test) instead of a table."
    ),
    against: str | None = typer.Option(
        None, "--against", help="Path to a llama-bench executable: run it on the same file, "
        "tests and threads, alternating with cpullm, and print the ratio.", show_default=False,
    ),
) -> None:
    """Measure prompt processing (ppN) and generation (tgN) speed in tokens/s, like
    llama-bench. Each test runs once as an uncounted warm-up, then REPS times."""
    from cpullm import hub
    from cpullm.bench import bench_against, format_table, run_bench

    path = hub.resolve(model)
    progress = None if json_out else _err
    if against:
        results = bench_against(path, against, n_prompt=n_prompt, n_gen=n_gen,
                                threads=threads or physical_cores(), reps=reps,
                                progress=progress)
    else:
        results = run_bench(
            path, n_prompt=n_prompt, n_gen=n_gen, threads=threads or physical_cores(),
            reps=reps, progress=progress,
        )
    if json_out:
        import json

        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(format_table(results))


# -- convert --------------------------------------------------------------------------------


@app.command()
def convert(
    src: str = typer.Argument(
        ..., help="Checkpoint folder: Hugging Face (config.json + model*.safetensors) or "
        "Mistral native (params.json + consolidated*.safetensors).", show_default=False,
    ),
    out: str = typer.Option(..., "-o", "--out", help="Output .gguf file.", show_default=False),
    qtype: str = typer.Option(
        "q8_0", "--type", help="Weight type: q4_0, q4_1, q8_0, f16, bf16 or f32."
    ),
    layout: str | None = typer.Option(
        None, "--layout", help="Force 'hf' or 'native' when the folder holds both.",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Convert a safetensors checkpoint into one GGUF file (streaming, bounded memory)."""
    from converter.__main__ import run

    run(src, out, qtype, layout=layout, quiet=quiet)


# -- chat, pull, models ---------------------------------------------------------------------

CHAT_DEFAULT_CTX = 4096  # the KV cache's size unless --ctx (at most the model's own)


@app.command()
def chat(
    model: str = typer.Argument(
        "smollm2", help=MODEL_HELP + " Default: smollm2.", show_default=False
    ),
    system: str | None = typer.Option(
        None, "--system", help="System prompt (default: the chat template's own, if any).",
        show_default=False,
    ),
    n: int | None = typer.Option(
        None, "-n", "--max-tokens", min=1,
        help="Most tokens per reply. Default: until the model ends its turn or the context "
        "is full.", show_default=False,
    ),
    temperature: float = typer.Option(
        0.8, "--temperature", "-T", min=0.0, help="Sampling temperature (0: greedy)."
    ),
    top_k: int = typer.Option(40, "--top-k", min=0, help="Keep the K likeliest tokens (0: off)."),
    top_p: float = typer.Option(
        0.95, "--top-p", min=0.0, max=1.0, help="Nucleus sampling: keep tokens up to this "
        "total probability (1: off)."
    ),
    min_p: float = typer.Option(
        0.05, "--min-p", min=0.0, max=1.0,
        help="Drop tokens less likely than MIN_P x the likeliest (0: off).",
    ),
    repeat_penalty: float = typer.Option(
        1.0, "--repeat-penalty", min=0.0, help="Penalize recently seen tokens (1: off)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", "-s", min=0, help="Random seed (same seed, same replies).",
        show_default=False,
    ),
    threads: int | None = typer.Option(
        None, "--threads", "-t", min=1,
        help="Compute threads. Default: the number of physical CPU cores.", show_default=False,
    ),
    ctx: int | None = typer.Option(
        None, "--ctx", "-c", min=16,
        help=f"Context size in tokens (the whole conversation). Default: "
        f"{CHAT_DEFAULT_CTX}, or the model's context length if smaller.", show_default=False,
    ),
    template: str | None = typer.Option(
        None, "--template",
        help="Use a built-in chat format instead of the file's: chatml, mistral-v1, "
        "mistral-v3, mistral-tekken.", show_default=False,
    ),
    kv_type: str = typer.Option(
        "f16", "--kv-type", help="KV cache type: f16, q8_0 (half of f16's memory, for long "
        "contexts), or f32.",
    ),
) -> None:
    """Talk with MODEL: an interactive chat with streamed replies. Type /help inside.

    A conversation longer than the context slides: the oldest tokens after the system
    prompt are dropped (the stats line says so) and the chat goes on."""
    from cpullm import hub
    from cpullm.chat import ChatSession, repl
    from cpullm.model import Model
    from cpullm.sampler import SamplingParams

    path = hub.resolve(model)
    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=max(top_p, 1e-6), min_p=min_p,
        repeat_penalty=max(repeat_penalty, 1e-6), seed=seed,
    )
    from cpullm.gguf.reader import GGUFFile

    f = GGUFFile(path)
    n_ctx = _fit_context(f, ctx or CHAT_DEFAULT_CTX, kv_type, explicit=ctx is not None)
    m = Model(f, n_ctx=n_ctx, n_threads=threads or physical_cores(), kv_type=kv_type)
    session = ChatSession(m, system=system, params=params, template=template, max_tokens=n)
    compiled = _kernels_cached()
    if not compiled:
        _err("compiling kernels (first run only, 20-60 s)...")
    m.load_kernels()
    _err(f"{path.name}: context {m.n_ctx} tokens, chat template {session.template.name}. "
         "/help for commands, Ctrl-D to quit.")
    repl(session)


def _fit_context(f, want: int, kv_type: str, explicit: bool) -> int:
    """``want`` tokens of context, at most the model's own length and at most what fits in
    half of the memory available now (a 128k NeMo context in f16 is 20 GiB); says so."""
    from cpullm.config import ModelConfig
    from cpullm.model import KV_BYTES_PER_VALUE

    if kv_type not in KV_BYTES_PER_VALUE:
        raise CpullmError(f"--kv-type must be one of {', '.join(KV_BYTES_PER_VALUE)}")
    cfg = ModelConfig.from_metadata(f.metadata, vocab_size=f.info("token_embd.weight").shape[0])
    n = min(want, cfg.context_length)
    if explicit and want > cfg.context_length:
        _err(f"note: --ctx {want} is more than the model's context length "
             f"{cfg.context_length}; using {n}")
    per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * KV_BYTES_PER_VALUE[kv_type]
    try:
        with open("/proc/meminfo") as mi:
            avail = next(int(x.split()[1]) * 1024 for x in mi if x.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        return n
    fit = max(256, int(avail * 0.5 // per_token))
    if n > fit:
        _err(f"note: a {n}-token {kv_type} KV cache would need "
             f"{n * per_token / 2**30:.1f} GiB; using {fit} tokens (--kv-type q8_0 halves it)")
        n = fit
    return n


@app.command()
def pull(
    name: str = typer.Argument(..., help="A registry model name (see `cpullm models`).",
                               show_default=False),
) -> None:
    """Download a registry model into the cache (once; checked against its sha256)."""
    from cpullm import hub

    path = hub.ensure(name)
    print(path)


@app.command()
def models() -> None:
    """List the registry's models and the model files in the cache."""
    from cpullm import hub

    files = hub.cached()
    names = {p.name for p in files}
    print(f"cache: {hub.models_dir()}")
    width = max(len(k) for k in hub.REGISTRY)
    for key, e in sorted(hub.REGISTRY.items()):
        state = "cached" if e.filename in names else "not cached (cpullm pull " + key + ")"
        print(f"  {key:<{width}}  {e.description}  [{state}]")
    known = {e.filename for e in hub.REGISTRY.values()}
    for p in files:
        if p.name not in known:
            print(f"  {p.name}  ({_human_bytes(p.stat().st_size)})")


# -- entry point ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console entry point: CpullmError becomes one ``error:`` line and exit status 1."""
    try:
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    try:
        app(args=argv, prog_name="cpullm")
    except CpullmError as e:
        sys.stdout.flush()
        _err(f"error: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        _err("\ninterrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
