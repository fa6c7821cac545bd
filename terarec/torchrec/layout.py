"""From TorchRec's key-major KJT to terarec's sample-major :class:`~terarec.sparse.SparseInput`.

Owns the transpose of jagged segments (``lengths[k * B + b]`` -> row ``b * S + s``) of the
features one table reads, and the id range check of direct-mapped tables (ids are rows; an
id outside ``[0, num_embeddings)`` is an error naming the feature and the table, never
clamped).
"""

from __future__ import annotations

import torch

from terarec.errors import TerarecError
from terarec.sparse import SparseInput
from terarec.torchrec.jagged import KeyedJaggedTensor


class IdOutOfRangeError(TerarecError, IndexError):
    """An id of a feature lies outside its table's ``[0, num_embeddings)``."""


def table_input(kjt: KeyedJaggedTensor, features: list[str], table: str, num_embeddings: int,
                with_weights: bool = False, owner: str = "EmbeddingBagCollection"
                ) -> tuple[SparseInput, torch.Tensor | None]:
    """The ids of ``features`` (one slot each, in order) as terarec's sample-major CSR, and the
    per-id weights in the same order when ``with_weights`` (``owner``: the collection the
    range error names).

    Raises:
        ConfigError: a feature is not a key of ``kjt``.
        IdOutOfRangeError: an id outside ``[0, num_embeddings)`` (names feature and table).
    """
    idx = [kjt.key_index(f) for f in features]
    b, s = kjt.stride(), len(features)
    values = kjt.values()
    weights = kjt.weights() if with_weights else None
    lengths = kjt.lengths().view(len(kjt.keys()), b) if b else kjt.lengths().view(-1, 0)
    if s == 1:  # one feature: its ids are already one contiguous sample-major block
        opk = kjt.offset_per_key()
        lo, hi = opk[idx[0]], opk[idx[0] + 1]
        ids = values[lo:hi]
        w = None if weights is None else weights[lo:hi]
        len_sm = lengths[idx[0]]
    else:
        starts = kjt.offsets()[:-1].view_as(lengths) if b else lengths
        sel = torch.tensor(idx, device=lengths.device)
        len_sm = lengths.index_select(0, sel).t().reshape(-1)
        start_sm = starts.index_select(0, sel).t().reshape(-1)
        csr = torch.zeros(len_sm.numel() + 1, dtype=torch.int64, device=len_sm.device)
        torch.cumsum(len_sm, 0, out=csr[1:])
        nnz = int(csr[-1])
        seg = torch.repeat_interleave(torch.arange(len_sm.numel(), device=len_sm.device),
                                      len_sm, output_size=nnz)
        pos = start_sm[seg] + torch.arange(nnz, device=len_sm.device) - csr[seg]
        ids = values[pos.to(values.device)]
        w = None if weights is None else weights[pos.to(weights.device)]
    offsets = torch.zeros(len_sm.numel() + 1, dtype=torch.int64, device=len_sm.device)
    torch.cumsum(len_sm, 0, out=offsets[1:])
    ids = ids.to(torch.int64)
    _check_range(ids, offsets, features, table, num_embeddings, owner)
    return SparseInput(ids, offsets.to(ids.device), s), w


def _check_range(ids: torch.Tensor, offsets: torch.Tensor, features: list[str], table: str,
                 num_embeddings: int, owner: str) -> None:
    if ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= num_embeddings)
    if not bool(bad.any()):
        return
    first = int(torch.nonzero(bad)[0, 0])
    row = int(torch.searchsorted(offsets.to(ids.device), torch.tensor(first, device=ids.device),
                                 right=True)) - 1
    s = len(features)
    raise IdOutOfRangeError(
        f"{owner}: feature {features[row % s]!r} (sample {row // s}) of table "
        f"{table!r} has id {int(ids[first])}, outside [0, {num_embeddings}) (num_embeddings="
        f"{num_embeddings}). Ids are row numbers: they are never clamped or hashed; remap them "
        f"or enlarge num_embeddings.")
