"""Process groups shared by the distributed tests: one 2-rank and one 3-rank gloo group run
every scenario of the session (``workers.two_ranks`` / ``workers.three_ranks``), so the
process start-up is paid once per world size."""

from __future__ import annotations

import pytest

from tests.distributed.harness import run_ranks
from tests.distributed.workers import three_ranks, two_ranks
from tests.helpers.synth import raw_async_dataset


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("raw"), n_train=1024, n_eval=256)


@pytest.fixture(scope="session")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="session")
def two(data, tmp):
    return run_ranks(two_ranks, 2, data, str(tmp), timeout=300)


@pytest.fixture(scope="session")
def three(two, data, tmp):
    return run_ranks(three_ranks, 3, data, str(tmp), timeout=300)
