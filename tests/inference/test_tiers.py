"""Each tier alone against a dict oracle; eviction bounds of the host-memory table."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import pytest

from terarec.inference.tiers import EmbeddingCache, EmbeddingTier, HostMemoryTier

TierMaker = Callable[[int], EmbeddingTier]


def _rocks(tmp_path) -> TierMaker:
    pytest.importorskip("rocksdict")
    from terarec.inference.tiers.persistent import RocksDBTier

    return lambda dim: RocksDBTier(f"hps_et.m.{uuid.uuid4().hex}", dim, str(tmp_path / "db"))


def _redis(address: str) -> TierMaker:
    from terarec.inference.tiers.redis_tier import RedisTier, connect

    client = connect(address)
    return lambda dim: RedisTier(f"hps_et.m.{uuid.uuid4().hex}", dim, client, num_partitions=3)


@pytest.fixture(params=["hash_map", "parallel_hash_map", "rocks_db", "redis_cluster", "cache"])
def make(request, tmp_path) -> TierMaker:
    kind = request.param
    if kind == "hash_map":
        return lambda dim: HostMemoryTier("t", dim, num_partitions=1)
    if kind == "parallel_hash_map":
        return lambda dim: HostMemoryTier("t", dim, num_partitions=4, parallel=True)
    if kind == "rocks_db":
        return _rocks(tmp_path)
    if kind == "redis_cluster":
        if "redis" not in request.keywords:
            request.applymarker(pytest.mark.redis)
        return _redis(request.getfixturevalue("redis_address"))
    return lambda dim: EmbeddingCache("t", dim, capacity=10_000)


def test_matches_dict_oracle(make: TierMaker, table) -> None:
    keys, vecs = table
    tier = make(8)
    tier.insert(keys, vecs)
    oracle = dict(zip(keys.tolist(), vecs))
    # overwrite some rows, as a later model version would
    tier.insert(keys[:50], vecs[:50] + 1.0)
    for k, v in zip(keys[:50].tolist(), vecs[:50] + 1.0):
        oracle[k] = v
    query = np.concatenate([keys[::-1], np.array([123456789012, -5], np.int64), keys[:3]])
    got, found = tier.lookup(query)
    assert found.tolist() == [k in oracle for k in query.tolist()]
    for k, row, f in zip(query.tolist(), got, found):
        np.testing.assert_array_equal(row, oracle[k] if f else np.zeros(8, np.float32))
    assert tier.size() == len(oracle)
    dk, dv = tier.dump()
    assert sorted(dk.tolist()) == sorted(oracle)
    for k, v in zip(dk.tolist(), dv):
        np.testing.assert_array_equal(v, oracle[k])
    assert tier.evict(keys[:10]) == 10
    assert not tier.lookup(keys[:10])[1].any()
    assert tier.size() == len(oracle) - 10


def test_torch_keys_and_empty(make: TierMaker, table) -> None:
    import torch

    keys, vecs = table
    tier = make(8)
    tier.load(torch.from_numpy(keys[:20]), torch.from_numpy(vecs[:20]))
    got, found = tier.lookup(torch.from_numpy(keys[:20]))
    assert found.all()
    np.testing.assert_array_equal(got, vecs[:20])
    got, found = tier.lookup(np.empty(0, np.int64))
    assert got.shape == (0, 8) and found.shape == (0,)


@pytest.mark.parametrize("policy", ["evict_random", "evict_least_used", "evict_oldest"])
def test_host_overflow_bounds(policy: str, table) -> None:
    keys, vecs = table
    tier = HostMemoryTier("t", 8, num_partitions=2, overflow_margin=40, overflow_policy=policy,
                          overflow_resolution_target=0.5)
    for lo in range(0, 500, 25):
        tier.insert(keys[lo:lo + 25], vecs[lo:lo + 25])
        assert tier.size() <= tier.capacity == 80
    got, found = tier.lookup(keys)
    np.testing.assert_array_equal(got[found], vecs[found])


def test_host_oldest_keeps_recent(table) -> None:
    keys, vecs = table
    tier = HostMemoryTier("t", 8, num_partitions=1, overflow_margin=100,
                          overflow_policy="evict_oldest", overflow_resolution_target=0.5)
    tier.insert(keys[:100], vecs[:100])
    tier.lookup(keys[:10])  # touch 10 rows
    tier.insert(keys[100:101], vecs[100:101])  # 101 > margin -> down to 50
    assert tier.size() == 50
    assert tier.lookup(keys[:10])[1].all()
    assert tier.lookup(keys[100:101])[1].all()


def test_host_least_used_keeps_hot(table) -> None:
    keys, vecs = table
    tier = HostMemoryTier("t", 8, overflow_margin=100, overflow_policy="evict_least_used",
                          overflow_resolution_target=0.5)
    tier.insert(keys[:100], vecs[:100])
    for _ in range(3):
        tier.lookup(keys[50:60])
    tier.insert(keys[100:101], vecs[100:101])
    assert tier.lookup(keys[50:60])[1].all()


@pytest.mark.redis
def test_redis_overflow(redis_address: str, table) -> None:
    from terarec.inference.tiers.redis_tier import RedisTier, connect

    keys, vecs = table
    for policy in ("evict_random", "evict_oldest"):
        tier = RedisTier(f"hps_et.o.{policy}", 8, connect(redis_address), num_partitions=2,
                         overflow_margin=30, overflow_policy=policy,
                         overflow_resolution_target=0.5)
        tier.clear()
        tier.insert(keys[:200], vecs[:200])
        assert tier.size() <= 60
        got, found = tier.lookup(keys[:200])
        np.testing.assert_array_equal(got[found], vecs[:200][found])
