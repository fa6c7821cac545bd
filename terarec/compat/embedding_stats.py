"""``embedding_stats``: occupancy of every embedding table of a compiled HugeCTR-facade model.

terarec extension (not in HugeCTR): one dict per table, from
:meth:`terarec.embedding.table.EmbeddingTable.occupancy` -- ``num_keys``, ``capacity``,
``fill``, and for tables built with ``SparseEmbedding(..., eviction=...)`` the admission /
eviction totals (``policy``, ``step``, ``evicted_total``, ``admitted_total``,
``rejected_lookups_total``, ``pending_keys``, ``pending_forgotten_total``; None without a
policy).
"""

from __future__ import annotations

from typing import Any

from terarec.embedding.eviction import occupancy
from terarec.errors import ConfigError


def embedding_stats(model: Any) -> dict[str, dict[str, Any]]:
    """``{sparse_embedding_name: occupancy dict}`` of a compiled ``Model`` (add order).

    Example (HugeCTR script)::

        model.fit(max_iter=1000)
        print(embedding_stats(model)["emb"]["fill"])
    """
    engine = getattr(model, "engine", None)
    if engine is None:
        raise ConfigError("embedding_stats(model)", "a compiled Model (compile() called first)",
                          type(model).__name__)
    out: dict[str, dict[str, Any]] = {}
    for name, table in engine.tables.items():
        stats = getattr(table, "occupancy", None)
        out[name] = stats() if callable(stats) else occupancy(table)
    return out
