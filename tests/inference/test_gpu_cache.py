"""Device embedding cache: hit statistics, hit-rate threshold, eviction policies, refresh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from terarec.inference.tiers import EmbeddingCache, HostMemoryTier


@pytest.fixture
def source(table) -> HostMemoryTier:
    keys, vecs = table
    tier = HostMemoryTier("t", 8)
    tier.insert(keys, vecs)
    return tier


def test_query_fills_and_counts(source, table) -> None:
    keys, vecs = table
    cache = EmbeddingCache("t", 8, capacity=100, source=source, hit_rate_threshold=1.01)
    out = cache.query(keys[:50]).numpy()
    np.testing.assert_array_equal(out, vecs[:50])
    assert cache.hits == 0 and cache.queries == 50 and cache.sync_inserts == 1
    assert cache.size() == 50
    out = cache.query(np.concatenate([keys[:50], keys[:50]])).numpy()
    np.testing.assert_array_equal(out[50:], vecs[:50])
    assert cache.last_hit_rate == 1.0 and cache.hit_rate() == pytest.approx(0.5)


def test_capacity_bound_and_unknown_keys(source, table) -> None:
    keys, vecs = table
    cache = EmbeddingCache("t", 8, capacity=64, source=source, hit_rate_threshold=1.01)
    for lo in range(0, 500, 37):
        out = cache.query(keys[lo:lo + 37]).numpy()
        np.testing.assert_array_equal(out, vecs[lo:lo + 37])
        assert cache.size() <= 64
    out = cache.query(np.array([999_999_999_999], np.int64)).numpy()
    assert (out == 0).all()
    assert not cache.lookup(np.array([999_999_999_999]))[1].any()  # unknown keys not cached


def test_threshold_async_vs_sync(source, table) -> None:
    keys, vecs = table
    cache = EmbeddingCache("t", 8, capacity=200, source=source, hit_rate_threshold=0.5)
    cache.query(keys[:100])  # hit rate 0 < 0.5: synchronous
    assert cache.sync_inserts == 1 and cache.async_inserts == 0 and cache.size() == 100
    # 90 hits + 10 misses: hit rate 0.9 >= 0.5 -> background insertion
    out = cache.query(np.concatenate([keys[:90], keys[100:110]])).numpy()
    np.testing.assert_array_equal(out[90:], vecs[100:110])
    assert cache.async_inserts == 1
    cache.wait_pending()
    assert cache.lookup(keys[100:110])[1].all()


def test_threshold_equal_is_async(source, table) -> None:
    keys, _ = table
    cache = EmbeddingCache("t", 8, capacity=200, source=source, hit_rate_threshold=0.5)
    cache.query(keys[:10])
    cache.query(np.concatenate([keys[:10], keys[10:20]]))  # exactly 0.5
    assert cache.async_inserts == 1
    cache.wait_pending()


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_eviction_policy(policy: str, source, table) -> None:
    keys, vecs = table
    cache = EmbeddingCache("t", 8, capacity=10, source=source, hit_rate_threshold=1.01,
                           policy=policy)
    cache.query(keys[:10])
    for _ in range(3):
        cache.lookup(keys[:5])  # keys 0-4 recent and frequent
    cache.query(keys[10:15])  # must evict 5 rows: keys 5-9
    assert cache.lookup(keys[:5])[1].all()
    assert not cache.lookup(keys[5:10])[1].any()
    assert cache.lookup(keys[10:15])[1].all()


def test_refresh_rereads_source(source, table) -> None:
    keys, vecs = table
    cache = EmbeddingCache("t", 8, capacity=50, source=source, hit_rate_threshold=1.01)
    cache.query(keys[:20])
    source.insert(keys[:20], vecs[:20] * 2)
    source.evict(keys[19:20])
    assert cache.refresh() == 19
    got, found = cache.lookup(keys[:20])
    np.testing.assert_array_equal(got[:19], vecs[:19] * 2)
    assert not found[19]


@pytest.mark.gpu
def test_cuda_matches_cpu(source, table) -> None:
    keys, _ = table
    cpu = EmbeddingCache("t", 8, capacity=100, source=source)
    gpu = EmbeddingCache("t", 8, capacity=100, source=source, device="cuda")
    q = keys[::3]
    torch.testing.assert_close(gpu.query(q).cpu(), cpu.query(q))
