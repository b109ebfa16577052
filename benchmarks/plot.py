"""Plot docs/bench-results.json (from benchmarks/compare.py) as docs/benchmarks.png.

    pip install 'cpullm[bench]'      # matplotlib
    python benchmarks/plot.py [docs/bench-results.json] [-o docs/benchmarks.png]

One panel per test kind (prompt processing, generation): tokens/s of cpullm and of
llama.cpp per file, median of the reps, with the ratio written above each pair.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default="docs/bench-results.json")
    ap.add_argument("-o", default="docs/benchmarks.png")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.results).read_text())
    rows = data["results"]
    kinds = [("pp", "prompt processing"), ("tg", "generation")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (kind, title) in zip(axes, kinds, strict=False):
        sel = [r for r in rows if r["test"].startswith(kind)]
        labels = [f"{r['file'].replace('.gguf', '')}\n{r['test']}" for r in sel]
        xs = range(len(sel))
        w = 0.38
        a = [r["cpullm_median"] for r in sel]
        b = [r["llama_cpp_median"] or 0 for r in sel]
        ax.bar([x - w / 2 for x in xs], a, w, label="cpullm", color="#3b7dd8")
        ax.bar([x + w / 2 for x in xs], b, w, label="llama.cpp", color="#999999")
        for x, r, h in zip(xs, sel, [max(p, q) for p, q in zip(a, b, strict=False)], strict=False):
            if r.get("ratio"):
                ax.annotate(f"{r['ratio']:.2f}x", (x, h), ha="center", va="bottom", fontsize=9)
        ax.set_yscale("log")
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_ylabel("tokens/s (median, log scale)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"cpullm vs llama.cpp, {data.get('machine', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.o, dpi=110)
    print(f"wrote {args.o}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
