"""Shared fixtures: where the real datasets live, and a skip with a reason when they don't."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs as `pytest -n 2` (pytest-xdist), one worker per core: each worker, and every
    # canon or torchrun process a test starts, computes on one thread, so the two workers do not
    # oversubscribe the cores (OpenMP threads that wait on each other are slower than one).
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_variable] = "1"
    import torch

    torch.set_num_threads(1)


def shared_data_dir() -> Path:
    env = os.environ.get("CANON_SHARED_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real datasets not found at {path} (set CANON_SHARED_DATA to their folder)")
    return path


@pytest.fixture(scope="session")
def mnist_dir(shared_data) -> Path:
    path = shared_data / "mnist"
    if not (path / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST not found in {path}")
    return path
