"""Fixtures of the kernel tests (helpers and backends live in kernel_helpers.py)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch
from kernel_helpers import BACKENDS, K


@pytest.fixture(params=BACKENDS)
def dev(request: pytest.FixtureRequest) -> Iterator[torch.device]:
    """The device to test on, with the backend forced for the test's duration."""
    device, triton = request.param
    common = importlib.import_module("terarec.kernels._common")
    common.POISON = True
    try:
        with K.use_triton(triton):
            assert K.backend_for(torch.empty(0, device=device)) == ("triton" if triton else "torch")
            yield torch.device(device)
    finally:
        common.POISON = False
