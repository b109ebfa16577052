"""Start-up path: kernels loaded from numba's cache without its registry refresh
(cpullm.kernels.quickload) must give the same numbers as numba's own loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from tinymodel import make_tiny_gguf

from cpullm.gguf import GGMLType

SCRIPT = """
import json, sys
import numpy as np
from cpullm.gguf.reader import GGUFFile
from cpullm.kernels import quickload
from cpullm.model import Model

m = Model(GGUFFile(sys.argv[1]), n_ctx=16, n_threads=1)
m.load_kernels()
prefill = m.eval([1, 5, 9, 2], all_logits=True).copy()
step = m.eval([7]).copy()
print(json.dumps({"quick": quickload.quick_loads,
                  "refreshed": "numba.np.arrayobj" in sys.modules,
                  "logits": np.concatenate([prefill.ravel(), step]).tolist()}))
"""


def _run(path, quick: bool) -> dict:
    env = dict(os.environ, CPULLM_NUMBA_QUICKLOAD="1" if quick else "0")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_quick_cache_load_gives_numbas_results(tmp_path):
    path = make_tiny_gguf(tmp_path / "tiny.gguf", GGMLType.Q4_0)
    slow = _run(path, quick=False)  # compiles here if no cache holds this signature yet
    fast = _run(path, quick=True)
    assert slow["quick"] == []
    assert fast["quick"] == ["forward"], "the kernel was not loaded through the quick path"
    # numba's own loader imports its whole implementation registry; the quick one does not
    assert slow["refreshed"] and not fast["refreshed"]
    np.testing.assert_array_equal(np.array(fast["logits"]), np.array(slow["logits"]))
