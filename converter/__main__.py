"""``python -m converter SRC -o OUT.gguf --type q4_0`` (same as ``cpullm convert``)."""

from __future__ import annotations

import argparse
import sys

from converter.recipes import RECIPES
from cpullm.errors import CpullmError


def run(src: str, out: str, recipe: str, layout: str | None = None, name: str | None = None,
        quiet: bool = False) -> None:
    """Convert and print the summary (to stderr); shared with ``cpullm convert``."""
    from converter.convert import convert

    say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    summary = convert(src, out, recipe, layout=layout, name=name, progress=not quiet, log=say)
    say(summary.format())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m converter",
        description="Convert a safetensors checkpoint folder (Hugging Face or Mistral layout) "
        "into one GGUF file.",
    )
    ap.add_argument("src", help="checkpoint folder")
    ap.add_argument("-o", "--out", required=True, help="output .gguf file")
    ap.add_argument("--type", dest="recipe", default="q8_0", choices=RECIPES,
                    help="weight type (default q8_0)")
    ap.add_argument("--layout", choices=("hf", "native"), default=None,
                    help="force a layout when the folder holds both")
    ap.add_argument("--name", default=None, help="general.name (default: the folder name)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    a = ap.parse_args(argv)
    try:
        run(a.src, a.out, a.recipe, a.layout, a.name, a.quiet)
    except CpullmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; no output written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
