"""terarec.torchrec KeyedJaggedTensor.permute / split / concat (TorchRec semantics): key-wise
regrouping with lengths, values and weights; round trips; errors name the argument."""

from __future__ import annotations

import pytest
import torch

from terarec.errors import ConfigError
from terarec.torchrec import KeyedJaggedTensor

KEYS = ["f0", "f1", "f2", "f3"]
B = 3


def kjt(weighted: bool = True, keys: list[str] | None = None, seed: int = 0
        ) -> KeyedJaggedTensor:
    """Random KJT of ``keys`` (default ``KEYS``) over ``B`` samples, some rows empty."""
    keys = keys or KEYS
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(keys) * B,), generator=g)
    n = int(lengths.sum())
    values = torch.randint(0, 1000, (n,), generator=g)
    weights = torch.rand(n, generator=g) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys, values, lengths, weights=weights)


def as_rows(t: KeyedJaggedTensor) -> dict[str, tuple[list, list | None]]:
    """``{key: (rows of values, rows of weights)}`` via to_dict (the layout-free view)."""
    out = {}
    for k, jt in t.to_dict().items():
        w = jt.to_dense_weights()
        out[k] = ([r.tolist() for r in jt.to_dense()],
                  None if w is None else [r.tolist() for r in w])
    return out


def assert_same(a: KeyedJaggedTensor, b: KeyedJaggedTensor) -> None:
    assert a.keys() == b.keys()
    assert a.stride() == b.stride()
    assert torch.equal(a.values(), b.values())
    assert torch.equal(a.lengths(), b.lengths())
    assert torch.equal(a.offsets(), b.offsets())
    wa, wb = a.weights_or_none(), b.weights_or_none()
    assert (wa is None) == (wb is None)
    if wa is not None:
        assert torch.equal(wa, wb)


# --------------------------------------------------------------------------- permute
def test_permute_reorders_keys_with_lengths_values_weights():
    t = kjt()
    p = t.permute([2, 0, 3, 1])
    assert p.keys() == ["f2", "f0", "f3", "f1"]
    assert p.stride() == B
    before, after, order = as_rows(t), as_rows(p), p.keys()
    assert after == {k: before[k] for k in order}
    assert p.length_per_key() == [t.length_per_key()[i] for i in (2, 0, 3, 1)]
    # values / weights are key-major in the new key order
    want = torch.cat([t[k].values() for k in order])
    assert torch.equal(p.values(), want)
    assert torch.equal(p.weights(), torch.cat([t[k].weights() for k in order]))


def test_permute_with_the_inverse_permutation_is_the_identity():
    t = kjt()
    perm = [3, 1, 0, 2]
    inverse = [perm.index(i) for i in range(len(perm))]
    assert_same(t.permute(perm).permute(inverse), t)
    assert_same(t.permute(list(range(len(KEYS)))), t)
    # an indices tensor (TorchRec's device copy) agreeing with indices is accepted
    assert_same(t.permute(perm, torch.tensor(perm)), t.permute(perm))


def test_permute_subset_and_unweighted():
    t = kjt(weighted=False)
    p = t.permute([3, 1])
    assert p.keys() == ["f3", "f1"]
    assert p.weights_or_none() is None
    assert as_rows(p) == {k: as_rows(t)[k] for k in ("f3", "f1")}
    empty = t.permute([])
    assert empty.keys() == [] and empty.values().numel() == 0 and empty.stride() == B


def test_permute_errors_name_the_argument():
    t = kjt()
    with pytest.raises(ConfigError, match=r"permute\(indices=\.\.\.\).*0\.\.3.*\[4\]"):
        t.permute([0, 4])
    with pytest.raises(ConfigError, match=r"permute\(indices=\.\.\.\).*Received: \[-1\]"):
        t.permute([-1, 0])
    with pytest.raises(ConfigError, match=r"at most once.*Received: \[1\]"):
        t.permute([1, 0, 1])
    with pytest.raises(ConfigError, match=r"permute\(indices=\.\.\.\): expected a list of int"):
        t.permute([0.5])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"permute\(indices_tensor=\.\.\.\).*same indices"):
        t.permute([1, 0], torch.tensor([0, 1]))


# --------------------------------------------------------------------------- split / concat
def test_split_groups_consecutive_keys():
    t = kjt()
    parts = t.split([1, 0, 3])
    assert [p.keys() for p in parts] == [["f0"], [], ["f1", "f2", "f3"]]
    assert all(p.stride() == B for p in parts)
    rows = as_rows(t)
    for p in parts:
        names = p.keys()
        assert as_rows(p) == {k: rows[k] for k in names}
        assert p.weights_or_none() is not None
    assert parts[1].values().numel() == 0


def test_split_then_concat_is_the_original():
    for weighted in (True, False):
        t = kjt(weighted)
        for segments in ([4], [1, 3], [2, 2], [1, 1, 1, 1], [0, 4, 0]):
            assert_same(KeyedJaggedTensor.concat(t.split(segments)), t)


def test_concat_joins_keys_in_order():
    a, b = kjt(keys=["a0", "a1"], seed=1), kjt(keys=["b0"], seed=2)
    c = KeyedJaggedTensor.concat([a, b])
    assert c.keys() == ["a0", "a1", "b0"]
    assert c.stride() == B
    assert as_rows(c) == {**as_rows(a), **as_rows(b)}
    assert torch.equal(c.weights(), torch.cat([a.weights(), b.weights()]))
    assert_same(KeyedJaggedTensor.concat([a]), a)
    # concat then split gives the parts back
    back = c.split([2, 1])
    assert_same(back[0], a)
    assert_same(back[1], b)


def test_split_errors_name_the_argument():
    t = kjt()
    with pytest.raises(ConfigError, match=r"split\(segments=\.\.\.\).*summing to the 4 keys"
                                          r".*Received: \[1, 2\]"):
        t.split([1, 2])
    with pytest.raises(ConfigError, match=r"split\(segments=\.\.\.\).*Received: \[5, -1\]"):
        t.split([5, -1])
    with pytest.raises(ConfigError, match=r"split\(segments=\.\.\.\): expected a list of int"):
        t.split(4)  # type: ignore[arg-type]


def test_concat_errors_name_the_argument():
    a = kjt(keys=["a0"])
    other_stride = KeyedJaggedTensor.from_lengths_sync(["b0"], torch.tensor([1]),
                                                       torch.tensor([1, 0]),
                                                       weights=torch.tensor([0.5]))
    where = r"concat\(kjt_list=\.\.\.\)"
    with pytest.raises(ConfigError, match=where + r".*one stride.*Received: \[3, 2\]"):
        KeyedJaggedTensor.concat([a, other_stride])
    with pytest.raises(ConfigError, match=where + r".*weights on every KJT.*\[True, False\]"):
        KeyedJaggedTensor.concat([a, kjt(weighted=False, keys=["b0"])])
    with pytest.raises(ConfigError, match=where + r".*one KJT only.*\['a0'\]"):
        KeyedJaggedTensor.concat([a, kjt(keys=["a0"], seed=3)])
    with pytest.raises(ConfigError, match=where + r".*non-empty list"):
        KeyedJaggedTensor.concat([])
    with pytest.raises(ConfigError, match=where + r".*KeyedJaggedTensor entries"):
        KeyedJaggedTensor.concat([a, "b"])  # type: ignore[list-item]


def test_permute_split_concat_keep_to_dict_consistent():
    """Regrouping in any order keeps every key's JaggedTensor (values, lengths, weights)."""
    t = kjt(seed=5)
    regrouped = KeyedJaggedTensor.concat(t.permute([3, 2, 1, 0]).split([2, 2])[::-1])
    assert regrouped.keys() == ["f1", "f0", "f3", "f2"]
    assert as_rows(regrouped) == as_rows(t.permute([1, 0, 3, 2]))
    for k in KEYS:
        assert torch.equal(regrouped[k].lengths(), t[k].lengths())
        assert torch.equal(regrouped[k].offsets(), t[k].offsets())
