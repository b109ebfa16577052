"""Checkpoint folders: detect the layout, read the model configuration, index the tensors of
every safetensors file (from their headers alone), and read one tensor at a time.

Two layouts:

* Hugging Face: ``config.json`` (``MistralForCausalLM`` / ``LlamaForCausalLM``) and
  ``model.safetensors`` or shards listed by ``model.safetensors.index.json``;
* Mistral native: ``params.json`` and ``consolidated.safetensors`` (or shards).

Tensors are read through ``safetensors.safe_open(framework="numpy")``, by row ranges, so at
most one slice of one tensor is in memory. BF16 needs ``ml_dtypes`` imported (numpy has no
bfloat16 of its own).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors' loader)
import numpy as np

from converter.errors import ShapeMismatchError, SourceError, UnsupportedError

DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4}
# sizes of dtypes we recognise but cannot convert (for the header's size check)
_OTHER_SIZES = {
    "F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
HF_ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM")
MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class ModelParams:
    """The model's shape, normalized from config.json or params.json."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_eps: float
    sliding_window: int | None
    tied: bool
    name: str = ""
    bos_id: int | None = None
    eos_id: int | None = None


@dataclass(frozen=True)
class TensorRef:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES.get(self.dtype, 0)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"missing file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"cannot read {path}: {e}") from None


def read_header(path: Path) -> dict[str, TensorRef]:
    """Index one safetensors file from its header, checking that every tensor's bytes lie
    inside the file (a truncated download is caught here, before any output is written)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SourceError(
                    f"{path} is truncated (only {size} bytes): not a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise SourceError(
                    f"{path} is truncated or not a safetensors file (header of {n} bytes, "
                    f"file of {size} bytes)"
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise SourceError(f"missing file {path}") from None
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: malformed safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise SourceError(f"{path}: malformed safetensors header")
    data_size = size - 8 - n
    out: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{path}: malformed header entry for tensor {name!r}") from None
        if end > data_size:
            raise SourceError(
                f"{path} is truncated: tensor {name!r} ends at byte {8 + n + end:,} but the "
                f"file has {size:,} bytes"
            )
        itemsize = DTYPE_SIZES.get(dtype, _OTHER_SIZES.get(dtype))
        if itemsize is not None and end - start != math.prod(shape) * itemsize:
            raise SourceError(f"{path}: tensor {name!r} has {end - start} bytes for shape "
                              f"{list(shape)} {dtype}")
        out[name] = TensorRef(name, path, dtype, shape)
    return out


def _index_files(root: Path, files: list[Path]) -> dict[str, TensorRef]:
    tensors: dict[str, TensorRef] = {}
    for p in files:
        for name, ref in read_header(p).items():
            if name in tensors:
                raise SourceError(
                    f"tensor {name!r} is in both {tensors[name].file.name} and {p.name}")
            tensors[name] = ref
    return tensors


def _weight_files(root: Path, stem: str) -> list[Path]:
    """``stem.safetensors``, else the shards named by ``stem.safetensors.index.json``, else
    ``stem-*.safetensors`` / ``stem.*.safetensors`` shards. Empty when none exist."""
    index = root / f"{stem}.safetensors.index.json"
    if index.exists():
        wm = _load_json(index).get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise SourceError(f"{index} has no weight_map")
        files = sorted({str(v) for v in wm.values()})
        for f in files:
            if not (root / f).exists():
                raise SourceError(f"missing file {root / f} (a shard listed in {index.name})")
        return [root / f for f in files]
    single = root / f"{stem}.safetensors"
    if single.exists():
        return [single]
    return sorted(set(root.glob(f"{stem}-*.safetensors")) | set(root.glob(f"{stem}.*.safetensors")))


def _req(cfg: dict, key: str, src: str) -> Any:
    v = cfg.get(key)
    if v is None:
        raise SourceError(f"{src} lacks the required key {key!r}")
    return v


def _hf_params(cfg: dict, root: Path) -> ModelParams:
    src = str(root / "config.json")
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    if archs[0] not in HF_ARCHITECTURES:
        raise UnsupportedError(
            f"unknown architecture {archs[0]!r} in {src}; supported: {', '.join(HF_ARCHITECTURES)}"
        )
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for r in (rope, scaling):
        kind = r.get("rope_type", r.get("type", "default"))
        if kind not in ("default", None):
            raise UnsupportedError(f"RoPE scaling {kind!r} ({src}) is not supported")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise UnsupportedError(f"{key}=true ({src}) is not supported")
    dim = int(_req(cfg, "hidden_size", src))
    n_heads = int(_req(cfg, "num_attention_heads", src))
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    eos = cfg.get("eos_token_id")
    return ModelParams(
        dim=dim,
        n_layers=int(_req(cfg, "num_hidden_layers", src)),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or dim // n_heads),
        ffn_dim=int(_req(cfg, "intermediate_size", src)),
        vocab_size=int(_req(cfg, "vocab_size", src)),
        context_length=int(cfg.get("max_position_embeddings") or 4096),
        rope_theta=float(theta),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        sliding_window=cfg.get("sliding_window"),
        tied=bool(cfg.get("tie_word_embeddings", False)),
        name=root.resolve().name,
        bos_id=cfg.get("bos_token_id"),
        eos_id=eos[0] if isinstance(eos, list) and eos else eos,
    )


def _native_params(cfg: dict, root: Path) -> ModelParams:
    src = str(root / "params.json")
    for key in ("moe", "vision_encoder", "audio_encoder"):
        if cfg.get(key):
            raise UnsupportedError(f"{src} describes a model with {key!r}: not supported")
    dim = int(_req(cfg, "dim", src))
    n_heads = int(_req(cfg, "n_heads", src))
    return ModelParams(
        dim=dim,
        n_layers=int(_req(cfg, "n_layers", src)),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("n_kv_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or dim // n_heads),
        ffn_dim=int(_req(cfg, "hidden_dim", src)),
        vocab_size=int(_req(cfg, "vocab_size", src)),
        context_length=int(cfg.get("max_seq_len") or cfg.get("max_position_embeddings") or 32768),
        rope_theta=float(cfg.get("rope_theta") or 10000.0),
        rms_eps=float(cfg.get("norm_eps", 1e-5)),
        sliding_window=cfg.get("sliding_window"),
        tied=bool(cfg.get("tied_embeddings", False)),
        name=root.resolve().name,
    )


@dataclass
class Checkpoint:
    """A checkpoint folder: layout, parameters and the index of its tensors."""

    root: Path
    layout: str  # "hf" or "native"
    params: ModelParams
    tensors: dict[str, TensorRef]
    files: list[Path] = field(default_factory=list)

    @classmethod
    def open(cls, root: str | Path, layout: str | None = None) -> Checkpoint:
        root = Path(root)
        if not root.exists():
            raise SourceError(f"missing checkpoint folder {root}")
        if not root.is_dir():
            raise SourceError(f"{root} is not a folder (give the checkpoint's folder)")
        hf_files = _weight_files(root, "model") if (root / "config.json").exists() else []
        nat_files = _weight_files(root, "consolidated") if (root / "params.json").exists() else []
        if layout is None:
            if hf_files:
                layout = "hf"
            elif nat_files:
                layout = "native"
            elif (root / "config.json").exists() or (root / "params.json").exists():
                bins = sorted(p.name for p in root.glob("*.bin")) + sorted(
                    p.name for p in root.glob("*.pth"))
                hint = f" ({', '.join(bins[:3])}: PyTorch pickles are not read)" if bins else ""
                raise SourceError(
                    f"missing weights in {root}: no model.safetensors (Hugging Face layout) or "
                    f"consolidated.safetensors (Mistral layout), nor their shards{hint}"
                )
            else:
                raise SourceError(
                    f"missing file: {root} has neither config.json (Hugging Face layout) nor "
                    "params.json (Mistral native layout)"
                )
        if layout == "hf":
            if not hf_files:
                raise SourceError(f"missing file {root / 'model.safetensors'} (or its shards)")
            params = _hf_params(_load_json(root / "config.json"), root)
            files = hf_files
        elif layout == "native":
            if not nat_files:
                raise SourceError(f"missing file {root / 'consolidated.safetensors'} (or shards)")
            params = _native_params(_load_json(root / "params.json"), root)
            files = nat_files
        else:
            raise ValueError(f"layout must be 'hf' or 'native', not {layout!r}")
        tensors = _index_files(root, files)
        return cls(root, layout, params, tensors, files)


class TensorReader:
    """Reads tensors (or row ranges of them) as float32.

    Only the file of the tensor being read stays open: safetensors memory-maps it, and the
    pages read so far count in the process's resident size until the map is dropped, so a
    file is closed as soon as reading moves to another tensor."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}

    def _handle(self, ref: TensorRef):
        h = self._open.get(ref.name)
        if h is None:
            from safetensors import safe_open

            self._open.clear()
            try:
                h = safe_open(str(ref.file), framework="numpy")
            except Exception as e:  # safetensors raises its own SafetensorError
                raise SourceError(f"cannot open {ref.file}: {e}") from None
            self._open[ref.name] = h
        return h

    def read(self, ref: TensorRef, r0: int | None = None, r1: int | None = None) -> np.ndarray:
        """Rows ``r0:r1`` (the whole tensor when None) as a float32 array."""
        if ref.dtype not in DTYPE_SIZES:
            raise UnsupportedError(
                f"tensor {ref.name!r} ({ref.file.name}) has dtype {ref.dtype}; supported: "
                + ", ".join(DTYPE_SIZES)
            )
        h = self._handle(ref)
        try:
            if r0 is None and r1 is None:
                a = h.get_tensor(ref.name)
            else:
                a = h.get_slice(ref.name)[r0:r1]
        except Exception as e:
            raise SourceError(f"cannot read tensor {ref.name!r} from {ref.file}: {e}") from None
        return np.asarray(a).astype(np.float32, copy=False)

    def close(self) -> None:
        self._open.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_shape(ref: TensorRef, expected: tuple[int, ...], gguf_name: str) -> None:
    if ref.shape != tuple(expected):
        raise ShapeMismatchError(
            f"shape mismatch: tensor {ref.name!r} ({ref.file.name}) has shape {list(ref.shape)} "
            f"but the configuration implies {list(expected)} (for {gguf_name})"
        )
