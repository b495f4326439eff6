from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from .helm import CI_VALUES, Manifest, render


@pytest.fixture(scope="session")
def ci_renders() -> dict[str, list[Manifest]]:
    """Every ci/*-values.yaml scenario rendered once (in parallel: each helm run is a process)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda path: render([path]), CI_VALUES)
        return {path.name: manifests for path, manifests in zip(CI_VALUES, results, strict=True)}
