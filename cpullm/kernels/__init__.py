"""numba kernels. Everything here is compiled with ``cache=True``; each kernel has a
plain-numpy twin in :mod:`cpullm.reference` that the tests compare against.

numba keys a cached function on its own file only: when ``ops.py`` changes, the cached
``forward`` (in ``forward.py``) would still hold the old ``ops`` code inside it. So on
import we hash every kernel source file and, when the hash differs from the one stored
beside the cache, drop the whole kernel cache before anything is loaded from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _invalidate_stale_cache() -> None:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for src in sorted(here.glob("*.py")):
        digest.update(src.name.encode() + b"\0" + src.read_bytes())
    stamp = digest.hexdigest()
    cache = here / "__pycache__"
    stamp_file = cache / "kernels.sha256"
    try:
        if stamp_file.read_text() == stamp:
            return
    except OSError:
        pass
    try:
        for f in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp_file.write_text(stamp)
    except OSError:  # read-only install: numba falls back to its own cache dir logic
        pass


_invalidate_stale_cache()
