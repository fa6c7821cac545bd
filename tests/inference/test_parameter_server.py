"""Hierarchical parameter server: stacking, fill on miss, model folders, ps.json parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from terarec.enums import DatabaseOverflowPolicy_t, DatabaseType_t, EmbeddingCacheType_t
from terarec.errors import ConfigError, DataError, NotSupportedError
from terarec.inference import (
    HPS,
    InferenceParams,
    PersistentDatabaseParams,
    UpdateSourceParams,
    VolatileDatabaseParams,
    parse_ps_json,
    ps_config_for,
    read_sparse_model,
    write_sparse_model,
)


def _params(folders: list[Path], **kw) -> InferenceParams:
    base = dict(model_name="m", max_batchsize=64, hit_rate_threshold=0.9, dense_model_file="",
                sparse_model_files=[str(f) for f in folders], use_gpu_embedding_cache=True,
                cache_size_percentage=0.1, i64_input_key=True,
                embedding_vecsize_per_table=[8] * len(folders),
                default_value_for_each_table=[0.5] * len(folders))
    base.update(kw)
    return InferenceParams(**base)


@pytest.fixture
def folder(tmp_path, table) -> Path:
    return write_sparse_model(tmp_path / "m0_sparse_100.model", *table)


def _check(hps: HPS, table, model: str = "m") -> None:
    keys, vecs = table
    q = np.concatenate([keys[::-1], np.array([77_777_777_777], np.int64)])
    for _ in range(2):  # second round hits the cache / filled tiers
        got = hps.lookup(q, model, 0)
        assert got.dtype == np.float32 and got.shape == (501, 8)
        np.testing.assert_array_equal(got[:-1], vecs[::-1])
        np.testing.assert_array_equal(got[-1], np.full(8, 0.5, np.float32))


@pytest.mark.parametrize("volatile", ["hash_map", "parallel_hash_map", "disabled"])
@pytest.mark.parametrize("persistent", ["disabled", "rocks_db"])
def test_stacks_match_oracle(volatile, persistent, folder, table, tmp_path) -> None:
    if persistent == "rocks_db":
        pytest.importorskip("rocksdict")
    p = _params([folder], volatile_db=VolatileDatabaseParams(type=volatile, num_partitions=3),
                persistent_db=PersistentDatabaseParams(backend=persistent,
                                                       path=str(tmp_path / "rdb")))
    hps = HPS(ps_config_for([p]))
    _check(hps, table)
    hps.close()


@pytest.mark.redis
def test_redis_stack(redis_address, folder, table, tmp_path) -> None:
    p = _params([folder], model_name="redis_model",
                volatile_db=VolatileDatabaseParams(type="redis", address=redis_address,
                                                   num_partitions=4),
                persistent_db=PersistentDatabaseParams(backend="rocksdb",
                                                       path=str(tmp_path / "rdb")))
    hps = HPS(ps_config_for([p]))
    _check(hps, table, "redis_model")


def test_miss_fills_upper_tiers(folder, table, tmp_path) -> None:
    pytest.importorskip("rocksdict")
    keys, vecs = table
    p = _params([folder], volatile_db=VolatileDatabaseParams(type="hash_map",
                                                             initial_cache_rate=0.0),
                persistent_db=PersistentDatabaseParams(backend="rocks_db",
                                                       path=str(tmp_path / "rdb")))
    hps = HPS(ps_config_for([p]))
    stack = hps.table("m", 0)
    assert stack.volatile.size() == 0 and stack.persistent.size() == 500
    cache = hps.cache("m", 0)
    cache.evict(keys)
    np.testing.assert_array_equal(hps.lookup(keys[:30], "m", 0), vecs[:30])
    cache.wait_pending()
    assert stack.volatile.lookup(keys[:30])[1].all()
    assert cache.lookup(keys[:30])[1].all()
    assert stack.volatile.size() == 30


def test_volatile_eviction_bound(folder, table) -> None:
    keys, vecs = table
    p = _params([folder], use_gpu_embedding_cache=False,
                volatile_db=VolatileDatabaseParams(type="hash_map", num_partitions=2,
                                                   overflow_margin=100,
                                                   overflow_policy="evict_oldest"))
    hps = HPS(ps_config_for([p]))
    assert hps.table("m", 0).volatile.size() <= 200
    assert hps.cache("m", 0) is None


def test_cache_size_from_percentage(folder) -> None:
    hps = HPS(ps_config_for([_params([folder], cache_size_percentage=0.2)]))
    cache = hps.cache("m", 0)
    assert cache.capacity == 100 and cache.size() == 100  # init_ec fills it


def test_sparse_folder_errors(tmp_path, table) -> None:
    keys, vecs = table
    with pytest.raises(DataError, match="not found"):
        read_sparse_model(tmp_path / "nope")
    bad = write_sparse_model(tmp_path / "bad", keys, vecs)
    (bad / "emb_vector").write_bytes((bad / "emb_vector").read_bytes()[:-4])
    with pytest.raises(DataError, match="emb_vector"):
        read_sparse_model(bad, 8)
    with pytest.raises(DataError, match="emb_vector"):
        read_sparse_model(bad)
    (bad / "key").write_bytes(b"123")
    with pytest.raises(DataError, match="'key'|key"):
        read_sparse_model(bad)
    (bad / "emb_vector").unlink()
    with pytest.raises(DataError, match="missing"):
        read_sparse_model(bad)
    good = write_sparse_model(tmp_path / "good", keys, vecs)
    k, v = read_sparse_model(good)
    assert v.shape == (500, 8)
    with pytest.raises(DataError, match="embedding_vec_size=16"):
        read_sparse_model(good, 16)


def test_params_defaults_and_required() -> None:
    with pytest.raises(ConfigError, match="hit_rate_threshold"):
        InferenceParams(model_name="m", max_batchsize=1)
    p = InferenceParams("m", 64, 0.9, "d.model", ["s.model"], 0, True, 0.2, True)
    assert p.deployed_devices == [0] and p.thread_pool_size == 16
    assert p.embedding_cache_type is EmbeddingCacheType_t.Dynamic
    assert p.maxnum_catfeature_query_per_table_per_sample == [26]
    assert p.volatile_db.type is DatabaseType_t.parallel_hash_map
    assert p.volatile_db.overflow_margin == 2**64 - 1
    assert p.persistent_db.backend is DatabaseType_t.disabled


def test_kafka_only_errors_when_enabled(folder) -> None:
    src = UpdateSourceParams(type="kafka_mq")
    p = _params([folder], update_source=src)
    with pytest.raises(NotSupportedError, match="Kafka"):
        HPS(ps_config_for([p]))
    assert UpdateSourceParams().type.name == "null"


def test_ps_json_aliases(tmp_path, folder, table) -> None:
    doc = {
        "supportlonglong": True,
        "volatile_db": {"type": "hashmap", "num_partitions": 2, "overflow_margin": 10000,
                        "overflow_policy": "evict_least_used"},
        "persistent_db": {"type_is_ignored": 1, "backend": "disabled"},
        "update_source": {"type": "null"},
        "models": [{"model": "wdl", "sparse_files": [folder.name], "dense_file": "d.model",
                    "network_file": "g.json", "gpucacheper": 0.3, "gpucache": True,
                    "hit_rate_threshold": 0.8, "embedding_vecsize_per_table": [8],
                    "default_value_for_each_table": [0.5], "deployed_device_list": [0],
                    "max_batch_size": 128, "embedding_cache_type": "dynamic"}],
    }
    path = tmp_path / "ps.json"
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="type_is_ignored"):
        cfg = parse_ps_json(path)
    p = cfg.model("wdl")
    assert cfg.volatile_db.type is DatabaseType_t.hash_map
    assert cfg.volatile_db.overflow_policy is DatabaseOverflowPolicy_t.evict_least_used
    assert p.cache_size_percentage == 0.3 and p.max_batchsize == 128 and p.i64_input_key
    assert p.sparse_model_files == [str(folder)]  # resolved relative to ps.json
    for alias, name in [("parallel_hashmap", "parallel_hash_map"), ("redis", "redis_cluster")]:
        assert VolatileDatabaseParams(type=alias).type.name == name
    assert PersistentDatabaseParams(backend="rocksdb").backend is DatabaseType_t.rocks_db
    assert UpdateSourceParams(type="kafka_mq").type.name == "kafka_message_queue"
    with pytest.raises(ConfigError):
        VolatileDatabaseParams(type="hashmapp")
    with pytest.warns(UserWarning):
        _check(HPS(str(path)), table, "wdl")


def test_ps_json_errors(tmp_path) -> None:
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ConfigError, match="valid JSON"):
        parse_ps_json(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="models"):
        parse_ps_json({"supportlonglong": True})
    with pytest.raises(ConfigError, match="sparse_files"):
        parse_ps_json({"models": [{"model": "x"}]})
