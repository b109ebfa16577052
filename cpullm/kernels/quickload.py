"""Load a compiled kernel from numba's on-disk cache without numba's registry refresh.

Before numba loads a cached function it "refreshes" its target context: it imports and
registers every typing and lowering implementation numba has (~100 modules, 0.1-0.3 s on
a laptop core). Those registries are needed to *compile*, not to *load*: a cached
library is finished machine code whose only outside references are numba's runtime
(NRT) symbols, which :func:`numba.core.runtime.rtsys.initialize` provides. For
``cpullm generate`` that refresh is the largest single item before the first token.

:func:`enable` gives one dispatcher a cache loader that initializes the runtime and
loads. A cache miss returns ``None`` as before, and numba then compiles through its
normal pipeline, which refreshes the registries itself. Anything unexpected (a numba
whose internals differ) leaves the dispatcher on numba's own path.
``CPULLM_NUMBA_QUICKLOAD=0`` turns it off.
"""

from __future__ import annotations

import os
from typing import Any

#: dispatchers whose last cache load went through the quick path (for tests)
quick_loads: list[str] = []


def enable(dispatcher: Any) -> bool:
    """Install the quick cache loader on ``dispatcher`` (a ``numba`` ``CPUDispatcher``
    compiled with ``cache=True``). Returns whether it was installed."""
    if os.environ.get("CPULLM_NUMBA_QUICKLOAD", "1") == "0":
        return False
    try:
        from numba.core.runtime import rtsys

        cache = dispatcher._cache
        load = cache._load_overload
        guard = cache._guard_against_spurious_io_errors
    except (ImportError, AttributeError):
        return False
    name = getattr(dispatcher, "__name__", "?")

    def load_overload(sig, target_context):
        rtsys.initialize(target_context)  # the NRT symbols the cached code links to
        with guard():
            cres = load(sig, target_context)
            if cres is not None:
                quick_loads.append(name)
            return cres
        return None  # the guard swallowed an I/O error: numba compiles instead

    cache.load_overload = load_overload
    return True
